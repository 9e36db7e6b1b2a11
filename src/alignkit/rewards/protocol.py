"""The one reward protocol of online training (rollouts, iterative rounds):

    reward(prompts, groups, rows, models=None) -> RewardOutput(rewards, metrics)

``prompts`` [B], ``rows`` [B] (each prompt's source row: the prompt file's fields, e.g. ``answer``) and
``groups`` [B][K] (the K completions of each prompt) in; ``rewards`` [B][K] and the reward's own metrics
(e.g. Nash-MD's opponent length) out — returned, never kept on the object. The groups are given, never
inferred. A reward that decodes with the run's live models says so (``needs_models``) and gets them as
``models`` (`LiveModels`: policy, reference, tokenizer, config).

Pointwise reward functions ``fn(prompts, completions, rows) -> list[float]`` (rules, reward models, Python
functions: `alignkit.rewards.functions`) take part through `Pointwise`; group rewards compare a prompt's
samples (``winrate:``, `alignkit.rewards.preference.WinRateReward`) or sample opponents (``mixture:``,
`alignkit.rewards.opponents.MixtureOpponentReward`). `alignkit.rewards.build.build_group_reward` makes one
from a config spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import ConfigError


@dataclass
class LiveModels:
    """The run's models as they are now, for a reward that decodes with them (``needs_models``)."""

    policy: Any  # the unwrapped causal LM being trained
    reference: Any  # its `engine.reference` reference (None: the run has none)
    tokenizer: Any
    config: Any  # the run's settings (max_new_tokens, temperature, top_p, stop, mixture_alpha ...)


@dataclass
class RewardOutput:
    rewards: list[list[float]]  # [B][K]
    metrics: dict[str, float] = field(default_factory=dict)


class GroupReward:
    """A reward of the protocol (module docstring)."""

    needs_models = False  # decodes with the run's live models, passed as ``models``

    def __call__(self, prompts: Sequence, groups: Sequence[Sequence[str]], rows: Sequence[dict],
                 models: LiveModels | None = None) -> RewardOutput:
        raise NotImplementedError


def flatten(prompts: Sequence, groups: Sequence[Sequence[str]], rows: Sequence[dict]) -> tuple[list, list, list]:
    """Prompt-major flat lists (entry b·K + j is completion j of prompt b), each prompt and row repeated."""
    if not len(prompts) == len(groups) == len(rows):
        raise ValueError(f"{len(prompts)} prompts, {len(groups)} groups and {len(rows)} rows: give one of each per prompt")
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_r = [r for r, g in zip(rows, groups) for _ in g]
    return flat_p, [c for g in groups for c in g], flat_r


def regroup(values: Sequence, groups: Sequence[Sequence]) -> list[list]:
    """Flat prompt-major ``values`` back into the shape of ``groups``."""
    out, start = [], 0
    for g in groups:
        out.append(list(values[start:start + len(g)]))
        start += len(g)
    return out


class Pointwise(GroupReward):
    """A pointwise reward function ``fn(prompts, completions, rows) -> list[float]`` scored over every completion."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, prompts, groups, rows, models=None) -> RewardOutput:
        flat_p, flat_c, flat_r = flatten(prompts, groups, rows)
        values = list(self.fn(flat_p, flat_c, flat_r))
        if len(values) != len(flat_c):
            raise ConfigError(f"the reward returned {len(values)} values for {len(flat_c)} completions")
        return RewardOutput(regroup(values, groups))


class Weighted(GroupReward):
    """``Σ_i w_i · r_i`` over rewards of the protocol; their metrics merged (a later part's clashing key gets
    ``/part<i>``, so it never hides an earlier one)."""

    def __init__(self, parts: list[tuple[GroupReward, float]]):
        self.parts = parts
        self.needs_models = any(fn.needs_models for fn, _ in parts)

    def __call__(self, prompts, groups, rows, models=None) -> RewardOutput:
        outs = [fn(prompts, groups, rows, models) for fn, _ in self.parts]
        rewards = [[sum(w * o.rewards[b][j] for (_, w), o in zip(self.parts, outs)) for j in range(len(g))]
                   for b, g in enumerate(groups)]
        metrics: dict[str, float] = {}
        for i, out in enumerate(outs):
            for key, value in out.metrics.items():
                metrics[key if key not in metrics else f"{key}/part{i}"] = value
        return RewardOutput(rewards, metrics)
