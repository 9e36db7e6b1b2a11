"""What the benchmark workers share: the common arguments, peak memory, precision, device name, alignkit's batch
order, a step timer for TRL trainers, writing the result."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated by torch, or this process's peak RSS on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def current_memory_mb(device) -> float:
    """Memory in use now: torch's allocated GPU memory, or this process's resident set on CPU (Linux
    ``/proc/self/statm``; elsewhere the peak so far, the best available)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_memory_mb(device)


def import_run_libraries(model_path: str) -> None:
    """Import what a run uses besides the framework itself — accelerate, datasets and the model's transformers
    modelling module — so that the post-import memory baseline is taken after the same libraries in every
    worker (alignkit imports accelerate and datasets only when a trainer is built; TRL when trl is imported)."""
    import importlib

    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    from transformers import AutoConfig

    kind = AutoConfig.from_pretrained(model_path).model_type.replace("-", "_")
    importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")


def precision(choice: str) -> str:
    """``auto`` -> bf16 (autocast, fp32 weights) on CUDA, fp32 elsewhere; ``fp32`` / ``bf16`` as given."""
    import torch

    if choice == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return choice


def device_name(device) -> str | None:
    """The GPU's name (for the MFU peak table), None on CPU."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def alignkit_order(rows: int, batch: int, seed: int) -> list[int]:
    """Row indices in alignkit's batch order (`BatchOrder`), to feed a TRL trainer sequentially."""
    from alignkit.data.dataset import BatchOrder

    order = BatchOrder(rows, batch, seed)
    return [i for m in range(order.per_epoch) for i in order.indices(m)]


def sync(device) -> None:
    """Wait for the GPU (timings on CUDA); nothing on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def step_timer(device):
    """A `TrainerCallback` that records (wall, CPU) time at train begin and at each step end (GPU synced) and
    the log records that carry a loss; ``step_times()`` -> (wall seconds, CPU seconds) per step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.ends, self.logs = (0.0, 0.0), [], []

        def on_train_begin(self, a, state, control, **kw):
            sync(device)
            self.begin = (time.perf_counter(), time.process_time())

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            self.ends.append((time.perf_counter(), time.process_time()))

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

        def step_times(self) -> tuple[list[float], list[float]]:
            marks = [self.begin, *self.ends]
            return ([b[0] - a[0] for a, b in zip(marks, marks[1:])],
                    [b[1] - a[1] for a, b in zip(marks, marks[1:])])

    return StepTimer()


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for name in ("--model", "--data", "--out", "--output-dir"):
        p.add_argument(name, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def run_and_write(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict]) -> None:
    """Run the worker and write its result (or the error) as JSON to ``args.out``."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except Exception as e:
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
