"""Small helpers shared by objectives: pair views and standard metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.stats import SequenceStats


@dataclass
class PairView:
    """For K = 2 data: indices of chosen (w) and rejected (l) per row, and which rows form a real pair.

    ``mask`` [B] is False for ties and for rows with a padded slot; those rows contribute nothing.
    """

    w: Tensor  # [B] long, column of the chosen response
    l: Tensor  # [B] long, column of the rejected response
    mask: Tensor  # [B] bool

    def take(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gather ``x`` [B, K] at the chosen and rejected columns -> ([B], [B])."""
        return x.gather(1, self.w[:, None]).squeeze(1), x.gather(1, self.l[:, None]).squeeze(1)


def pair_view(stats: SequenceStats) -> PairView:
    if stats.num_responses != 2:
        raise ValueError(f"pairwise objectives need K = 2 responses per prompt, got K = {stats.num_responses}")
    if stats.ranks is not None:
        order = stats.ranks
    elif stats.scores is not None and stats.scores.dim() == 2:
        order = -stats.scores  # higher score = better = lower rank
    else:
        raise ValueError("pairwise objectives need ranks (or scalar scores) to know which response is chosen")
    w = torch.argmin(order, dim=1)
    l = 1 - w
    mask = (order[:, 0] != order[:, 1]) & stats.valid.all(dim=1)
    return PairView(w=w, l=l, mask=mask)


def pair_gap(stats: SequenceStats, view: PairView, dtype: torch.dtype) -> Tensor:
    """The score gap of each pair, [B]: the record's ``extra['margin']`` where it is given and not NaN (a
    ``margin`` column, or the gap the ``pairs`` transform writes), else ``|s(w) − s(l)|`` from scalar
    ``scores``, else NaN (the row has no gap)."""
    B = stats.batch_size
    device = stats.valid.device
    given = stats.extra.get("margin")
    given = torch.full((B,), math.nan, dtype=dtype, device=device) if given is None else given.to(dtype)
    if given.shape != (B,):
        raise ValueError(f"extra['margin'] must be [B] = ({B},), got {tuple(given.shape)}")
    if stats.scores is not None and stats.scores.dim() == 2:
        s_w, s_l = view.take(stats.scores.to(dtype))
        return torch.where(torch.isnan(given), (s_w - s_l).abs(), given)
    return given


def pair_metrics(prefix_free: dict[str, Tensor], mask: Tensor) -> dict[str, float]:
    """Mean of each [B] tensor over rows in ``mask``; returns plain floats."""
    n = mask.sum().clamp(min=1)
    return {k: float((v.detach().float() * mask).sum() / n) for k, v in prefix_free.items()}


def reward_metrics(r_w: Tensor, r_l: Tensor, mask: Tensor) -> dict[str, float]:
    """The metrics every pairwise objective logs: implicit rewards, margin and accuracy."""
    return pair_metrics(
        {
            "rewards/chosen": r_w,
            "rewards/rejected": r_l,
            "rewards/margin": r_w - r_l,
            "rewards/accuracy": (r_w > r_l).float(),
        },
        mask,
    )


def check_positive(**kw: float) -> None:
    """Raise a `ConfigError` naming the first hyper-parameter in ``kw`` that is not > 0."""
    for k, v in kw.items():
        if not v > 0:
            raise ConfigError(f"hyper-parameter {k} must be > 0, got {v}")
