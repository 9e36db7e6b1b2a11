"""Evaluation: sampled KL to a reference model, win rates with confidence intervals, judges without position
bias, tournaments and ratings, preference accuracy, the reward–KL frontier, and HTML reports."""

from alignkit.eval.accuracy import preference_accuracy, ranking_accuracy
from alignkit.eval.evaluate import evaluate
from alignkit.eval.kl import kl_estimates, kl_k1, kl_k2, kl_k3, mean_ci
from alignkit.eval.lc_glm import length_controlled_glm
from alignkit.eval.tournament import Match, bradley_terry, elo, ratings, round_robin, single_elimination
from alignkit.eval.training_metrics import generation_metrics
from alignkit.eval.winrate import bootstrap_ci, length_controlled, outcomes, win_rate
from alignkit.rewards.judges import (
    Comparison,
    Judge,
    LLMJudge,
    RewardModelJudge,
    RuleJudge,
    make_judge,
    order_averaged,
    position_bias,
)

__all__ = [
    "Comparison", "Judge", "LLMJudge", "Match", "RewardModelJudge", "RuleJudge", "bootstrap_ci", "bradley_terry",
    "elo", "evaluate", "generation_metrics", "kl_estimates", "kl_k1", "kl_k2", "kl_k3", "length_controlled",
    "length_controlled_glm", "make_judge", "mean_ci", "order_averaged", "outcomes", "position_bias", "preference_accuracy",
    "ranking_accuracy", "ratings", "round_robin", "single_elimination", "win_rate",
]
