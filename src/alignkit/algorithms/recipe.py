"""What an online recipe is, and the registry that maps an objective to its recipe.

A step of online training is always the same five stages (`alignkit.algorithms.online.OnlineTrainer.step`):

    rollout  ->  reward  ->  targets (advantages ...)  ->  policy loss  ->  update

The loop owns the rollout (K samples per prompt, scored by the run's reward, `alignkit.rewards`), the
forward passes, the loss (the registered objective) and the update. A `Recipe` owns what differs between
families: which objective names it trains, whether the loss reads the sampling policy's log-probs (a
clipped ratio), the targets it computes from a rollout without gradient (group advantages, GAE, nothing),
the tensors it adds with gradient (a value model's estimates), any model it trains beside the policy, and —
rarely — what the rollout samples from (a policy/reference mixture) and what happens to the weights before
the update (extragradient's return to an earlier iterate).

A recipe receives what it needs explicitly — a `RunContext` (config, accelerator, policy, reference,
tokenizer, load settings) and a `Rollout` — never the trainer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError


@dataclass
class RunContext:
    """The pieces of a run a recipe (or a reward that decodes with the live models) may read."""

    config: Any
    accelerator: Any
    policy: nn.Module  # the unwrapped causal LM being trained
    reference: Any  # an `engine.reference` reference (None: the run reads none)
    tokenizer: Any
    load_kwargs: dict = field(default_factory=dict)  # how the policy was loaded (dtype, attention, remote code)
    optimizer: Any = None  # the run's optimizer (a recipe that steps differently, e.g. extragradient, reads it)
    objective: Any = None  # the bound objective: its terms' ``state`` is checkpointed (e.g. PPO's reward statistics)


@dataclass
class Rollout:
    """One step's samples, as the recipe's `Recipe.targets` sees them.

    ``exp``: the `rollout.Experience` (B prompts × K samples, rewards [B, K]); ``chunks``: the prompt indices of
    each micro-batch; ``batches``: their collated batches; ``old``: the sampling policy's flat token log-probs per
    batch (None when the recipe does not read them); ``sample(rows, seed, k, temperature)``: another rollout of
    the same policy (e.g. a greedy baseline)."""

    rows: list[dict]
    seed: int
    exp: Any
    chunks: list[list[int]]
    batches: list[Batch]
    old: list[Tensor | None]
    sample: Callable


@dataclass
class Targets:
    """What a recipe computed from a rollout (no gradient): ``extra`` tensors per micro-batch for
    ``SequenceStats.extra``, and metrics to log."""

    extra: list[dict[str, Tensor]]
    metrics: dict[str, float] = field(default_factory=dict)


class Recipe:
    """One online family's part of a step (module docstring). The defaults are an objective that reads the
    samples' rewards only (online DPO, RAFT): no behaviour log-probs, no targets, nothing trained beside."""

    family = "recipe"
    behaviour_logps = False  # the loss reads the sampling policy's token log-probs (``old_token_logps``)
    targets_read_old = False  # `targets` reads them too (then they are computed even for a single update)

    def check(self, config, objective) -> None:
        """Refuse settings this recipe cannot train with (one line, naming the key)."""

    def needs_reference(self, config, objective) -> bool:
        """Whether the run needs a reference model (default: when the objective reads one)."""
        return objective.needs_reference

    def setup(self, ctx: RunContext) -> dict[str, tuple[nn.Module, float]]:
        """Load what the recipe trains beside the policy: ``{name: (module, learning rate)}``."""
        return {}

    def sampler(self, ctx: RunContext) -> Callable | None:
        """What the step's rollout samples from instead of the policy: ``fn(prompts, k, seed, temperature) ->
        Generation`` (e.g. a policy/reference mixture); None: the policy itself."""
        return None

    def targets(self, ctx: RunContext, rollout: Rollout) -> Targets:
        return Targets([{} for _ in rollout.batches])

    def before_update(self, ctx: RunContext, rollout: Rollout, step: int) -> dict[str, float]:
        """Called after the targets, before the policy loss of step ``step`` (0-based): e.g. extragradient's
        return to the weights of two half-steps ago. Returns metrics to log."""
        return {}

    def live(self, batch: Batch) -> dict[str, Tensor]:
        """``SequenceStats.extra`` tensors computed with gradient for one micro-batch (e.g. values)."""
        return {}

    def save(self, folder: Path, tokenizer) -> None:
        """Write what the recipe trained beside the policy into ``final/`` (before it is renamed into place)."""


RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str, recipe: Recipe) -> Recipe:
    """Declare that objective ``name`` trains online with ``recipe`` (one line per method)."""
    if name in RECIPES:
        raise ValueError(f"online recipe for {name!r} is registered twice")
    RECIPES[name] = recipe
    return recipe


def recipe_for(objective, fresh_samples: Recipe) -> Recipe:
    """A fresh copy (a recipe may hold its run's state, e.g. a value model) of the recipe of a built objective
    (its first term's name); an objective that reads log-probs and has no recipe of its own trains with
    ``fresh_samples`` (any offline objective on fresh samples)."""
    name = objective.terms[0].spec.name
    names = {t.spec.name for t in objective.terms}
    recipes = {type(RECIPES.get(n, fresh_samples)).__name__ for n in names}
    if len(recipes) > 1:
        raise ConfigError(f"objective terms {sorted(names)} train with different online recipes ({sorted(recipes)}); "
                         "combine objectives of one family")
    if name in RECIPES:
        return copy.copy(RECIPES[name])
    if objective.inputs == "logps":
        return copy.copy(fresh_samples)
    if objective.inputs == "rewards":
        raise ConfigError(f"objective {name} trains a reward model; online training needs a policy objective")
    raise ConfigError(f"objective {name} reads rollouts, but no online recipe declares how to train it (its advantage "
                     "estimator): register one with alignkit.algorithms.policy_gradient.register_policy_gradient "
                     f"or alignkit.algorithms.recipe.register_recipe; registered: {', '.join(sorted(RECIPES))}")
