"""Supervised fine-tuning (negative log-likelihood) and the rule for which responses are SFT targets."""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.errors import DataError
from alignkit.objectives.common import pair_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean


def sft_targets(stats: SequenceStats) -> Tensor:
    """Which responses an SFT-style objective trains on, [B, K] bool.

    * ``ranks``: the valid responses with the row's best (lowest) rank — all of them if several tie;
    * ``scores`` (scalar, [B, K]): the valid responses with the row's highest score, ties likewise;
    * ``labels``: the valid desirable responses (label > 0.5);
    * none of these and K = 1: every valid response (plain SFT data).

    Ranks win over scores, scores over labels, as in :func:`alignkit.objectives.common.pair_view`.
    A row can end with no target (all undesirable, or all padded); callers mask such rows out.
    """
    valid = stats.valid
    if stats.ranks is not None or (stats.scores is not None and stats.scores.dim() == 2):
        order = stats.ranks if stats.ranks is not None else -stats.scores
        big = torch.full_like(order, float("inf"))
        order = torch.where(valid, order, big)
        return valid & (order == order.min(dim=1, keepdim=True).values)
    if stats.labels is not None:
        return valid & (stats.labels > 0.5)
    if stats.num_responses == 1:
        return valid.clone()
    raise DataError(
        f"SFT-style objectives need ranks, scalar scores or labels to pick the target among "
        f"K = {stats.num_responses} responses; give the records ranks/scores/labels or use one response each"
    )


@register("sft", label_kinds=("ranks", "scores", "labels"), min_responses=1)
def sft(stats: SequenceStats, length_normalize: bool = True) -> LossOutput:
    """Negative log-likelihood of the target responses (no reference model).

    Targets per row follow :func:`sft_targets` (the best response; the desirable ones for labelled
    data; the only response of SFT data). Typical use is alone, or as a regulariser next to a
    preference loss: ``[{name: dpo}, {name: sft, weight: 0.1}]``.

    * ``length_normalize=True``: each row's loss is the mean token NLL ``−s(y)/n(y)`` of its targets
      (averaged over targets if several); ``loss`` is the record-weighted mean over rows — every
      response counts the same however long it is.
    * ``length_normalize=False``: token-level mean over the batch, ``Σ −s(y) / Σ n(y)`` over all
      target tokens, exactly transformers' causal-LM loss on those tokens. ``per_example`` is then
      each row's own token mean and ``loss`` weights rows by ``weight_b · tokens_b``.

    Args:
        stats: ``logps`` [B, K] summed token log-probs s(y), ``lengths`` [B, K] tokens n(y),
            and ranks, scalar scores or labels (or K = 1).
        length_normalize: see above.

    Returns:
        LossOutput with ``per_example`` [B] (0 for rows without a target) and metrics ``nll``
        (mean token NLL over targets), ``logps/chosen`` (mean s(y) of targets), ``tokens``.
    """
    target = sft_targets(stats)
    mask = target.any(dim=1)
    tf = target.to(stats.logps.dtype)
    logps = torch.where(target, stats.logps, torch.zeros_like(stats.logps))
    lengths = torch.where(target, stats.lengths.to(logps.dtype), torch.zeros_like(logps))
    if length_normalize:
        row_nll = (-logps / lengths.clamp(min=1) * tf).sum(1) / tf.sum(1).clamp(min=1)
        loss = weighted_mean(row_nll, stats, mask)
    else:
        tokens = lengths.sum(1)
        row_nll = -logps.sum(1) / tokens.clamp(min=1)
        loss = _token_mean(-logps.sum(1), tokens, stats, mask)
    per_example = torch.where(mask, row_nll, torch.zeros_like(row_nll))
    metrics = pair_metrics(
        {"nll": row_nll, "logps/chosen": (logps * tf).sum(1) / tf.sum(1).clamp(min=1)}, mask
    )
    metrics["tokens"] = float(lengths.sum().detach())
    return LossOutput(loss, per_example, metrics)


def _token_mean(row_nll_sum: Tensor, tokens: Tensor, stats: SequenceStats, mask: Tensor) -> Tensor:
    """``Σ_b w_b·NLL_b / Σ_b w_b·tokens_b`` over rows in ``mask`` — the record-weighted token mean."""
    w = mask.to(tokens.dtype) if stats.weights is None else mask * stats.weights.to(tokens.dtype)
    return (row_nll_sum * w).sum() / (tokens * w).sum().clamp(min=torch.finfo(tokens.dtype).tiny)
