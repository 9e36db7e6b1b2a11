"""Nash learning from preferences by online IPO: ``online_ipo``, ``ipo_md``, ``egpo``.

    alignkit train objective=egpo model=PATH prompts=P.jsonl reward=winrate:rm:GPM num_samples=4 beta=0.1
    alignkit train objective=ipo_md model=PATH prompts=P.jsonl reward=winrate:rm:GPM mixture_alpha=0.5

The three share one loss (``objectives/nash.py``: the soft-label IPO loss on every pair of a prompt's K
samples, read through their win rates); they differ in where the samples come from and how a step moves:

* ``online_ipo`` — samples of πθ, one gradient step per rollout (Calandriello et al. 2024). In an
  intransitive game this plain self-play step can circle the equilibrium rather than reach it.
* ``ipo_md`` — samples of the token-level geometric mixture ``πθ^{1−α}·π_ref^{α}`` (``mixture_alpha``),
  Nash-MD's mixture (Calandriello et al. 2024, IPO-MD): the recipe replaces the policy's sampling with
  the mixture's (`alignkit.generation.decoding.sample_product`); the loss reads πθ's and π_ref's log-probs
  of those samples. Needs the reference as a separate model; in-process sampling; no ``stop`` strings.
* ``egpo`` — extragradient (Zhou et al. 2025, as their code does it, over two trainer steps): an even step
  remembers the trainable weights and optimizer state θ_t, then updates on samples of π_t (θ_{t+½}); the
  odd step samples π_{t+½}, puts θ_t back and updates with the loss of those samples (θ_{t+1}). So a run of
  ``max_steps`` steps makes ``max_steps / 2`` extragradient iterations and ends on a full one when
  ``max_steps`` is even. A run resumed between the two half-steps (a checkpoint after an even step) has no
  θ_t to return to: its next step is a plain one (logged ``egpo/phase`` 0). Costs one extra copy of the
  trainable weights and the optimizer state; one process or DDP (sharded weights are refused); one update
  per rollout.

Logged: ``egpo/phase`` (1 the half step, 2 the full step, 0 a plain step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from alignkit.algorithms.recipe import Rollout, RunContext, register_recipe
from alignkit.algorithms.selfplay import SelfPlay
from alignkit.engine import distributed as dist
from alignkit.errors import ConfigError
from alignkit.generation.decoding import sample_product
from alignkit.rewards.opponents import mixture_exponents, reference_model


class Extragradient:
    """The two half-steps' bookkeeping on any parameters and optimizer: ``before_update(params, optimizer,
    step)`` remembers them on an even step and restores them on the next odd one. Returns the phase:
    1 (half step from θ_t), 2 (full step from θ_t, the half step's weights discarded), 0 (nothing to
    restore: a plain step)."""

    def __init__(self):
        self.saved: tuple[list[torch.Tensor], dict] | None = None

    def before_update(self, params: list[torch.Tensor], optimizer, step: int) -> int:
        if step % 2 == 0:
            self.saved = ([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()))
            return 1
        if self.saved is None:
            return 0
        weights, state = self.saved
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        optimizer.load_state_dict(state)
        self.saved = None
        return 2


class OnlineIPO(SelfPlay):
    """online_ipo: samples of the policy, a plain step (the win rates come from ``reward=winrate:``)."""

    family = "nash_ipo"

    def check(self, config, objective) -> None:
        super().check(config, objective)
        if config.num_samples < 2:
            raise ConfigError(f"objective={objective.name} compares a prompt's samples in pairs: num_samples must be "
                             f">= 2, got {config.num_samples}")


class MixtureSampling(OnlineIPO):
    """ipo_md: the rollout samples the geometric mixture πθ^{1−α}·π_ref^{α} instead of πθ."""

    def check(self, config, objective) -> None:
        super().check(config, objective)
        mixture_exponents(config.mixture_alpha)
        if config.rollout_workers or config.rollout_backend == "vllm":
            raise ConfigError(f"objective={objective.name} samples from the policy/reference mixture in-process: set "
                             "rollout_workers=0 and rollout_backend=hf")
        if config.stop:
            raise ConfigError(f"objective={objective.name} samples from the policy/reference mixture, which ends at "
                             "stop tokens only: remove stop=")

    def sampler(self, ctx: RunContext) -> Callable:
        c = ctx.config
        exponents = mixture_exponents(c.mixture_alpha)
        ref = reference_model(ctx.reference) if exponents[1] > 0 else ctx.policy

        def sample(prompts: list, k: int, seed: int, temperature: float):
            return sample_product([ctx.policy, ref], exponents, ctx.tokenizer, prompts, k=k,
                                  max_new_tokens=c.max_new_tokens, temperature=temperature, top_p=c.top_p, seed=seed,
                                  chat_template=c.chat_template, chat_template_kwargs=c.chat_template_kwargs)

        return sample


class ExtragradientIPO(OnlineIPO):
    """egpo: the online IPO loss stepped by extragradient (module docstring)."""

    extragradient: Extragradient | None = None

    def check(self, config, objective) -> None:
        super().check(config, objective)
        if config.updates_per_batch != 1:
            raise ConfigError(f"objective={objective.name} takes one update per rollout (its two half-steps are two "
                             f"steps): set updates_per_batch=1, got {config.updates_per_batch}")

    def before_update(self, ctx: RunContext, rollout: Rollout, step: int) -> dict[str, float]:
        if dist.sharding(ctx.accelerator):
            raise ConfigError("objective=egpo restores the weights and optimizer state of the half step: it runs on "
                             "one process or under DDP, not FSDP/DeepSpeed")
        if self.extragradient is None:
            self.extragradient = Extragradient()
        params = [p for p in ctx.policy.parameters() if p.requires_grad]
        return {"egpo/phase": float(self.extragradient.before_update(params, ctx.optimizer, step))}


register_recipe("online_ipo", OnlineIPO())
register_recipe("ipo_md", MixtureSampling())
register_recipe("egpo", ExtragradientIPO())
