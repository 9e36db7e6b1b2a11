"""`train`: the one entry point of `alignkit train` and `alignkit.train`, which picks the kind of run a config
asks for (`config.run_mode`) — iterative rounds, online training (the recipe of the objective,
`alignkit.algorithms`), a reward-model ensemble (``ensemble=N``), reward models per user group by EM
(``user_groups=G``, MaxMin-RLHF) or offline training (`engine.trainer.Trainer`).
It sits above the engine and the recipes; the engine knows none of these kinds."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.iterative import train_rounds
from alignkit.algorithms.online import OnlineTrainer
from alignkit.config import TrainConfig, from_dict, run_mode
from alignkit.engine.ensemble import train_ensemble
from alignkit.engine.evaluation import SampledEval
from alignkit.engine.loop import TrainResult
from alignkit.engine.trainer import Trainer
from alignkit.engine.user_groups import train_user_groups
from alignkit.models.hub import offline_mode


def train(config: TrainConfig | dict[str, Any], *, sampled_eval: SampledEval | None = None) -> TrainResult:
    """Train with a `TrainConfig` (or a dict of its fields); returns the run folder, final model and history.
    ``sampled_eval``: see `Trainer` (`alignkit.train` wires it)."""
    if isinstance(config, dict):
        config = from_dict(TrainConfig, dict(config), source="train()")
    with offline_mode(config.offline):  # offline=true: Hub models and datasets from the local cache only
        mode = run_mode(config)
        if mode == "iterative":  # iterative DPO / self-rewarding: rounds of sample, label, train
            return train_rounds(config, lambda round_config: train(round_config, sampled_eval=sampled_eval))
        if mode == "online":  # sample, score, learn
            return OnlineTrainer(config, sampled_eval=sampled_eval).train()
        if config.user_groups > 1:  # MaxMin-RLHF's first stage: EM over user groups, one reward model each
            return train_user_groups(config, lambda member: Trainer(member, sampled_eval=sampled_eval).train())
        if config.ensemble > 1:
            return train_ensemble(config, lambda member: Trainer(member, sampled_eval=sampled_eval).train())
        return Trainer(config, sampled_eval=sampled_eval).train()
