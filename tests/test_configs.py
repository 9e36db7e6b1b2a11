"""Every shipped config parses, names valid keys, and binds its objective."""

from pathlib import Path

import pytest

from alignkit.config import TrainConfig, load_config
from alignkit.objectives import build_objective

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_is_one_config_per_family():
    assert {p.stem for p in CONFIGS} >= {"dpo", "ipo", "simpo", "sft", "dpo_sft", "dpo_lora"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_objective_binds(path):
    config = load_config(TrainConfig, str(path))
    objective = build_objective(config.objective, beta=config.beta, **config.hparams)
    assert objective.terms and all(t.weight > 0 for t in objective.terms)
