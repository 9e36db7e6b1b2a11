"""`build_group_reward`: a reward of the protocol (`alignkit.rewards.protocol`) from a config spec::

    reward: rule:exact_answer                  # any pointwise spec of alignkit.rewards.functions.build_reward
    reward: winrate:rm:runs/gpm/final          # self-play (SPPO): mean P(y ≻ y_j) over the prompt's other samples
    reward: mixture:rm:runs/rm/final           # Nash-MD: P(y ≻ y'), y' from the policy/reference mixture
    reward: "lsc(rm:runs/rm, samples=8)"       # transformed against reference samples (rewards/calibration.py)
    reward: "calibrated(rm:runs/rm, tilt=5)"
    reward: "maxmin(rm:runs/rm_a, rm:runs/rm_b)"   # MaxMin-RLHF: each step the worst group's reward (rewards/maxmin.py)
    reward: [{reward: rule:exact_answer, weight: 1.0}, {reward: rule:regex:\\.$, weight: 0.1}]
"""

from __future__ import annotations

from typing import Any

from alignkit.rewards.calibration import ReferenceCalibrated
from alignkit.rewards.functions import GROUP_WRAPPERS, build_reward
from alignkit.rewards.maxmin import MaxMinReward
from alignkit.rewards.opponents import MixtureOpponentReward
from alignkit.rewards.preference import WinRateReward, build_preference
from alignkit.rewards.protocol import GroupReward, Pointwise, Weighted
from alignkit.rewards.spec import parse_call

GROUP_KINDS = ("winrate", "mixture")  # spec prefixes of rewards that compare a prompt's samples


def build_group_reward(spec: Any, tokenizer=None, device=None) -> GroupReward:
    """A `GroupReward` from a spec (module docstring), a `GroupReward` (returned as is) or a pointwise callable."""
    if isinstance(spec, GroupReward):
        return spec
    if isinstance(spec, (list, tuple)):
        return Weighted([(build_group_reward(p["reward"] if isinstance(p, dict) else p, tokenizer, device),
                          float(p.get("weight", 1.0)) if isinstance(p, dict) else 1.0) for p in spec])
    if (call := parse_call(spec, ("maxmin",))) is not None:
        call.options({})  # takes no options
        return MaxMinReward([build_group_reward(a, tokenizer, device) for a in call.args])
    if (call := parse_call(spec, GROUP_WRAPPERS)) is not None:  # lsc(...), calibrated(...)
        return ReferenceCalibrated(call, build_reward(call.one_arg(), tokenizer, device))
    kind, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind == "winrate":
        return WinRateReward(build_preference(rest, tokenizer, device))
    if kind == "mixture":
        return MixtureOpponentReward(build_preference(rest, tokenizer, device))
    return Pointwise(build_reward(spec, tokenizer, device))
