"""Learning-rate schedules: warmup then linear decay, cosine decay, or constant."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` < 1 is a fraction of ``total``; >= 1 a number of steps."""
    return int(round(warmup * total)) if warmup < 1 else int(warmup)


def lr_factor(step: int, kind: str, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, kind: str, warmup: float, total: int) -> LambdaLR:
    n_warm = warmup_steps(warmup, total)
    return LambdaLR(optimizer, lambda step: lr_factor(step, kind, n_warm, total))
