"""What the benchmark workers share: the common arguments, peak memory, precision, device name, writing the result."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import traceback
from collections.abc import Callable


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated by torch, or this process's peak RSS on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


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
