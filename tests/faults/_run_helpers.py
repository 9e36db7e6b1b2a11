"""Pieces shared by the run-fault cases of ``test_run_faults.py``: the tiny run every case starts from, its
weights, stand-ins for the program's own signal handlers, and the command line in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import alignkit
from alignkit.config import TrainConfig

SRC = Path(alignkit.__file__).resolve().parents[1]
RUN = dict(objective="dpo", beta=0.5, batch_size=4, max_steps=6, lr=1e-3, progress=False, seed=0)


def tiny_config(tiny_path: str, pairs_path: str, out: Path, **kw) -> TrainConfig:
    """The tiny DPO run of every case (6 steps of 4 pairs), with ``kw`` changed."""
    return TrainConfig(**{**RUN, "model": tiny_path, "data": pairs_path, "output_dir": str(out), **kw})


def cli_items(tiny_path: str, pairs_path: str, out: Path, **kw) -> list[str]:
    """The same run as ``key=value`` items for ``alignkit train``."""
    values = {**RUN, "model": tiny_path, "data": pairs_path, "output_dir": str(out), **kw}
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in values.items()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder or a ``final/`` folder."""
    return load_file(Path(path) / "model.safetensors")


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def optimizer_moments(path: Path) -> list[torch.Tensor]:
    state = torch.load(Path(path) / "optimizer.pt", weights_only=True)["state"]
    return [t for k in sorted(state) for t in (state[k]["exp_avg"], state[k]["exp_avg_sq"])]


class Recorder:
    """A program's own signal handler that only records what it was given."""

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, signum, frame):
        self.seen.append(signum)


@contextlib.contextmanager
def host_handler(sig: int, handler):
    """Run the block as a program whose handler of ``sig`` is ``handler``; restored after."""
    before = signal.signal(sig, handler)
    try:
        yield handler
    finally:
        signal.signal(sig, before)


def signal_self(sig: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), sig)


def foreground_signals() -> None:
    """A child's SIGINT / SIGTERM as a terminal's shell leaves them for a foreground command (default handling),
    even when this suite was started with them ignored (``make test &`` in a script: bash then starts background
    commands with SIGINT ignored, the child inherits that, and a run correctly leaves an ignored signal alone)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def start_cli(items: list[str], log: Path, step_pause: float = 0.0) -> subprocess.Popen:
    """``alignkit train ITEMS`` in a new process (one torch thread, like the tests), output to ``log``;
    ``step_pause``: seconds of sleep at the start of each step (a run slow enough to act on mid-training)."""
    code = ("import sys, time, torch; torch.set_num_threads(1); from alignkit.engine.trainer import Trainer; "
            f"step = Trainer.step; Trainer.step = lambda self: (time.sleep({step_pause}), step(self))[1]; "
            "from alignkit.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "train", *items], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env(), preexec_fn=foreground_signals)


def wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``predicate()`` every 20 ms until it holds (True), ``proc`` ends or time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.02)
    return False


def logged_steps(out: Path) -> list[int]:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]
