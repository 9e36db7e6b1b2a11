"""Unpaired and negatives-only objectives (METHODS.md section 2): pure losses over `SequenceStats`.

Data: ``labels`` [B, K], 1.0 desirable / 0.0 undesirable (label > 0.5 counts as desirable). Usually
K = 1 — one record is (prompt, completion, label) — but K > 1 with padded slots works: every valid
slot is one example, ``per_example[b]`` is the mean over row b's valid slots, and
``loss = weighted_mean(per_example)`` over rows with a valid slot, so record weights multiply rows.
Padded slots (whose values may be NaN) are replaced by 0 before any arithmetic, so they never reach
the loss or the gradient. ``ρ = s − s_ref`` as everywhere; rewards are ``β·ρ``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import check_positive, pair_view, reward_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

UNPAIRED = {"label_kinds": ("labels",), "min_responses": 1}


def _nonnegative(**kw: float) -> None:
    for k, v in kw.items():
        if not v >= 0:
            raise ConfigError(f"hyper-parameter {k} must be >= 0, got {v}")


class _Slots(NamedTuple):
    valid: Tensor  # [B, K] bool: slots that are examples
    good: Tensor  # [B, K] bool: valid desirable slots
    bad: Tensor  # [B, K] bool: valid undesirable slots
    rows: Tensor  # [B] bool: rows with at least one valid slot

    def zero(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``x`` [B, K] with every slot outside ``keep`` (default: valid) replaced by 0."""
        return torch.where(self.valid if keep is None else keep, x, torch.zeros_like(x))


def _slots(stats: SequenceStats, name: str, pairs: bool = False) -> _Slots:
    """Desirable / undesirable slots from ``labels``; with ``pairs``, also from K = 2 ranks or scores."""
    if stats.labels is not None:
        good = stats.valid & (stats.labels > 0.5)
        bad = stats.valid & ~(stats.labels > 0.5)
    elif pairs and (stats.ranks is not None or stats.scores is not None):
        if stats.num_responses != 2:
            raise DataError(
                f"objective '{name}' reads ranks/scores only for K = 2 pairs (chosen desirable, rejected "
                f"undesirable); got K = {stats.num_responses}: label the responses 1.0 / 0.0 instead"
            )
        view = pair_view(stats)
        cols = torch.arange(2, device=stats.logps.device)[None, :]
        good = (cols == view.w[:, None]) & view.mask[:, None]
        bad = (cols == view.l[:, None]) & view.mask[:, None]
    else:
        raise DataError(
            f"objective '{name}' needs records labelled desirable / undesirable (labels 1.0 / 0.0), "
            f"e.g. the unpaired layout (prompt, completion, label)"
        )
    valid = good | bad
    return _Slots(valid, good, bad, valid.any(dim=1))


def _mean(x: Tensor, sel: Tensor) -> float:
    """Mean of ``x`` over the selected entries as a float (0 when none); ``x`` must be finite there."""
    x = torch.where(sel, x.detach(), torch.zeros_like(x))
    return float(x.sum() / sel.sum().clamp(min=1))


def _finish(stats: SequenceStats, s: _Slots, per_slot: Tensor, metrics: dict[str, float]) -> LossOutput:
    """Row mean of ``per_slot`` over valid slots, then the record-weighted mean over rows."""
    per = s.zero(per_slot).sum(dim=1) / s.valid.sum(dim=1).clamp(min=1).to(per_slot.dtype)
    per = torch.where(s.rows, per, torch.zeros_like(per))
    metrics["count/chosen"] = float(s.good.sum())
    metrics["count/rejected"] = float(s.bad.sum())
    return LossOutput(weighted_mean(per, stats, s.rows), per, metrics)


def _reward_logp_metrics(stats: SequenceStats, s: _Slots, r: Tensor) -> dict[str, float]:
    logps = s.zero(stats.logps)
    return {
        "rewards/chosen": _mean(r, s.good),
        "rewards/rejected": _mean(r, s.bad),
        "logps/chosen": _mean(logps, s.good),
        "logps/rejected": _mean(logps, s.bad),
    }


@register("kto", needs_reference=True, extras=("kl_logratios",), **UNPAIRED)
def kto(
    stats: SequenceStats, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> LossOutput:
    """Kahneman–Tversky Optimization, https://arxiv.org/abs/2402.01306.

    A prospect-theory value of each response's implicit reward ``βρ`` relative to a reference point
    ``z0 = max(0, mean_b kl_logratios[b])`` (detached): ρ of mismatched (prompt_i, response_{i+1})
    pairs, an estimate of KL(πθ ‖ π_ref) computed by the executor (``stats.extra["kl_logratios"]``
    [B]). Per valid slot:

    * desirable: ``λ_D·(1 − σ(β(ρ − z0)))``; undesirable: ``λ_U·(1 − σ(β(z0 − ρ)))``
      (evaluated as ``σ(β(z0 − ρ))`` and ``σ(β(ρ − z0))``, the same numbers).

    z0's mean runs over the local batch's rows that hold a valid slot (TRL all-gathers it across
    processes), unweighted; it carries no gradient. At θ = ref every example costs λ/2.

    Args:
        stats: ``logps``, ``ref_logps``, ``labels`` [B, K]; ``extra["kl_logratios"]`` [B].
        beta: β > 0. desirable_weight, undesirable_weight: λ_D, λ_U ≥ 0 (balance the two classes).

    Returns:
        LossOutput; metrics ``rewards/chosen`` / ``rewards/rejected`` (mean ``βρ`` of desirable /
        undesirable slots), ``logps/chosen`` / ``logps/rejected``, ``kl`` (z0), ``count/chosen``,
        ``count/rejected``.
    """
    check_positive(beta=beta)
    _nonnegative(desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    s = _slots(stats, "kto")
    kl = stats.extra.get("kl_logratios")
    if kl is None:
        raise ValueError(
            "objective 'kto' needs stats.extra['kl_logratios'] ([B] log-ratios of mismatched "
            "prompt/response pairs); the trainer computes it for objectives registered with "
            "extras=('kl_logratios',)"
        )
    if kl.shape != (stats.batch_size,):
        raise ValueError(f"kl_logratios must be [B]={stats.batch_size}, got {tuple(kl.shape)}")
    kl = torch.where(s.rows, kl.detach().to(stats.logps.dtype), torch.zeros_like(stats.logps[:, 0]))
    z0 = (kl.sum() / s.rows.sum().clamp(min=1)).clamp(min=0)
    rho = s.zero(stats.logratios)
    per_slot = torch.where(
        s.good,
        desirable_weight * torch.sigmoid(beta * (z0 - rho)),
        undesirable_weight * torch.sigmoid(beta * (rho - z0)),
    )
    metrics = _reward_logp_metrics(stats, s, beta * rho)
    metrics["kl"] = float(z0)
    return _finish(stats, s, per_slot, metrics)


def _update_delta(state: dict, batch_mean: float, n: int, momentum: float | None) -> None:
    """Fold a batch's mean reward into ``state = {"delta": float, "count": int}``."""
    delta, count = float(state.get("delta", 0.0)), int(state.get("count", 0))
    if count == 0:
        delta = batch_mean
    elif momentum is None:  # cumulative mean over every reward seen
        delta = delta + (batch_mean - delta) * n / (count + n)
    else:
        delta = momentum * delta + (1 - momentum) * batch_mean
    state["delta"], state["count"] = float(delta), count + n


@register("bco", needs_reference=True, stateful=True, **UNPAIRED)
def bco(
    stats: SequenceStats, beta: float = 0.1, momentum: float | None = 0.99, state: dict | None = None
) -> LossOutput:
    """Binary Classifier Optimization, https://arxiv.org/abs/2404.04656.

    A logistic classifier on the implicit reward ``r = βρ`` with a running-mean threshold δ:
    desirable ``−logσ(r − δ)``, undesirable ``−logσ(−(r − δ))``.

    δ lives in ``state = {"delta": float, "count": int}`` (plain Python numbers, saved in checkpoints)
    and is updated **before** the loss uses it (as TRL does), from μ = the unweighted mean of the
    detached rewards of this call's valid slots, n of them:

    * first call (``count == 0``): ``δ = μ``;
    * later, ``momentum`` m ∈ [0, 1): ``δ ← m·δ + (1 − m)·μ`` (EMA, one step per call);
    * ``momentum=None``: ``δ ← (count·δ + n·μ) / (count + n)``, the mean of every reward seen (TRL's
      ``RunningMoments``).

    ``count`` adds n per call; a call without valid slots changes nothing. δ follows the local batch
    on each process and updates on every call (every micro-batch under gradient accumulation); the
    trainer restores the state around evaluation. δ carries no gradient.

    BCO's second half, underlying distribution matching (undesirable examples weighted by the density
    ratio of desirable to undesirable prompts), is the data transform ``udm``
    (`alignkit.objectives.density_ratio`); its weights reach this loss as record weights.

    Returns:
        LossOutput; metrics ``rewards/chosen``, ``rewards/rejected``, ``logps/chosen``,
        ``logps/rejected``, ``delta`` (the δ used), ``count/chosen``, ``count/rejected``.
    """
    check_positive(beta=beta)
    if momentum is not None and not 0 <= momentum < 1:
        raise ConfigError(f"hyper-parameter momentum must be in [0, 1) or None, got {momentum}")
    state = {} if state is None else state
    s = _slots(stats, "bco")
    r = beta * s.zero(stats.logratios)
    n = int(s.valid.sum())
    if n:
        _update_delta(state, float(r.detach().double().sum()) / n, n, momentum)
    delta = float(state.get("delta", 0.0))
    z = r - delta
    per_slot = torch.where(s.good, -F.logsigmoid(z), -F.logsigmoid(-z))
    metrics = _reward_logp_metrics(stats, s, r)
    metrics["delta"] = delta
    return _finish(stats, s, per_slot, metrics)


@register("d2o", needs_reference=True, label_kinds=("labels",), min_responses=2)
def d2o(stats: SequenceStats, beta: float = 0.1, alpha: float | None = None) -> LossOutput:
    """Distributional Dispreference Optimization (negatives only), https://arxiv.org/abs/2403.03419.

    Records hold a human negative y⁻ (label 0) and self-generated samples ŷ_j from the reference
    (label 1; the data pipeline adds them). Per row, with K₊ samples and K₋ negatives:

    ``−logσ( (β/K₊)·Σ_{label 1} ρ(ŷ_j) − (α/K₋)·Σ_{label 0} ρ(y⁻) )``, α = β when ``alpha`` is None.

    With K₊ = K₋ = 1 and α = β it is :func:`~alignkit.objectives.pairwise.dpo` with the sample as the
    chosen response. Rows without at least one valid label-1 and one valid label-0 slot are masked
    (``per_example`` 0, left out of ``loss``). Both terms use the run's one reference model.

    Returns:
        LossOutput; ``rewards/chosen`` = ``(β/K₊)Σρ(ŷ)``, ``rewards/rejected`` = ``(α/K₋)Σρ(y⁻)``,
        ``rewards/margin``, ``rewards/accuracy`` (means over unmasked rows).
    """
    check_positive(beta=beta)
    a = beta if alpha is None else alpha
    check_positive(alpha=a)
    s = _slots(stats, "d2o")
    rho = s.zero(stats.logratios)
    k_pos, k_neg = s.good.sum(dim=1), s.bad.sum(dim=1)
    mask = (k_pos > 0) & (k_neg > 0)
    h_pos = beta * s.zero(rho, s.good).sum(dim=1) / k_pos.clamp(min=1).to(rho.dtype)
    h_neg = a * s.zero(rho, s.bad).sum(dim=1) / k_neg.clamp(min=1).to(rho.dtype)
    per = -F.logsigmoid(h_pos - h_neg)
    per = torch.where(mask, per, torch.zeros_like(per))
    metrics = reward_metrics(h_pos, h_neg, mask)
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)


UL_FLOOR = 1e-6  # the smallest 1 − p_t the unlikelihood term evaluates exactly


def neg_log1m_exp(logp: Tensor) -> Tensor:
    """``−log(1 − exp(logp))`` computed as ``−log(−expm1(logp))``, finite for every logp ≤ 0.

    Exact for ``logp ≤ c = log(1 − UL_FLOOR)`` (≈ −1e−6); above c (p within 1e−6 of 1, or 0 after
    rounding) it continues linearly with the same value and slope, ``f(c) + f′(c)(logp − c)``, so
    the loss stays ≤ ≈ 14.8 and the gradient stays positive (a plain clamp would zero it).
    """
    c = math.log1p(-UL_FLOOR)
    slope = (1 - UL_FLOOR) / UL_FLOOR  # f'(c) = p / (1 - p) at p = 1 - UL_FLOOR
    capped = logp.clamp(max=c)
    return -torch.log(-torch.expm1(capped)) + slope * (logp - capped)


@register("unlikelihood", label_kinds=("labels", "ranks", "scores"), min_responses=1, needs_token_logps=True)
def unlikelihood(stats: SequenceStats, alpha: float = 1.0) -> LossOutput:
    """Unlikelihood training, https://arxiv.org/abs/1908.04319 (Welleck et al.).

    Per valid slot, over its completion tokens t (``token_mask``):

    * desirable: the token-mean NLL ``−(1/n)Σ_t logp_t`` (what :func:`~alignkit.objectives.sft.sft`
      gives with ``length_normalize=True``);
    * undesirable: ``α·(1/n)Σ_t −log(1 − p_t)``, via :func:`neg_log1m_exp` (exact up to
      ``p_t = 1 − 1e−6``, linear beyond). Its gradient ``α·p_t/(1 − p_t)/n`` w.r.t. every ``logp_t``
      is positive, so a descent step lowers every token's probability.

    Labels 1.0 / 0.0 mark desirable / undesirable responses; without labels, K = 2 ranks or scalar
    scores make the chosen response desirable and the rejected one undesirable (ties and padded
    pairs masked), so ``[dpo, unlikelihood]`` runs on paired data.

    Args:
        stats: ``token_logps`` / ``token_mask`` [B, K, T]; labels, or ranks / scores with K = 2.
        alpha: weight α ≥ 0 of the unlikelihood term.

    Returns:
        LossOutput; metrics ``nll`` (mean over desirable slots), ``unlikelihood`` (mean token
        ``−log(1 − p)`` over undesirable slots, before α), ``logps/chosen``, ``logps/rejected``
        (summed token log-probs), ``count/chosen``, ``count/rejected``.
    """
    _nonnegative(alpha=alpha)
    if stats.token_logps is None or stats.token_mask is None:
        raise ValueError(
            "objective 'unlikelihood' needs per-token log-probs (stats.token_logps and token_mask); the "
            "trainer provides them for objectives registered with needs_token_logps=True"
        )
    s = _slots(stats, "unlikelihood", pairs=True)
    tmask = stats.token_mask.bool() & s.valid[..., None]
    logp = torch.where(tmask, stats.token_logps, torch.full_like(stats.token_logps, -1.0))
    n = tmask.sum(dim=-1).clamp(min=1).to(logp.dtype)
    zero = torch.zeros_like(logp)
    summed = torch.where(tmask, logp, zero).sum(dim=-1)
    nll = -summed / n
    ul = torch.where(tmask, neg_log1m_exp(logp), zero).sum(dim=-1) / n
    per_slot = torch.where(s.good, nll, alpha * ul)
    metrics = {
        "nll": _mean(nll, s.good),
        "unlikelihood": _mean(ul, s.bad),
        "logps/chosen": _mean(summed, s.good),
        "logps/rejected": _mean(summed, s.bad),
    }
    return _finish(stats, s, per_slot, metrics)
