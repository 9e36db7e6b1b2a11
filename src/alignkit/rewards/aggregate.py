"""Aggregate the scores of a reward-model ensemble (METHODS.md section 5, "ensemble").

Members are reward models trained with different seeds or data. Their disagreement is a cheap
uncertainty estimate; a pessimistic aggregate (``min`` or ``mean − λ·std``) discourages a policy from
exploiting responses on which the members disagree (reward hacking; Coste et al. 2023,
https://arxiv.org/abs/2310.02743; Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alignkit.errors import ConfigError

AGGREGATE_MODES = ("mean", "min", "mean_minus_std")


def aggregate(
    member_scores: Tensor | Sequence[Sequence[float]], mode: str = "mean", lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Combine ``M`` members' scores of ``N`` responses into one score each, with an uncertainty.

    Args:
        member_scores: ``[M, N]``, row ``m`` the scores member ``m`` gives the ``N`` responses.
        mode: ``"mean"``; ``"min"`` (worst case over members); ``"mean_minus_std"``: ``mean − λ·std``.
        lam: λ for ``"mean_minus_std"`` (ignored otherwise). λ >= 0 is pessimistic and the score is
            non-increasing in λ; λ < 0 gives an optimistic (UCB-style) score.

    Returns:
        ``(score [N], uncertainty [N])``; the uncertainty is the std across members with
        ``unbiased=False`` (population std, so one member gives 0 rather than NaN). Always
        ``min <= mean``.
    """
    if mode not in AGGREGATE_MODES:
        raise ConfigError(f"mode must be one of {AGGREGATE_MODES}, got {mode!r}")
    s = member_scores if isinstance(member_scores, Tensor) else torch.as_tensor(member_scores)
    if not s.is_floating_point():
        s = s.double()
    if s.dim() != 2 or s.shape[0] == 0:
        raise ValueError(f"member_scores must be [M, N] with M >= 1 members, got shape {tuple(s.shape)}")
    std = s.std(dim=0, unbiased=False)
    if mode == "mean":
        score = s.mean(dim=0)
    elif mode == "min":
        score = s.min(dim=0).values
    else:
        score = s.mean(dim=0) - lam * std
    return score, std
