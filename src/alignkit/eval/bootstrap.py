"""Seeded percentile bootstrap: resampling weights (whole groups, e.g. the prompts, or single items) and the
interval of a mean. Shared by win rates, the length-controlled GLM and tournament ratings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def resample_weights(n: int, groups: Sequence[Any] | None, n_boot: int, seed: int) -> Tensor:
    """``[n_boot, n]`` bootstrap multiplicities of each item (seeded).

    Without ``groups`` items are drawn with replacement; with them whole groups are (the weight of an item
    is the number of times its group was drawn).
    """
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        idx = torch.randint(n, (n_boot, n), generator=gen)
        return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries but there are {n} comparisons; give one per comparison")
    ids: dict[Any, int] = {}
    gid = torch.tensor([ids.setdefault(g, len(ids)) for g in groups])
    n_groups = len(ids)
    idx = torch.randint(n_groups, (n_boot, n_groups), generator=gen)
    counts = torch.zeros(n_boot, n_groups, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n_groups, dtype=torch.float64))
    return counts[:, gid]


def percentile_interval(x: Tensor, level: float) -> list[float]:
    """``[lo, hi]``: the central ``level`` interval of the finite values of ``x``."""
    x = x[torch.isfinite(x)]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return torch.quantile(x, q).tolist()


def bootstrap_ci(values: Tensor | Sequence[float], groups: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (cluster bootstrap with ``groups``)."""
    y = torch.as_tensor(values, dtype=torch.float64).detach().flatten().cpu()
    if not torch.isfinite(y).all():
        raise ValueError("values has non-finite values; every comparison needs a finite values")
    if y.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    w = resample_weights(y.numel(), groups, n_boot, seed)
    return percentile_interval((w @ y) / w.sum(1), level)
