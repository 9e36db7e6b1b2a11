"""Objectives: pure loss functions over `SequenceStats`, in one registry.

    from alignkit.objectives import get_objective, SequenceStats
    out = get_objective("dpo")(stats, beta=0.1)   # out.loss, out.per_example, out.metrics
"""

# Importing the objective modules runs their @register decorators: the registry itself imports none of them.
from alignkit.objectives import (  # noqa: F401
    distill,
    distill_align,
    fdpg,
    listwise,
    multiobjective,
    nash,
    noisy,
    pairwise,
    personal,
    reward,
    reward_structured,
    rl,
    selfplay,
    sft,
    soft,
    unpaired,
)
from alignkit.objectives.registry import (
    Objective,
    ObjectiveSpec,
    available,
    build_objective,
    get_objective,
    register,
)
from alignkit.objectives.stats import LossOutput, SequenceStats

__all__ = [
    "LossOutput",
    "Objective",
    "ObjectiveSpec",
    "SequenceStats",
    "available",
    "build_objective",
    "get_objective",
    "register",
]
