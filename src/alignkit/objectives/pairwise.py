"""Offline pairwise preference objectives (METHODS.md section 1): pure losses over `SequenceStats`.

Notation: ``s`` summed completion log-probs, ``n`` completion tokens, ``m = s/n``, ``ρ = s − s_ref``,
``Δ = ρ(w) − ρ(l)`` for the chosen ``w`` and rejected ``l`` response of a row. Pair objectives take
K = 2 responses; the chosen column comes from ranks or scalar scores (either column may be chosen);
rows that tie or hold a padded slot are masked: their ``per_example`` is 0 and they are left out of
``loss = weighted_mean(per_example)`` (record-weighted). Every pair objective logs ``rewards/chosen``,
``rewards/rejected``, ``rewards/margin``, ``rewards/accuracy`` (its implicit reward; ``β·ρ`` for
reference-based methods) and ``logps/chosen``, ``logps/rejected`` (mean summed log-probs).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import PairView, check_positive, pair_metrics, pair_view, reward_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.sft import sft_targets
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

PAIR = {"label_kinds": ("ranks", "scores"), "min_responses": 2, "max_responses": 2}


class PairStats(NamedTuple):
    view: PairView
    s_w: Tensor  # [B] summed log-probs (0 on masked rows, so padding never reaches the loss)
    s_l: Tensor
    n_w: Tensor  # [B] token counts (1 on masked rows)
    n_l: Tensor
    rho_w: Tensor | None  # [B] log-ratios to the reference, when one was asked for
    rho_l: Tensor | None

    @property
    def delta(self) -> Tensor:
        return self.rho_w - self.rho_l


def pair_stats(stats: SequenceStats, reference: bool) -> PairStats:
    """The chosen / rejected statistics of every K = 2 row (masked rows: s = 0, n = 1, ρ = 0); ρ only with
    ``reference``. Shared by the pair objectives here and in ``soft.py``."""
    view = pair_view(stats)

    def take(x: Tensor, fill: float) -> tuple[Tensor, Tensor]:
        a, b = view.take(x)
        return torch.where(view.mask, a, fill), torch.where(view.mask, b, fill)

    s_w, s_l = take(stats.logps, 0.0)
    n_w, n_l = take(stats.lengths.to(stats.logps.dtype).clamp(min=1), 1.0)
    rho_w = rho_l = None
    if reference:
        r_w, r_l = take(stats.logratios, 0.0)
        rho_w, rho_l = r_w, r_l
    return PairStats(view, s_w, s_l, n_w, n_l, rho_w, rho_l)


def finish_pair(
    stats: SequenceStats, p: PairStats, per: Tensor, r_w: Tensor, r_l: Tensor, **extra: Tensor
) -> LossOutput:
    """`LossOutput` of a pair objective: ``per`` zeroed on masked rows, the record-weighted mean, the implicit
    rewards ``r_w``/``r_l`` and log-prob metrics every pair objective logs, plus ``extra`` metrics."""
    mask = p.view.mask
    per = torch.where(mask, per, torch.zeros_like(per))
    metrics = reward_metrics(r_w, r_l, mask)
    metrics.update(pair_metrics({"logps/chosen": p.s_w, "logps/rejected": p.s_l, **extra}, mask))
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)


def pair_log_ratios(p: PairStats, length_normalize: bool) -> tuple[Tensor, Tensor]:
    """``(ρ(w), ρ(l))``, or the per-token ``(ρ(w)/n(w), ρ(l)/n(l))`` when ``length_normalize``."""
    return (p.rho_w / p.n_w, p.rho_l / p.n_l) if length_normalize else (p.rho_w, p.rho_l)


def _rate(name: str, eps: float, high: float, closed: bool) -> None:
    if not (0 <= eps <= high if closed else 0 <= eps < high):
        raise ConfigError(f"hyper-parameter {name} must be in [0, {high}{']' if closed else ')'}, got {eps}")


@register("dpo", needs_reference=True, **PAIR)
def dpo(stats: SequenceStats, beta: float = 0.1, length_normalize: bool = False) -> LossOutput:
    """Direct Preference Optimization (sigmoid loss), https://arxiv.org/abs/2305.18290.

    ``−logσ(βΔ)``: the Bradley–Terry likelihood of the preference under the implicit reward
    ``h = β·ρ``; β sets how far the policy may move from the reference.

    ``length_normalize=True`` is LN-DPO (Ahrabian et al. 2024, "A Practical Analysis of Human
    Alignment with *PO", https://arxiv.org/abs/2407.15229): ``−logσ(β[ρ(w)/n(w) − ρ(l)/n(l)])``,
    per-token log-ratios, so a longer response earns no larger implicit reward for its length alone.
    With both responses of length L it is dpo at β/L.

    Args:
        stats: ``logps``, ``ref_logps`` [B, 2] summed log-probs; ranks or scalar scores [B, 2];
            ``lengths`` [B, 2] completion tokens (used with ``length_normalize``).
        beta: inverse temperature β > 0.
        length_normalize: divide each log-ratio by its response's token count (LN-DPO).

    Returns:
        LossOutput, ``per_example`` [B]; rewards are ``β·`` the log-ratios used (``β·ρ`` or ``β·ρ/n``).
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=True)
    rho_w, rho_l = pair_log_ratios(p, length_normalize)
    per = -F.logsigmoid(beta * (rho_w - rho_l))
    return finish_pair(stats, p, per, beta * rho_w, beta * rho_l)


@register("cdpo", needs_reference=True, **PAIR)
def cdpo(stats: SequenceStats, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO / label smoothing, https://ericmitchell.ai/cdpo.pdf.

    ``−(1−ε)logσ(βΔ) − ε·logσ(−βΔ)``: the preference label is trusted with probability 1 − ε, so
    the loss is minimised at the finite margin ``βΔ = log((1−ε)/ε)`` instead of pushing Δ → ∞.
    ``label_smoothing`` ε ∈ [0, 0.5]; ε = 0 is dpo. Shapes and rewards as :func:`dpo`.
    """
    check_positive(beta=beta)
    _rate("label_smoothing", label_smoothing, 0.5, closed=True)
    p = pair_stats(stats, reference=True)
    z = beta * p.delta
    per = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return finish_pair(stats, p, per, beta * p.rho_w, beta * p.rho_l)


@register("rdpo", needs_reference=True, **PAIR)
def rdpo(stats: SequenceStats, beta: float = 0.1, flip_rate: float = 0.1) -> LossOutput:
    """Provably robust DPO (rDPO), https://arxiv.org/abs/2403.00409.

    ``[(1−ε)(−logσ(βΔ)) − ε(−logσ(−βΔ))] / (1−2ε)`` with ``flip_rate`` ε ∈ [0, 0.5): an unbiased
    estimate of the clean dpo loss when each label was flipped with probability ε (the expectation
    over flips equals dpo). Can be negative per pair. Shapes and rewards as :func:`dpo`.
    """
    check_positive(beta=beta)
    _rate("flip_rate", flip_rate, 0.5, closed=False)
    p = pair_stats(stats, reference=True)
    z = beta * p.delta
    per = (-(1 - flip_rate) * F.logsigmoid(z) + flip_rate * F.logsigmoid(-z)) / (1 - 2 * flip_rate)
    return finish_pair(stats, p, per, beta * p.rho_w, beta * p.rho_l)


@register("ipo", needs_reference=True, **PAIR)
def ipo(stats: SequenceStats, beta: float = 0.1, length_normalize: bool = False) -> LossOutput:
    """Identity Preference Optimization, https://arxiv.org/abs/2310.12036.

    ``(Δ − 1/(2β))²``: regresses the log-ratio margin onto the fixed target ``1/(2β)``, so it does
    not drive Δ → ∞ on deterministic preferences. ``length_normalize=False`` uses summed log-ratios
    as in the paper; ``True`` uses per-token means ``(s − s_ref)/n`` (as TRL does). Rewards are
    ``β·`` the log-ratios used. Shapes as :func:`dpo`.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=True)
    rho_w, rho_l = pair_log_ratios(p, length_normalize)
    per = (rho_w - rho_l - 1 / (2 * beta)) ** 2
    return finish_pair(stats, p, per, beta * rho_w, beta * rho_l)


@register("hinge", needs_reference=True, **PAIR)
def hinge(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Hinge / SLiC-HF calibration loss, https://arxiv.org/abs/2305.10425.

    ``max(0, 1 − βΔ)`` on the reference log-ratio margin: zero loss and zero gradient once the
    margin βΔ reaches 1. Shapes and rewards as :func:`dpo`.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=True)
    per = F.relu(1 - beta * p.delta)
    return finish_pair(stats, p, per, beta * p.rho_w, beta * p.rho_l)


def _expm1_capped(x: Tensor) -> Tensor:
    """``expm1(x)``, continued linearly (same value and slope) above ``c = ½·log(max float)``.

    Keeps f-DPO finite for log-ratios of ±1e4 instead of overflowing to inf (TRL caps instead,
    which zeroes the gradient); below c (≈ 354 in fp64, 44 in fp32) it is exactly ``expm1``.
    """
    c = 0.5 * math.log(torch.finfo(x.dtype).max)
    ec = math.exp(c)
    return torch.where(x > c, ec * (1 + (x - c)) - 1, torch.expm1(x.clamp(max=c)))


FDIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


@register("fdpo", needs_reference=True, **PAIR)
def fdpo(
    stats: SequenceStats, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5
) -> LossOutput:
    """f-DPO: DPO under an f-divergence regulariser, https://arxiv.org/abs/2309.16240.

    ``−logσ(β[f′(u_w) − f′(u_l)])`` with ``u = πθ/π_ref = exp(ρ)``, f′ evaluated in log space:

    * ``reverse_kl``: ``f′ = ρ + 1`` — the constant cancels, so this is :func:`dpo` exactly;
    * ``forward_kl``: ``f′ = −exp(−ρ)`` (the same margin as ``alpha`` with α = 1);
    * ``js``: ``f′ = log(2u/(1+u)) = log 2 + logσ(ρ)``, bounded above, finite for any ρ;
    * ``alpha``: ``f′ = (1 − exp(−αρ))/α = −expm1(−αρ)/α``, α > 0; α → 0 approaches reverse KL.

    The exponentials continue linearly beyond ``exp(½·log(max float))`` so that huge negative
    log-ratios give finite (huge) losses and gradients rather than inf. Rewards are ``β·ρ``.
    """
    check_positive(beta=beta)
    if divergence not in FDIVERGENCES:
        raise ConfigError(f"fdpo divergence must be one of {FDIVERGENCES}, got '{divergence}'")
    p = pair_stats(stats, reference=True)
    if divergence == "reverse_kl":
        margin = p.delta
    elif divergence == "js":
        margin = F.logsigmoid(p.rho_w) - F.logsigmoid(p.rho_l)
    else:
        a = 1.0 if divergence == "forward_kl" else alpha
        check_positive(alpha=a)
        margin = (_expm1_capped(-a * p.rho_l) - _expm1_capped(-a * p.rho_w)) / a
    per = -F.logsigmoid(beta * margin)
    return finish_pair(stats, p, per, beta * p.rho_w, beta * p.rho_l)


@register("simpo", **PAIR)
def simpo(stats: SequenceStats, beta: float = 2.0, gamma: float = 1.0) -> LossOutput:
    """SimPO, reference-free, https://arxiv.org/abs/2405.14734.

    ``−logσ(β(m(w) − m(l)) − γ)`` on mean token log-probs ``m = s/n`` with target margin γ (γ sits
    outside β, as in METHODS.md; the paper's ``γ/β`` form is the same loss with γ rescaled).
    Length-normalisation makes it invariant to repeating a response's tokens. Rewards are ``β·m``.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=False)
    m_w, m_l = p.s_w / p.n_w, p.s_l / p.n_l
    per = -F.logsigmoid(beta * (m_w - m_l) - gamma)
    return finish_pair(stats, p, per, beta * m_w, beta * m_l)


def _log_odds(m: Tensor) -> Tensor:
    """``log(p/(1−p))`` for ``p = exp(m)``, as ``m − log(−expm1(m))``, finite as m → 0⁻.

    m is clamped to ≤ −eps(dtype): closer to 0 a mean token log-prob is below the rounding error
    of the log-softmax that produced it, and at m = 0 the odds are infinite.
    """
    m = m.clamp(max=-torch.finfo(m.dtype).eps)
    return m - torch.log(-torch.expm1(m))


@register("orpo", **PAIR)
def orpo(stats: SequenceStats, lam: float = 0.1) -> LossOutput:
    """Odds-Ratio Preference Optimization, reference-free, https://arxiv.org/abs/2403.07691.

    ``−m(w) − λ·logσ(logodds(w) − logodds(l))``: mean-token NLL of the chosen response plus the log
    odds ratio, with ``odds = p/(1−p)`` and ``p = exp(m)``; ``logodds = m − log1p(−exp(m))`` is
    computed stably (see ``_log_odds``). Rewards are ``λ·m`` (TRL's convention, β = λ); also logs
    ``nll`` and ``log_odds_ratio``.
    """
    check_positive(lam=lam)
    p = pair_stats(stats, reference=False)
    m_w, m_l = p.s_w / p.n_w, p.s_l / p.n_l
    ratio = _log_odds(m_w) - _log_odds(m_l)
    per = -m_w - lam * F.logsigmoid(ratio)
    return finish_pair(stats, p, per, lam * m_w, lam * m_l, nll=-m_w, log_odds_ratio=ratio)


@register("cpo", **PAIR)
def cpo(stats: SequenceStats, beta: float = 0.1, sft_weight: float = 1.0) -> LossOutput:
    """Contrastive Preference Optimization, reference-free, https://arxiv.org/abs/2401.08417.

    ``−logσ(β(s(w) − s(l))) + sft_weight·(−s(w)/n(w))``: dpo with a reference that gives both
    responses the same log-prob (``ref_logps = 0``) plus behaviour cloning of the chosen response.
    The NLL term is the **mean per token** ``−s(w)/n(w)``, as in the CPO reference implementation
    (METHODS.md writes ``NLL(w)``). Rewards are ``β·s``.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=False)
    per = -F.logsigmoid(beta * (p.s_w - p.s_l)) - sft_weight * p.s_w / p.n_w
    return finish_pair(stats, p, per, beta * p.s_w, beta * p.s_l, nll=-p.s_w / p.n_w)


@register("rpo", needs_reference=True, **PAIR)
def rpo(stats: SequenceStats, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """RPO: DPO plus NLL of the chosen response, https://arxiv.org/abs/2404.19733.

    ``−logσ(βΔ) + α·(−s(w)/n(w))`` (mean token NLL); α = 0 is :func:`dpo`. Rewards are ``β·ρ``.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=True)
    per = -F.logsigmoid(beta * p.delta) - alpha * p.s_w / p.n_w
    return finish_pair(stats, p, per, beta * p.rho_w, beta * p.rho_l, nll=-p.s_w / p.n_w)


@register("asft", **PAIR)
def asft(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Aligned SFT through absolute likelihood, reference-free, https://arxiv.org/abs/2409.10571.

    ``−logσ(β·s(w)) − logσ(−β·s(l))``: each response is scored on its own (no Bradley–Terry
    coupling), so the gradient raises s(w) and lowers s(l) independently. Rewards are ``β·s``.
    """
    check_positive(beta=beta)
    p = pair_stats(stats, reference=False)
    per = -F.logsigmoid(beta * p.s_w) - F.logsigmoid(-beta * p.s_l)
    return finish_pair(stats, p, per, beta * p.s_w, beta * p.s_l)


@register("jpo", needs_reference=True, label_kinds=("ranks", "scores"), min_responses=2)
def jpo(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Joint (cross-prompt) preference optimization, https://arxiv.org/abs/2404.00530.

    ``−logσ(β(ρ_u − ρ_v))`` averaged over every ordered pair u ≻ v of valid responses in the batch.
    With scalar ``scores`` [B, K] (comparable across prompts, used when present) u ≻ v iff
    ``score_u > score_v``, so pairs may cross prompts; with only ``ranks`` pairs stay within a
    prompt (u ≻ v iff rank_u < rank_v). Ties form no pair. For K = 2 ranks it is :func:`dpo`.

    Record weights: a pair weighs ``sqrt(w_row(u)·w_row(v))`` (the row weight within a prompt) and
    ``loss`` is the pair-weighted mean. ``per_example[b]`` is the unweighted mean loss of the pairs
    whose winner is in row b (0 where none). Metrics average over pairs: rewards ``β·ρ`` of winners
    and losers, accuracy = fraction of pairs with ``ρ_u > ρ_v``, and ``pairs`` (their number).
    """
    check_positive(beta=beta)
    B, K = stats.logps.shape
    valid = stats.valid.reshape(-1)
    zero = torch.zeros_like(stats.logps)
    rho = torch.where(stats.valid, stats.logratios, zero).reshape(-1)
    s = torch.where(stats.valid, stats.logps, zero).reshape(-1)
    row = torch.arange(B, device=rho.device).repeat_interleave(K)
    if stats.scores is not None:
        if stats.scores.dim() != 2:
            raise DataError("jpo needs scalar scores [B, K] to compare responses across prompts")
        key = stats.scores.reshape(-1)
        better = key[:, None] > key[None, :]
    elif stats.ranks is not None:
        key = stats.ranks.reshape(-1)
        better = (key[:, None] < key[None, :]) & (row[:, None] == row[None, :])
    else:
        raise DataError("jpo needs ranks or scalar scores to know which responses are preferred")
    u, v = (better & valid[:, None] & valid[None, :]).nonzero(as_tuple=True)
    per_pair = -F.logsigmoid(beta * (rho[u] - rho[v]))
    w = torch.ones(B, dtype=rho.dtype, device=rho.device) if stats.weights is None else stats.weights
    pw = torch.sqrt(w.to(rho.dtype)[row[u]] * w.to(rho.dtype)[row[v]])
    loss = (pw * per_pair).sum() / pw.sum().clamp(min=torch.finfo(rho.dtype).tiny)
    count = torch.zeros(B, dtype=rho.dtype, device=rho.device).index_add(0, row[u], torch.ones_like(per_pair))
    per = torch.zeros(B, dtype=rho.dtype, device=rho.device).index_add(0, row[u], per_pair) / count.clamp(
        min=1
    )
    all_pairs = torch.ones_like(per_pair, dtype=torch.bool)
    metrics = reward_metrics(beta * rho[u], beta * rho[v], all_pairs)
    metrics.update(pair_metrics({"logps/chosen": s[u], "logps/rejected": s[v]}, all_pairs))
    metrics["pairs"] = float(u.numel())
    return LossOutput(loss, per, metrics)


@register("poft", needs_reference=True, label_kinds=("ranks", "scores", "labels"), min_responses=1)
def poft(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Preference-oriented SFT (PoFT), https://arxiv.org/abs/2412.12865.

    ``−logσ(β[s(y) − s_aligned(y)])``: a Bradley–Terry preference for the target model over a fixed
    aligned model on the same SFT response y, so responses the aligned model already finds likely
    (good data) weigh more in the gradient than ones it finds unlikely (noisy data). Point the
    reference model at the aligned model: ``stats.ref_logps`` holds ``s_aligned``.

    Applies to the SFT targets of :func:`alignkit.objectives.sft.sft_targets`: the best response
    of each row (rank 0 / highest score), the desirable ones for labelled data, or the only response
    when K = 1. ``per_example[b]`` is the mean over row b's targets; rows without one are masked.
    With ``s_aligned = s_ref`` it is the chosen half of dpo, ``−logσ(β·ρ(w))``.

    Metrics: ``rewards/chosen`` (``β·(s − s_aligned)``), ``rewards/accuracy`` (fraction with
    s > s_aligned), ``logps/chosen``, ``logps/aligned``; there is no rejected response.
    """
    check_positive(beta=beta)
    target = sft_targets(stats)
    mask = target.any(dim=1)
    tf = target.to(stats.logps.dtype)
    zero = torch.zeros_like(stats.logps)
    rho = torch.where(target, stats.logratios, zero)
    per_resp = -F.logsigmoid(beta * rho)
    count = tf.sum(1).clamp(min=1)
    per = (per_resp * tf).sum(1) / count
    per = torch.where(mask, per, torch.zeros_like(per))

    def row_mean(x: Tensor) -> Tensor:
        return (torch.where(target, x, zero) * tf).sum(1) / count

    metrics = pair_metrics(
        {
            "rewards/chosen": row_mean(beta * rho),
            "rewards/accuracy": row_mean((rho > 0).to(tf.dtype)),
            "logps/chosen": row_mean(stats.logps),
            "logps/aligned": row_mean(stats.ref_logps),
        },
        mask,
    )
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)
