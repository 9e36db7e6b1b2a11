"""Self-play for general (possibly intransitive) preferences: SPPO and Nash-MD.

    alignkit train objective=sppo model=PATH prompts=P.jsonl reward=winrate:rm:GPM num_samples=4
    alignkit train objective=nash_md model=PATH prompts=P.jsonl reward=mixture:rm:RM mixture_alpha=0.5

The losses (``objectives/selfplay.py``) read one preference probability per sample as its reward; the
rewards that make them compare a prompt's samples with each other or with an opponent
(`alignkit.rewards.preference`):

* ``winrate:PREF_SPEC`` — ``P̂(y ≻ π | x)``, y's mean win probability against the prompt's other K − 1
  samples (SPPO's estimate): a group reward, it reads each prompt's K samples together;
* ``mixture:PREF_SPEC`` — ``P(y ≻ y' | x)`` with y' from the geometric mixture ``πθ^{1−α}·π_ref^{α}``
  (Nash-MD's opponent, `alignkit.rewards.opponents`): it decodes with the run's live policy and reference,
  which the loop passes to it.

A step is the preference recipe's (fresh samples, no targets): the reference is the frozen start policy;
with ``rounds=N`` (`alignkit.algorithms.iterative`) the previous round's policy, as in SPPO's paper.
"""

from __future__ import annotations

from alignkit.algorithms.preference import FreshSamples
from alignkit.algorithms.recipe import register_recipe
from alignkit.errors import ConfigError


class SelfPlay(FreshSamples):
    family = "selfplay"

    def check(self, config, objective) -> None:
        if config.num_samples < 2 and isinstance(config.reward, str) and config.reward.startswith("winrate:"):
            raise ConfigError("reward=winrate:... compares each sample with the prompt's others: num_samples must be "
                             f">= 2, got {config.num_samples}")


SELF_PLAY = SelfPlay()
register_recipe("sppo", SELF_PLAY)
register_recipe("nash_md", SELF_PLAY)
