"""One place for run output: a console progress bar, ``metrics.jsonl``, and trackers when installed."""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import ConfigError, RunDirError
from alignkit.io_atomic import atomic_write_text

logger = logging.getLogger("alignkit")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


class MetricsLogger:
    """Writes one JSON line per logged step; mirrors scalars to trackers (tensorboard, wandb)."""

    def __init__(self, output_dir: Path, trackers: list[str], config: dict[str, Any], enabled: bool = True,
                 resume_step: int | None = None):
        """``resume_step``: a resumed run keeps the lines of steps up to it and appends; the lines of later steps
        (they are redone) are dropped first by writing the kept ones to a temp file renamed over the old one, so
        a kill at any moment leaves every line up to the resume point on disk."""
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.trackers = []
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():
            keep_lines_up_to(self.path, resume_step)
            self.file = open(self.path, "a", encoding="utf-8")
        else:
            self.file = open(self.path, "w", encoding="utf-8")
        for name in trackers:
            self.trackers.append(_make_tracker(name, output_dir, config))

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        step = metrics.get("step", 0)
        for tracker in self.trackers:
            tracker(metrics, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()


def read_metrics(path: Path, strict: bool = True) -> tuple[list[dict[str, Any]], str | None]:
    """(records, note) of a ``metrics.jsonl``. A torn last line (the run was killed while writing it) is left out
    and named in the note; with ``strict`` a bad line elsewhere raises `RunDirError` naming it, else it is also
    left out and named."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if strict and n != len(lines):
                raise RunDirError(f"{path} line {n}: not JSON ({e.msg})") from None
            bad.append(n)
    if not bad:
        return records, None
    torn = " (torn: the run stopped while writing it)" if bad[-1] == len(lines) else ""
    return records, f"{path}: left out unreadable line(s) {', '.join(map(str, bad))}{torn}"


def keep_lines_up_to(path: Path, step: int) -> None:
    """Drop the lines of steps after ``step`` (and unreadable ones, with a warning) from ``path``, atomically."""
    records, note = read_metrics(path, strict=False)
    if note:
        logger.warning("%s", note)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records) and not note:
        return
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _make_tracker(name: str, output_dir: Path, config: dict[str, Any]):
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("trackers=[tensorboard] needs `pip install tensorboard`") from e
        writer = SummaryWriter(str(output_dir / "tensorboard"))

        def tb(metrics, step):
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(k, v, step)
            writer.flush()

        return tb
    if name == "wandb":
        try:
            import wandb
        except ImportError as e:
            raise ImportError("trackers=[wandb] needs `pip install wandb`") from e
        run = wandb.init(config=config, dir=str(output_dir))
        return lambda metrics, step: run.log({k: v for k, v in metrics.items() if k != "step"}, step=step)
    raise ConfigError(f"unknown tracker {name!r}; use tensorboard or wandb")


# what the progress bar shows, first match per slot: offline pairs report accuracy, online runs the mean reward
_BAR_FIELDS = (("loss", ("loss",)), ("acc", ("rewards/accuracy", "accuracy")), ("reward", ("reward/mean",)))


def progress_fields(record: dict) -> dict[str, str]:
    """The few metrics of a log record worth a progress bar, only those the record has."""
    out = {}
    for label, keys in _BAR_FIELDS:
        key = next((k for k in keys if k in record), None)
        if key is not None:
            out[label] = f"{record[key]:.4f}" if label == "loss" else f"{record[key]:.2f}"
    return out
