"""Objectives: pure loss functions over `SequenceStats`, in one registry.

    from alignkit.objectives import get_objective, SequenceStats
    out = get_objective("dpo")(stats, beta=0.1)   # out.loss, out.per_example, out.metrics
"""

from alignkit.objectives import selfplay  # noqa: F401  (registers sppo, nash_md)
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
