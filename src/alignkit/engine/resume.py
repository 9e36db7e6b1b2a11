"""Which checkpoint a run resumes from, and whether it may: the same settings, data and model, or the
differences named in ``resume_override``.

A checkpoint holds the resolved config (``config.yaml``) and, in ``trainer_state.json``, fingerprints of
what the run started from: ``data`` (the token ids of the training data: file, transforms, tokenizer,
template and truncation; and each record's labels), ``model`` and ``ref_model`` (their config.json and weight
files: names, sizes and the first and last MiB of each; a Hub name with its snapshot's commit) and
``reference`` (the resolved reference strategy: a copy of the initial policy, another model, the base under
disabled adapters, none). On resume every key that changes the result is compared; any difference
is refused with the list of keys and their old and new values, unless ``resume_override`` names it
(``resume_override=lr,max_steps`` or a list): then the new value is applied and logged. Keys that do not
change the weights (`FREE`) may differ freely; paths are compared by the fingerprint of what they hold, so
a moved data file or model is not a difference.

What "applied" means: the learning rate (``lr``, ``value_lr``) and ``weight_decay`` live in the optimizer's
and the schedule's saved state, so they are set again after loading it; the schedule's shape (``max_steps``,
``epochs``, ``warmup``, ``scheduler``) is rebuilt from the new config and the learning rate recomputed at
the resumed step; everything else is read from the config as the run goes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from alignkit.config import TrainConfig
from alignkit.engine import checkpoint as ckpt
from alignkit.engine.logging import logger
from alignkit.engine.refcache import data_digest
from alignkit.errors import CheckpointError, ConfigError
from alignkit.models.hub import resolve_model

# keys that never change the trained weights: progress, logging, evaluation, where things are written, and how
# the run was started; data / model / ref_model / prompts are compared by fingerprint instead of by path
FREE = {"progress", "log_every", "trackers", "output_dir", "save_every", "keep_checkpoints", "eval_every",
        "eval_data", "eval_prompts", "eval_judge", "eval_samples", "eval_greedy", "log_samples_every",
        "resume_from", "resume_override", "overwrite", "verify_logprobs", "max_bad_steps", "ref_cache",
        "ref_cache_dir", "ref_cache_file", "teacher_cache", "teacher_cache_dir", "data", "model", "ref_model", "prompts"}
FINGERPRINTS = {"data": "the training data's token ids and labels", "model": "the model's files",
                "ref_model": "the reference model's files", "reference": "where the reference log-probs come from"}
_EDGE = 1 << 20


def override_keys(config) -> list[str]:
    """``resume_override`` as a list of keys (it may be a comma-separated string); unknown keys are a ConfigError."""
    raw = config.resume_override
    keys = [k.strip() for k in (raw.split(",") if isinstance(raw, str) else raw) if str(k).strip()]
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"resume_override: unknown key '{key}'.{hint}")
    return keys


def files_fingerprint(path: str | None) -> str | None:
    """A model folder's fingerprint (module docstring); for a Hub name, the name and the commit of the snapshot it
    resolved to (a new revision pushed to the Hub between a run and its resume is a difference)."""
    if not path:
        return None
    folder = Path(path)
    if not folder.is_dir():
        return f"name:{path}@{Path(resolve_model(path, weights=False)).name}"
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt", ".pth")):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(_EDGE))
                if size > 2 * _EDGE:
                    fh.seek(size - _EDGE)
                    h.update(fh.read(_EDGE))
    return h.hexdigest()[:16]


def data_fingerprint(data) -> str:
    """The token ids of a tokenized dataset and every record's labels (ranks, scores, labels, weight, meta: the
    same text with its preferences reversed is other data), or the rows of an online run's prompt file."""
    h = hashlib.sha256()
    if hasattr(data, "items"):
        h.update(data_digest(data).encode())
        for r in data.records:
            h.update(json.dumps([r.ranks, r.scores, r.labels, r.weight, r.group, r.meta], sort_keys=True,
                                default=str).encode())
        return h.hexdigest()[:16]
    for row in data.rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def locate(where: str | None, output_dir: Path) -> Path | None:
    """The checkpoint ``resume_from`` names: ``latest`` is the newest valid one of ``output_dir`` (each newer one
    passed over is named in a warning, with the reason), None when there is none; a path must be valid."""
    if not where:
        return None
    if where != "latest":
        path = Path(where)
        reason = ckpt.verify_checkpoint(path)
        if reason:
            raise CheckpointError(f"resume_from={where}: {reason}")
        return path
    path, skipped = ckpt.choose_checkpoint(output_dir / "checkpoints")
    for note in skipped:
        logger.warning("checkpoint %s", note)
    if path is None and skipped:
        raise CheckpointError(f"resume_from=latest: no valid checkpoint in {output_dir / 'checkpoints'} "
                              f"({'; '.join(skipped)}); start over with overwrite=true")
    if path is None:
        logger.info("resume_from=latest: no checkpoint in %s, starting fresh", output_dir)
    elif skipped:
        logger.warning("resuming from %s, the newest valid checkpoint", path)
    return path


def _plain(config) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} over the keys that change the result (not `FREE`) and that both configs have."""
    out = {k: (old[k], v) for k, v in new.items() if k not in FREE and k in old and old[k] != v}
    if old.get("max_steps", -1) > 0 and new.get("max_steps", -1) > 0:
        out.pop("epochs", None)  # epochs only counts without max_steps
    return out


def fingerprint_differences(old: dict[str, str], new: dict[str, str]) -> dict[str, tuple[Any, Any]]:
    """Fingerprints the checkpoint has that differ now (a value that is there on one side only included: a
    reference model dropped on resume is a difference)."""
    return {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def check(path: Path, config, fingerprints: dict[str, str | None]) -> list[str]:
    """Compare the run with checkpoint ``path`` (module docstring): raise `CheckpointError` listing every
    difference ``resume_override`` does not name; return the overridden keys (logged here)."""
    old = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    state = json.loads((path / "trainer_state.json").read_text())
    diffs = differences(old, _plain(config))
    diffs.update(fingerprint_differences(state.get("fingerprints", {}), fingerprints))
    allowed = override_keys(config)
    refused = {k: v for k, v in diffs.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" + (f" ({FINGERPRINTS[k]})" if k in FINGERPRINTS else "")
                           for k, (a, b) in refused.items())
        keys = ",".join([*[k for k in allowed if k in diffs], *refused])
        raise CheckpointError(f"resume from {path} refused: settings that change the result differ from the "
                              f"checkpoint's: {listed}. Restore them, or apply them with resume_override={keys}")
    for key in allowed:
        if key in diffs:
            logger.warning("resume_override: %s %s -> %s (applied from step %s on)", key, _show(diffs[key][0]),
                           _show(diffs[key][1]), state.get("step"))
        else:
            logger.info("resume_override: %s is the same as in the checkpoint; nothing to apply", key)
    return [k for k in allowed if k in diffs]


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def fresh_hparams(optimizer, scheduler) -> dict[str, list[float]]:
    """The learning rates and weight decays this run's config gives, read before a checkpoint overwrites them."""
    return {"lr": list(scheduler.base_lrs), "weight_decay": [g["weight_decay"] for g in optimizer.param_groups]}


def apply_overrides(keys: list[str], fresh: dict[str, list[float]], optimizer, scheduler) -> None:
    """After loading a checkpoint: put back the config's learning rates / weight decay where ``keys`` override
    them, and recompute the learning rate of the resumed step from the (new) schedule."""
    if not keys:
        return
    groups = optimizer.param_groups
    if {"lr", "value_lr"} & set(keys):
        scheduler.base_lrs = list(fresh["lr"])
        for group, lr in zip(groups, fresh["lr"]):
            group["initial_lr"] = lr
    if "weight_decay" in keys:
        for group, wd in zip(groups, fresh["weight_decay"]):
            group["weight_decay"] = wd
    scheduler.last_epoch -= 1  # step() recomputes each group's lr at the same step from base_lrs and the schedule
    scheduler.step()
