"""Reward post-processing: transforms (LSC, per-prompt normalisation, combining) and ensembles."""

from alignkit.rewards.ensemble import AGGREGATE_MODES, aggregate
from alignkit.rewards.transforms import COMBINE_MODES, combine, lsc, normalize_per_prompt

__all__ = ["AGGREGATE_MODES", "COMBINE_MODES", "aggregate", "combine", "lsc", "normalize_per_prompt"]
