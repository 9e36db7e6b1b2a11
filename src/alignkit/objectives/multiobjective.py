"""Multi-objective preference objectives (METHODS.md section 4) on records with vector scores [B, K, m]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.common import pair_metrics, reward_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

CHOSEN_BY = ("objective", "weighted")


def _weight_vector(weights: Sequence[float] | Tensor | None, m: int, k: int, like: Tensor) -> Tensor:
    """The user weights as a [m] tensor, checked: m entries, all ≥ 0, and w_k > 0."""
    if weights is None:
        raise ConfigError(
            f"modpo needs `weights`: one weight ≥ 0 per score component (the data has m = {m}), "
            "e.g. hparams='{weights: [0.5, 0.5]}'"
        )
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).reshape(-1)
    if w.numel() != m:
        raise ConfigError(f"modpo `weights` has {w.numel()} entries but the scores have m = {m} components")
    if not 0 <= k < m:
        raise ConfigError(f"modpo `objective_index` must be in [0, {m}), got {k}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ConfigError(f"modpo `weights` must be finite and ≥ 0, got {w.tolist()}")
    if not w[k] > 0:
        raise ConfigError(f"modpo needs a weight > 0 on the trained objective {k}, got weights {w.tolist()}")
    return w


@register(
    "modpo",
    needs_reference=True,
    label_kinds=("scores",),
    min_responses=2,
    max_responses=2,
    score_shape="vector",
)
def modpo(
    stats: SequenceStats,
    beta: float = 0.1,
    weights: Sequence[float] | None = None,
    objective_index: int = 0,
    chosen_by: str = "objective",
) -> LossOutput:
    """Multi-Objective DPO, https://arxiv.org/abs/2310.03708.

    ``−logσ((β/w_k)[Δ − Σ_{i≠k} w_i (r_i(w) − r_i(l))/β])`` with ``k = objective_index``, user
    weights ``w`` (``weights``: m entries ≥ 0, ``w_k > 0``; they need not sum to 1), and
    ``r_i = scores[..., i]`` the other objectives' rewards: dpo on objective k with the other
    objectives' weighted reward gaps as a margin, so the policy's implicit reward ``βρ`` fits the
    collective reward ``wᵀr``. With m = 1 and ``weights=[1]`` it is dpo exactly.

    Which response is chosen: ``chosen_by="objective"`` (default, as in the paper: the preference
    data is objective k's) compares ``scores[..., k]``; ``"weighted"`` compares ``wᵀscores``.
    Rows that tie on that comparison, or hold a padded slot, are masked.

    Args:
        stats: ``logps``, ``ref_logps`` [B, 2]; ``scores`` [B, 2, m] (records must carry score
            vectors; a [B, 2] tensor passed directly is read as m = 1).
        beta: β > 0.

    Returns:
        LossOutput; rewards are ``β·ρ`` as dpo's; also logs ``rewards/others_margin``, the mean
        ``Σ_{i≠k} w_i (r_i(w) − r_i(l))``.
    """
    if not beta > 0:
        raise ConfigError(f"hyper-parameter beta must be > 0, got {beta}")
    if chosen_by not in CHOSEN_BY:
        raise ConfigError(f"modpo chosen_by must be one of {CHOSEN_BY}, got '{chosen_by}'")
    if stats.num_responses != 2:
        raise ValueError(f"modpo needs K = 2 responses per prompt, got K = {stats.num_responses}")
    if stats.scores is None:
        raise ValueError("modpo needs score vectors [B, 2, m] (records labelled with `scores`)")
    scores = stats.scores if stats.scores.dim() == 3 else stats.scores[..., None]
    m, k = scores.shape[-1], int(objective_index)
    w = _weight_vector(weights, m, k, stats.logps)
    valid = stats.valid
    scores = torch.where(valid[..., None], scores.to(w.dtype), torch.zeros_like(scores, dtype=w.dtype))
    key = scores[..., k] if chosen_by == "objective" else scores @ w  # [B, 2], higher is better
    win = torch.argmax(key, dim=1)
    lose = 1 - win
    mask = (key[:, 0] != key[:, 1]) & valid.all(dim=1)

    def take(x: Tensor, col: Tensor) -> Tensor:
        return x.gather(1, col.view(-1, *([1] * (x.dim() - 1))).expand(-1, 1, *x.shape[2:])).squeeze(1)

    zero = torch.zeros_like(stats.logps)
    rho = torch.where(valid, stats.logratios, zero)
    s = torch.where(valid, stats.logps, zero)
    delta = take(rho, win) - take(rho, lose)
    w_others = torch.where(torch.arange(m, device=w.device) == k, torch.zeros_like(w), w)
    # Σ_{i≠k} w_i (r_i(w) − r_i(l)): the other objectives' weighted reward gap
    others = ((take(scores, win) - take(scores, lose)) * w_others).sum(-1)
    per = -F.logsigmoid((beta / w[k]) * (delta - others / beta))
    per = torch.where(mask, per, torch.zeros_like(per))
    metrics = reward_metrics(beta * take(rho, win), beta * take(rho, lose), mask)
    metrics.update(
        pair_metrics(
            {"logps/chosen": take(s, win), "logps/rejected": take(s, lose), "rewards/others_margin": others},
            mask,
        )
    )
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)
