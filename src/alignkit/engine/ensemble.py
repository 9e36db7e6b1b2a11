"""Ensembles of reward models: ``alignkit train objective=bt ensemble=3 ensemble_by=seed|fold``.

Member ``i`` is an ordinary run in ``<output_dir>/member-i``: with ``seed`` it differs by its seed
(head initialisation and data order), with ``fold`` it also leaves out fold ``i`` of ``ensemble``
prompt folds (transform ``fold``). ``<output_dir>/ensemble.json`` lists the members' final models;
``alignkit score --reward-model <output_dir>`` scores with all of them and combines them
(``--aggregate mean|min|mean_minus_std``), reporting the spread across members as the uncertainty.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from alignkit.errors import ConfigError
from alignkit.io_atomic import atomic_write_text

logger = logging.getLogger("alignkit")


def train_ensemble(config, run_one):
    """Train ``config.ensemble`` members with ``run_one(member_config) -> TrainResult``."""
    if config.ensemble_by not in ("seed", "fold"):
        raise ConfigError(f"ensemble_by must be seed or fold, got {config.ensemble_by!r}")
    out = Path(config.output_dir)
    results = []
    for i in range(config.ensemble):
        extra = [{"name": "fold", "k": config.ensemble, "index": i}] if config.ensemble_by == "fold" else []
        member = dataclasses.replace(config, ensemble=1, seed=config.seed + i, output_dir=str(out / f"member-{i}"),
                                     transforms=list(config.transforms) + extra)
        logger.info("ensemble member %d/%d (%s)", i + 1, config.ensemble, config.ensemble_by)
        results.append(run_one(member))
        if results[-1].final_dir is None:  # interrupted, or not the main process
            return results[-1]
    members = [str(r.final_dir) for r in results]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ensemble.json", json.dumps({"members": members, "by": config.ensemble_by}, indent=2))
    history = [dict(h, member=i) for i, r in enumerate(results) for h in r.history]
    return dataclasses.replace(results[-1], output_dir=out, final_dir=out, history=history)
