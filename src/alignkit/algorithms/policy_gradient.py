"""The critic-free policy-gradient family: grpo, dr_grpo, rloo, remax, reinforce_pp.

    alignkit train objective=grpo model=PATH prompts=problems.jsonl reward=rule:exact_answer num_samples=8

Each step: K samples per prompt are scored (rewards r [B, K]); the method's **advantage estimator** turns
the group's rewards into one advantage per sample (ReMax also samples one greedy completion per prompt,
whose reward is its baseline); the registered objective (``objectives/rl.py``, the clipped surrogate) is
minimised for ``updates_per_batch`` optimizer steps on the batch (GRPO's μ).
The behaviour log-probs are computed once per rollout without gradient; with one update per rollout they
are the update's own log-probs, detached (ratio exactly 1), so no extra forward runs.

Adding a method here is an advantage function and one `register_policy_gradient` line (the loss is
registered in ``objectives/``). Logged: ``advantage/mean``, ``advantage/abs_mean`` (and ReMax's
``reward/greedy``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.algorithms.recipe import Recipe, Rollout, RunContext, Targets, register_recipe
from alignkit.objectives.rl import (
    grpo_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
)


@dataclass
class PolicyGradient(Recipe):
    """A policy-gradient method: ``advantage(rewards [B, K], valid [B, K]) -> [B, K]``, or with
    ``greedy_baseline`` ``advantage(rewards, greedy_rewards [B], valid)``."""

    advantage: Callable[..., Tensor]
    greedy_baseline: bool = False
    family = "policy_gradient"
    behaviour_logps = True

    def targets(self, ctx: RunContext, rollout: Rollout) -> Targets:
        rewards = rollout.exp.rewards
        valid = torch.ones_like(rewards, dtype=torch.bool)
        metrics = {}
        if self.greedy_baseline:  # one greedy sample per prompt, same seed
            greedy = rollout.sample(rollout.rows, rollout.seed, 1, 0.0).rewards[:, 0]
            adv = self.advantage(rewards, greedy, valid)
            metrics["reward/greedy"] = float(greedy.mean())
        else:
            adv = self.advantage(rewards, valid)
        metrics.update({"advantage/mean": float(adv.mean()), "advantage/abs_mean": float(adv.abs().mean())})
        device = ctx.accelerator.device
        return Targets([{"advantages": adv[ch].to(device)} for ch in rollout.chunks], metrics)


def register_policy_gradient(name: str, advantage: Callable[..., Tensor], greedy_baseline: bool = False) -> None:
    """Objective ``name`` (registered in objectives/ with ``inputs="rollout"``) trains with ``advantage``."""
    register_recipe(name, PolicyGradient(advantage, greedy_baseline))


register_policy_gradient("grpo", grpo_advantages)
register_policy_gradient("dr_grpo", functools.partial(grpo_advantages, scale="none"))
register_policy_gradient("rloo", rloo_advantages)
register_policy_gradient("remax", remax_advantages, greedy_baseline=True)
register_policy_gradient("reinforce_pp", reinforce_pp_advantages)
