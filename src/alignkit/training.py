"""`train`: the one entry point of `alignkit train` and `alignkit.train`, which picks the kind of run a config
asks for — iterative rounds (``rounds=N``), online training (``prompts=``: the recipe of the objective,
`alignkit.algorithms`), a reward-model ensemble (``ensemble=N``) or offline training (`engine.trainer.Trainer`).
It sits above the engine and the recipes; neither knows the other's kinds."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.iterative import train_rounds
from alignkit.algorithms.online import OnlineTrainer
from alignkit.config import TrainConfig, from_dict
from alignkit.engine.ensemble import train_ensemble
from alignkit.engine.trainer import Trainer, TrainResult
from alignkit.models.hub import offline_mode


def train(config: TrainConfig | dict[str, Any]) -> TrainResult:
    """Train with a `TrainConfig` (or a dict of its fields); returns the run folder, final model and history."""
    if isinstance(config, dict):
        config = from_dict(TrainConfig, dict(config), source="train()")
    with offline_mode(config.offline):  # offline=true: Hub models and datasets from the local cache only
        if config.rounds > 0:  # iterative DPO / self-rewarding: rounds of sample, label, train
            return train_rounds(config, train)
        if config.prompts:  # online: sample, score, learn
            return OnlineTrainer(config).train()
        if config.ensemble > 1:
            return train_ensemble(config, lambda member: Trainer(member).train())
        return Trainer(config).train()
