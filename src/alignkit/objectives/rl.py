"""Online RL (METHODS.md section 6): advantage estimators and the critic-free objectives grpo, dr_grpo,
rloo, remax and reinforce_pp (one clipped surrogate, their advantage estimators), raft (best-of-K SFT) and
copg (contrastive policy gradient, on scored samples of any policy).
The PPO machinery they share — per-token KL estimators, the clipped surrogate, aggregation, GAE,
whitening, token rewards — and the ``ppo`` objective live in ``rl_ppo.py`` (importing this module
registers both) and are re-exported here.

Rollout objectives are registered with ``inputs="rollout"`` and read per-token statistics:
``stats.token_logps`` [B, K, T] (current policy, with grad), ``stats.token_mask`` [B, K, T],
``stats.extra["old_token_logps"]`` [B, K, T] (the behaviour policy at sampling time; detached here),
``stats.extra["advantages"]`` [B, K] (one per sample) or [B, K, T] (per token) and, for the KL
term, ``stats.extra["ref_token_logps"]`` [B, K, T]. A token counts when ``token_mask`` and its
slot's ``valid`` hold; every other entry (NaN allowed) is replaced by 0 before any arithmetic, so
it reaches neither the loss nor the gradient. The policy-gradient recipe (`alignkit.algorithms.policy_gradient`)
computes ``advantages`` from the samples' rewards [B, K] with the estimator each method registers there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.rl_ppo import (
    KL_KINDS,
    LOSS_AGGS,
    aggregate,
    check_policy_hparams,
    clipped_surrogate,
    gae,
    kl_estimate,
    policy_loss,
    rollout_tokens,
    token_advantages,
    token_rewards,
    whiten,
)
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

__all__ = [
    "KL_KINDS",
    "LOSS_AGGS",
    "aggregate",
    "check_policy_hparams",
    "clipped_surrogate",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "policy_loss",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "rollout_tokens",
    "token_advantages",
    "token_rewards",
    "whiten",
]


# ---------------------------------------------------------------- advantage estimators
def _valid(r: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """``r`` [B, K] with 0 outside ``valid`` (default: all), and ``valid`` as bool."""
    if r.dim() != 2:
        raise ValueError(f"rewards must be [B, K] (K samples per prompt), got shape {tuple(r.shape)}")
    valid = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool()
    if valid.shape != r.shape:
        raise ValueError(f"valid must have the rewards' shape {tuple(r.shape)}, got {tuple(valid.shape)}")
    return torch.where(valid, r, torch.zeros_like(r)), valid


def _group_mean(r: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(mean over each row's valid entries [B, 1], their count [B, 1]); r is 0 outside valid."""
    n = valid.sum(1, keepdim=True).to(r.dtype)
    return r.sum(1, keepdim=True) / n.clamp(min=1), n


def grpo_advantages(r: Tensor, valid: Tensor | None = None, scale: str = "std", eps: float = 1e-6) -> Tensor:
    """GRPO, https://arxiv.org/abs/2402.03300: ``A_i = (r_i − mean(r)) / (std(r) + eps)`` per group.

    ``r`` [B, K]: K samples of each of B prompts; ``valid`` [B, K] marks real samples (ragged groups).
    std is the unbiased (n − 1) standard deviation over the group's valid samples, as TRL and verl.
    ``scale="none"`` skips the division (Dr. GRPO, https://arxiv.org/abs/2503.20783). A group with a
    single valid sample has no baseline and gets 0; padded entries get 0. Returns [B, K].
    """
    if scale not in ("std", "none"):
        raise ConfigError(f"grpo_advantages scale must be 'std' or 'none', got {scale!r}")
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps}")
    r, valid = _valid(r, valid)
    mean, n = _group_mean(r, valid)
    centred = torch.where(valid & (n > 1), r - mean, torch.zeros_like(r))
    if scale == "none":
        return centred
    std = (centred.square().sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    return centred / (std + eps)


def rloo_advantages(r: Tensor, valid: Tensor | None = None) -> Tensor:
    """RLOO, https://arxiv.org/abs/2402.14740: ``A_i = r_i − mean_{j≠i} r_j`` over the group's valid
    samples, i.e. ``n/(n − 1)·(r_i − mean r)``; sums to 0 per group. Groups of one sample and padded
    entries get 0. ``r``, ``valid`` [B, K]; returns [B, K]."""
    r, valid = _valid(r, valid)
    mean, n = _group_mean(r, valid)
    loo = n / (n - 1).clamp(min=1) * (r - mean)
    return torch.where(valid & (n > 1), loo, torch.zeros_like(r))


def remax_advantages(r: Tensor, greedy_reward: Tensor, valid: Tensor | None = None) -> Tensor:
    """ReMax, https://arxiv.org/abs/2310.10505: ``A = r − r_greedy``, the baseline being the reward
    of the greedy response to the same prompt. ``r`` [B, K], ``greedy_reward`` [B]; returns [B, K]."""
    r, valid = _valid(r, valid)
    if greedy_reward.shape != r.shape[:1]:
        raise ValueError(f"greedy_reward must be [B]={r.shape[0]}, got {tuple(greedy_reward.shape)}")
    return torch.where(valid, r - greedy_reward[:, None].to(r.dtype), torch.zeros_like(r))


def reinforce_pp_advantages(r: Tensor, valid: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ with baseline, https://arxiv.org/abs/2501.03262 (global advantage normalisation).

    ``A' = r − mean_group(r)``, then ``A = (A' − mean_batch A') / (std_batch A' + eps)`` with the
    mean and unbiased std over every valid sample of the batch (not per group: the paper's point).
    A group with one valid sample has no group baseline and keeps ``A' = r`` (so with K = 1
    everywhere this is plain REINFORCE++: the batch-whitened reward). Sample-level statistics (each
    sample counts once; verl whitens over tokens, weighting long samples more). Padded entries get 0.
    """
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps}")
    r, valid = _valid(r, valid)
    mean, n = _group_mean(r, valid)
    a = torch.where(valid, torch.where(n > 1, r - mean, r), torch.zeros_like(r))
    m = valid.to(r.dtype)
    count = m.sum()
    centred = torch.where(valid, a - a.sum() / count.clamp(min=1), torch.zeros_like(a))
    std = (centred.square().sum() / (count - 1).clamp(min=1)).sqrt()
    return centred / (std + eps)


ROLLOUT = {
    "label_kinds": ("scores",),
    "inputs": "rollout",
    "needs_token_logps": True,
    "extras": ("advantages", "old_token_logps"),
}


@register("grpo", needs_reference=True, **ROLLOUT)
def grpo(
    stats: SequenceStats,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: str = "k3",
    loss_agg: str = "token",
    norm_len: int = 0,
) -> LossOutput:
    """Group Relative Policy Optimization, https://arxiv.org/abs/2402.03300 (advantages:
    :func:`grpo_advantages`).

    Per counted token: ``−min(ratio·A, clip(ratio, 1 − clip_low, 1 + clip_high)·A) + β·k(t)``,
    ``ratio = exp(logp − old_logp)``, ``k`` the per-token estimator ``kl`` of KL(πθ ‖ π_ref)
    (:func:`kl_estimate`; the paper: k3 with β = 0.04). ``clip_high > clip_low`` is DAPO's clip-higher.
    Aggregation ``loss_agg`` (:func:`aggregate`): ``token`` (DAPO / Dr. GRPO's token mean,
    default), ``sequence`` (the paper: token mean per sample, then over samples), ``sum``,
    ``sum_norm`` (Dr. GRPO: token sum / ``norm_len``; set it to the generation budget, 0 takes the
    batch's longest sample). At the first on-policy step (ratio = 1) the gradient in each token's
    log-prob is ``−A/norm``, REINFORCE with these advantages. Registered with a reference, which is
    read only when β > 0 (and logged as metric ``kl`` whenever present).

    Metrics: ``clip_fraction/low`` (A < 0, ratio < 1 − clip_low), ``clip_fraction/high`` (A > 0,
    ratio > 1 + clip_high), ``clip_fraction``, ``approx_kl`` (mean k3 of KL(π_old ‖ πθ)),
    ``ratio/mean``, ``kl``, ``tokens``.
    """
    return policy_loss(stats, "grpo", beta, clip_low, clip_high, kl, loss_agg, norm_len)


@register("dr_grpo", needs_reference=True, **ROLLOUT)
def dr_grpo(
    stats: SequenceStats,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: str = "k3",
    loss_agg: str = "sum_norm",
    norm_len: int = 0,
) -> LossOutput:
    """Dr. GRPO (GRPO done right), https://arxiv.org/abs/2503.20783 (advantages: :func:`grpo_advantages`
    with ``scale="none"``, ``A_i = r_i − mean(r)``: no division by the group's std).

    :func:`grpo`'s loss with the paper's unbiased aggregation: each sample's token sum divided by one constant
    (``loss_agg="sum_norm"``: ``norm_len``, the generation budget; 0 takes the batch's longest sample), so
    neither the response length nor the question's reward spread rescales a sample's gradient.
    """
    return policy_loss(stats, "dr_grpo", beta, clip_low, clip_high, kl, loss_agg, norm_len)


@register("rloo", needs_reference=True, **ROLLOUT)
def rloo(
    stats: SequenceStats,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: str = "k3",
    loss_agg: str = "sum",
    norm_len: int = 0,
) -> LossOutput:
    """REINFORCE leave-one-out, https://arxiv.org/abs/2402.14740 (advantages: :func:`rloo_advantages`).

    :func:`grpo`'s loss. Paper defaults: the whole sample is one action, ``−A·Σ_t logπ`` per sample
    (``loss_agg="sum"``), on-policy, so the clip is inactive at ratio = 1 (it bounds later updates on
    the same batch); the paper's KL is in the reward (``r − β·Σ_t k1``, the recipe's), ``beta`` here
    adds it to the loss instead.
    """
    return policy_loss(stats, "rloo", beta, clip_low, clip_high, kl, loss_agg, norm_len)


@register("remax", needs_reference=True, **ROLLOUT)
def remax(
    stats: SequenceStats,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: str = "k3",
    loss_agg: str = "sum",
    norm_len: int = 0,
) -> LossOutput:
    """ReMax, https://arxiv.org/abs/2310.10505 (advantages: :func:`remax_advantages`, greedy baseline).

    :func:`grpo`'s loss; paper defaults as :func:`rloo` (sequence-level REINFORCE, on-policy, KL in
    the reward — ``beta`` puts it in the loss instead).
    """
    return policy_loss(stats, "remax", beta, clip_low, clip_high, kl, loss_agg, norm_len)


@register("reinforce_pp", needs_reference=True, **ROLLOUT)
def reinforce_pp(
    stats: SequenceStats,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: str = "k3",
    loss_agg: str = "token",
    norm_len: int = 0,
) -> LossOutput:
    """REINFORCE++, https://arxiv.org/abs/2501.03262 (advantages: :func:`reinforce_pp_advantages`).

    :func:`grpo`'s loss: the paper's PPO clip (0.2) and token-mean aggregation. The paper puts a
    token-level KL in the reward; for uniformity ``beta`` puts it in the loss (k3 by default), and a
    sequence-level penalty ``r − β·Σ_t k1`` can be applied by the recipe before the advantages.
    """
    return policy_loss(stats, "reinforce_pp", beta, clip_low, clip_high, kl, loss_agg, norm_len)


def sample_rewards(stats: SequenceStats, name: str = "raft") -> Tensor:
    """The samples' scalar rewards [B, K]: ``stats.rewards``, else ``stats.scores``."""
    for r in (stats.rewards, stats.scores):
        if r is not None and r.dim() == 2:
            return r
    raise ValueError(f"objective '{name}' needs one reward per sample, [B, K] (stats.rewards or scalar scores)")


@register("raft", label_kinds=("scores",), inputs="rollout", needs_token_logps=True)
def raft(stats: SequenceStats) -> LossOutput:
    """RAFT (reward-ranked fine-tuning, best-of-K SFT), https://arxiv.org/abs/2304.06767.

    In each group, the sample(s) with the highest reward (all of them on a tie; NaN rewards and padded
    slots never win) are SFT targets: ``loss = Σ_b w_b·Σ(−logp) / Σ_b w_b·tokens_b`` over their
    counted tokens (the record-weighted token mean; ``per_example`` is each row's token mean). Reads
    rewards (``stats.rewards`` [B, K], else scalar ``scores``), not advantages; no old log-probs.

    Metrics: ``nll`` (token mean over targets), ``reward/best`` (mean best reward over rows),
    ``targets`` (number of target samples), ``tokens``.
    """
    tok = rollout_tokens(stats, "raft", needs_old=False)
    r = sample_rewards(stats).to(tok.logp.dtype)
    ok = stats.valid & ~torch.isnan(r)
    rk = torch.where(ok, r, torch.full_like(r, -math.inf))
    top = rk.amax(1, keepdim=True)
    best = ok & (rk == top)
    mask = tok.mask & best[..., None]
    nll_t = torch.where(mask, -tok.logp, torch.zeros_like(tok.logp))
    tokens, nll = mask.sum((1, 2)).to(nll_t.dtype), nll_t.sum((1, 2))
    rows = tokens > 0
    per = torch.where(rows, nll / tokens.clamp(min=1), torch.zeros_like(nll))
    w = tok.weights * rows
    loss = (nll * w).sum() / (tokens * w).sum().clamp(min=torch.finfo(nll.dtype).tiny)
    best_r = torch.where(rows, top[:, 0], torch.zeros_like(nll))
    metrics = {
        "nll": float(nll.detach().sum() / tokens.sum().clamp(min=1)),
        "reward/best": float(best_r.detach().sum() / rows.sum().clamp(min=1)),
        "targets": float((best & mask.any(-1)).sum()),
        "tokens": float(tokens.sum()),
    }
    return LossOutput(loss, per, metrics)


@register("copg", label_kinds=("scores",), needs_reference=True, min_responses=2)
def copg(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Contrastive Policy Gradient (CoPG), Flet-Berliac et al. 2024, https://arxiv.org/abs/2406.19185.

    With the regularised reward ``R̂(y) = r(y) − β·ρ(y)`` (ρ the sequence log-ratio to the reference), the
    paper's loss for two responses of one prompt is ``(R̂(y) − R̂(y'))²``: no importance ratio, so the
    responses may come from any policy (scored offline data, or fresh samples online). Per record, over
    the ordered pairs of its n counted responses (rewards: ``stats.rewards`` [B, K], else scalar
    ``scores``; padded slots and NaN rewards masked), scaled by 1/(4β)::

        L = 1/(4β·n(n − 1)) · Σ_{i≠j} (r_i − r_j − β(ρ_i − ρ_j))²

    records weight-averaged. Its gradient in ρ_i is ``−Â_i/n`` with ``Â_i = R̂_i − mean_{j≠i} R̂_j``, the
    leave-one-out advantage of the regularised rewards: on samples of πθ it is exactly the gradient of
    ``rloo`` (``loss_agg="sum"``) with the KL ``β·ρ`` in the reward — RLOO's own at πθ = π_ref. It
    vanishes at ``πθ ∝ π_ref·exp(r/β)``, the KL-regularised optimum; for a pair with r_w − r_l = ½ it is
    IPO's loss with τ = β, times β/4.

    Args:
        beta: β > 0, the KL regularisation (the temperature of the optimum).

    Metrics: ``reward/regularised`` (mean R̂), ``logratio/mean`` (mean ρ), ``pairs`` (ordered pairs).
    """
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"copg hyper-parameter beta must be finite and > 0, got {beta}")
    rho = stats.logratios
    r = sample_rewards(stats, "copg").detach().to(rho.dtype)
    ok = stats.valid & ~torch.isnan(r)
    zero = torch.zeros_like(rho)
    r_hat = torch.where(ok, r, zero) - beta * torch.where(ok, rho, zero)
    eye = torch.eye(ok.shape[1], dtype=torch.bool, device=ok.device)
    pairs = ok[:, :, None] & ok[:, None, :] & ~eye
    diff = r_hat[:, :, None] - r_hat[:, None, :]
    n = ok.sum(1).to(rho.dtype)
    per = torch.where(pairs, diff.square(), torch.zeros_like(diff)).sum((1, 2)) / (4 * beta * (n * (n - 1)).clamp(min=1))
    rows = n >= 2
    count = ok.sum().clamp(min=1)
    metrics = {"reward/regularised": float(torch.where(ok, r_hat.detach(), zero).sum() / count),
               "logratio/mean": float(torch.where(ok, rho.detach(), zero).sum() / count),
               "pairs": float(pairs.sum())}
    return LossOutput(weighted_mean(per, stats, rows), per, metrics)
