"""Rewards: the reward protocol of online training (`protocol`: grouped completions in, rewards and metrics
out) and the rewards built from specs (`build`: pointwise `functions`, pairwise `preference` win rates,
Nash-MD `opponents`); scoring with trained reward models (`rm_scores`); post-processing (`transforms`: LSC,
per-prompt normalisation, combining) and ensemble aggregation (`aggregate`)."""

from alignkit.rewards.aggregate import AGGREGATE_MODES, aggregate
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.functions import build_reward
from alignkit.rewards.protocol import GroupReward, LiveModels, Pointwise, RewardOutput, Weighted
from alignkit.rewards.transforms import COMBINE_MODES, combine, lsc, normalize_per_prompt

__all__ = ["AGGREGATE_MODES", "COMBINE_MODES", "GroupReward", "LiveModels", "Pointwise", "RewardOutput", "Weighted",
           "aggregate", "build_group_reward", "build_reward", "combine", "lsc", "normalize_per_prompt"]
