"""PPO machinery (METHODS.md section 6), shared by every online-RL objective: per-token KL
estimators, whitening, GAE, PPO-style token rewards, the clipped importance-ratio surrogate and its
aggregations, and the ``ppo`` objective (clipped policy surrogate + clipped value loss).

Per-token inputs (``[B, K, T]``; see ``rl.py``'s module docstring): a token counts when
``token_mask`` and its slot's ``valid`` hold; every other entry (NaN allowed) is replaced by 0 before
any arithmetic, so it reaches neither the loss nor the gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats

KL_KINDS = ("k1", "k2", "k3")
LOSS_AGGS = ("token", "sequence", "sum", "sum_norm")


# ---------------------------------------------------------------- KL estimators
def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(πθ ‖ π_ref) from tokens sampled from πθ, elementwise.

    With ``log u = ref_logp − logp`` (u = π_ref/πθ): ``k1 = −log u``, ``k2 = ½(log u)²``,
    ``k3 = u − 1 − log u`` (as ``expm1(log u) − log u``: exact near 0, and ≥ 0). k1 and k3 are
    unbiased for the value of KL(πθ ‖ π_ref); k2 is biased (exact to second order).

    Gradients when used as a loss term (samples held fixed, y ~ πθ), in expectation:
    ``∇k1 = ∇logπθ`` → 0 (no signal, only noise); ``∇k2 = (logπθ − logπ_ref)∇logπθ`` →
    ∇KL(πθ ‖ π_ref), the unbiased gradient of the reverse KL; ``∇k3 = (1 − u)∇logπθ`` →
    ∇KL(π_ref ‖ πθ), the gradient of the *forward* KL. GRPO (DeepSeekMath) puts k3 in the loss:
    its value is an unbiased reverse-KL estimate, its gradient the forward KL's; both gradients
    vanish at πθ = π_ref and agree to first order near it. In the reward (no gradient), k1 is usual.
    """
    if kind not in KL_KINDS:
        raise ConfigError(f"kl must be one of {KL_KINDS}, got {kind!r}")
    log_u = ref_logp - logp
    if kind == "k1":
        return -log_u
    if kind == "k2":
        return 0.5 * log_u.square()
    return torch.expm1(log_u) - log_u


# ---------------------------------------------------------------- whitening, GAE, token rewards
def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x − mean) / sqrt(var + eps)`` over the entries where ``mask`` holds (unbiased variance, as
    TRL and verl); with ``shift_mean=False`` the mean is added back. 0 outside ``mask``."""
    mask = mask.bool()
    if mask.shape != x.shape:
        raise ValueError(f"mask must have x's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    x0 = torch.where(mask, x, torch.zeros_like(x))
    n = mask.sum().to(x.dtype)
    mean = x0.sum() / n.clamp(min=1)
    centred = torch.where(mask, x0 - mean, torch.zeros_like(x0))
    var = centred.square().sum() / (n - 1).clamp(min=1)
    out = centred * torch.rsqrt(var + eps)
    return out if shift_mean else torch.where(mask, out + mean, out)


def gae(
    rewards_t: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, https://arxiv.org/abs/1506.02438, right to left per sequence.

    ``δ_t = r_t + γ·V_{t'} − V_t`` and ``A_t = δ_t + γλ·A_{t'}``, where t' is the next token with
    ``mask`` (masked positions are skipped, so interior gaps such as tool output are bridged) and
    ``V``, ``A`` are 0 after the last one. ``returns = A + V``. Shapes ``[..., T]``; inputs are
    detached (advantages are targets, never differentiated); both outputs are 0 outside ``mask``.
    With γ = λ = 1, A_t is the Monte-Carlo return from t minus V_t.
    """
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ConfigError(f"gae needs gamma and lam in [0, 1], got gamma={gamma}, lam={lam}")
    mask = mask.bool()
    if not rewards_t.shape == values.shape == mask.shape:
        raise ValueError(
            f"gae needs rewards, values and mask of one shape, got {tuple(rewards_t.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    zero = torch.zeros_like(values)
    r = torch.where(mask, rewards_t.detach(), zero)
    v = torch.where(mask, values.detach(), zero)
    adv = torch.zeros_like(v)
    next_v, last = zero[..., 0], zero[..., 0]
    for t in range(v.shape[-1] - 1, -1, -1):
        m = mask[..., t]
        a_t = r[..., t] + gamma * next_v - v[..., t] + gamma * lam * last
        last = torch.where(m, a_t, last)
        next_v = torch.where(m, v[..., t], next_v)
        adv[..., t] = torch.where(m, a_t, zero[..., 0])
    return adv, torch.where(mask, adv + v, zero)


def token_rewards(score: Tensor, kl_per_token: Tensor, mask: Tensor, beta: float) -> Tensor:
    """PPO-style per-token reward (InstructGPT, https://arxiv.org/abs/2203.02155): ``−β·kl_t`` at every
    token with ``mask``, plus the sequence ``score`` at the last such token; 0 elsewhere.

    ``score`` [N] (or any ``[...]``), ``kl_per_token`` and ``mask`` [N, T] (``[..., T]``); e.g.
    ``kl_per_token = kl_estimate(logp, ref_logp, "k1")`` of the sampled tokens. A sequence without
    a valid token gets no reward. Returns [N, T].
    """
    if not beta >= 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    mask = mask.bool()
    if kl_per_token.shape != mask.shape or score.shape != mask.shape[:-1]:
        raise ValueError(
            f"token_rewards needs kl_per_token and mask [..., T] and score [...]: got "
            f"{tuple(kl_per_token.shape)}, {tuple(mask.shape)}, {tuple(score.shape)}"
        )
    r = torch.where(mask, -beta * kl_per_token, torch.zeros_like(kl_per_token))
    last = mask & (mask.flip(-1).cumsum(-1).flip(-1) == 1)
    return r + torch.where(last, score[..., None].to(r.dtype), torch.zeros_like(r))


# ---------------------------------------------------------------- the clipped policy surrogate
class Tokens(NamedTuple):
    mask: Tensor  # [B, K, T] bool: counted tokens (token_mask and the slot's valid)
    logp: Tensor  # [B, K, T] current log-probs, 0 elsewhere
    old: Tensor  # [B, K, T] behaviour log-probs (detached), 0 elsewhere
    weights: Tensor  # [B] record weights (1 by default)

    def zero(self, x: Tensor) -> Tensor:
        return torch.where(self.mask, x, torch.zeros_like(x))

    def mean(self, x: Tensor) -> float:
        """Unweighted mean of ``x`` [B, K, T] over counted tokens, as a float (metrics)."""
        return float(self.zero(x.detach()).sum() / self.mask.sum().clamp(min=1))


def rollout_tokens(stats: SequenceStats, name: str, needs_old: bool = True) -> Tokens:
    """Check and mask the per-token inputs of a rollout objective (``old`` is 0 without ``needs_old``)."""
    lp, tm = stats.token_logps, stats.token_mask
    if lp is None or tm is None or lp.dim() != 3 or tm.shape != lp.shape:
        raise ValueError(
            f"objective '{name}' needs token_logps and token_mask [B, K, T] (the executor provides them)"
        )
    old = stats.extra.get("old_token_logps") if needs_old else torch.zeros_like(lp)
    if old is None or old.shape != lp.shape:
        raise ValueError(
            f"objective '{name}' needs extra['old_token_logps'] {tuple(lp.shape)}: the sampling policy's "
            f"token log-probs, recorded by the rollout recipe"
            + ("" if old is None else f" (got {tuple(old.shape)})")
        )
    lp = lp.to(torch.promote_types(lp.dtype, torch.float32))  # ratios in bf16 would be 1 ± 0.008 at best
    mask = tm.bool() & stats.valid[..., None]
    zero = torch.zeros_like(lp)
    w = torch.ones_like(lp[:, 0, 0]) if stats.weights is None else stats.weights.to(lp.dtype)
    return Tokens(mask, torch.where(mask, lp, zero), torch.where(mask, old.detach().to(lp.dtype), zero), w)


def token_advantages(stats: SequenceStats, tok: Tokens, name: str) -> Tensor:
    """``extra["advantages"]`` ([B, K] or [B, K, T]) broadcast to [B, K, T], detached, 0 outside tokens."""
    adv = stats.extra.get("advantages")
    shape = tuple(tok.mask.shape)
    if adv is None or tuple(adv.shape) not in (shape[:2], shape):
        raise ValueError(
            f"objective '{name}' needs extra['advantages'] of shape {shape[:2]} or {shape}, computed by "
            f"the recipe with the estimator its method registers (alignkit.algorithms.policy_gradient)"
            + ("" if adv is None else f"; got {tuple(adv.shape)}")
        )
    adv = adv.detach().to(tok.logp.dtype)
    return tok.zero(adv[..., None].expand(shape) if adv.dim() == 2 else adv)


def clipped_surrogate(
    tok: Tokens, adv: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, dict[str, float]]:
    """Per-token ``−min(ratio·A, clip(ratio, 1 − clip_low, 1 + clip_high)·A)``, ratio = exp(logp − old)."""
    log_ratio = tok.logp - tok.old
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = tok.zero(-torch.minimum(ratio * adv, clipped * adv))
    low = (ratio < 1 - clip_low) & (adv < 0)
    high = (ratio > 1 + clip_high) & (adv > 0)
    metrics = {
        "clip_fraction/low": tok.mean(low.to(ratio.dtype)),
        "clip_fraction/high": tok.mean(high.to(ratio.dtype)),
        "clip_fraction": tok.mean((low | high).to(ratio.dtype)),
        "approx_kl": tok.mean(kl_estimate(tok.old, tok.logp, "k3")),  # KL(π_old ‖ πθ), tokens of π_old
        "ratio/mean": tok.mean(ratio),
    }
    return loss, metrics


def aggregate(tok: Tokens, loss_t: Tensor, loss_agg: str, norm_len: int = 0) -> tuple[Tensor, Tensor]:
    """Reduce per-token losses [B, K, T] to (loss, per_example [B]); record weights multiply rows.

    ``token``: ``Σ w·ℓ / Σ w`` over all counted tokens of the batch. ``sequence``: each sequence's
    token mean, then the weighted mean over sequences. ``sum``: each sequence's token sum, then the
    mean over sequences. ``sum_norm``: token sum / L, then the mean over sequences, with
    L = ``norm_len`` or, when 0, the longest sequence of this batch (in counted tokens).
    """
    m = tok.mask.to(loss_t.dtype)
    n_seq = m.sum(-1)  # [B, K]
    has = n_seq > 0
    loss_t = tok.zero(loss_t)
    if loss_agg == "token":
        rows = m.sum((1, 2))
        per = loss_t.sum((1, 2)) / rows.clamp(min=1)
        wt = tok.weights * rows
        loss = (per * wt).sum() / wt.sum().clamp(min=torch.finfo(m.dtype).tiny)
        return loss, per
    if loss_agg == "sequence":
        div = n_seq.clamp(min=1)
    elif loss_agg == "sum":
        div = torch.ones_like(n_seq)
    else:
        div = torch.full_like(n_seq, float(norm_len) if norm_len else max(float(n_seq.max()), 1.0))
    seq = torch.where(has, loss_t.sum(-1) / div, torch.zeros_like(div))
    count = has.to(m.dtype).sum(1)
    per = seq.sum(1) / count.clamp(min=1)
    wt = tok.weights * count
    return (per * wt).sum() / wt.sum().clamp(min=torch.finfo(m.dtype).tiny), per


def check_policy_hparams(
    clip_low: float, clip_high: float, beta: float, kl: str, loss_agg: str, norm_len: int
) -> None:
    if not 0 <= clip_low <= 1:
        raise ConfigError(
            f"hyper-parameter clip_low must be in [0, 1] (ratio floor 1 − clip_low), got {clip_low}"
        )
    if not clip_high >= 0:
        raise ConfigError(f"hyper-parameter clip_high must be >= 0 (inf: no upper clip), got {clip_high}")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ConfigError(f"hyper-parameter beta must be finite and >= 0, got {beta}")
    if kl not in KL_KINDS:
        raise ConfigError(f"hyper-parameter kl must be one of {KL_KINDS}, got {kl!r}")
    if loss_agg not in LOSS_AGGS:
        raise ConfigError(f"hyper-parameter loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    if isinstance(norm_len, bool) or not isinstance(norm_len, int) or norm_len < 0:
        raise ConfigError(
            f"hyper-parameter norm_len must be an integer >= 0 (0: the batch's longest), got {norm_len!r}"
        )
    if norm_len and loss_agg != "sum_norm":
        raise ConfigError(f"hyper-parameter norm_len applies only to loss_agg='sum_norm', not {loss_agg!r}")


def policy_loss(
    stats: SequenceStats,
    name: str,
    beta: float,
    clip_low: float,
    clip_high: float,
    kl: str,
    loss_agg: str,
    norm_len: int,
) -> LossOutput:
    """The clipped surrogate plus ``β·k(t)`` to the reference, aggregated by ``loss_agg``."""
    check_policy_hparams(clip_low, clip_high, beta, kl, loss_agg, norm_len)
    tok = rollout_tokens(stats, name)
    loss_t, metrics = clipped_surrogate(tok, token_advantages(stats, tok, name), clip_low, clip_high)
    ref = stats.extra.get("ref_token_logps")
    if beta > 0 and ref is None:
        raise ConfigError(
            f"objective '{name}' with beta > 0 needs extra['ref_token_logps'] (a reference model)"
        )
    if ref is not None and ref.shape != tok.mask.shape:
        raise ValueError(f"extra['ref_token_logps'] must be {tuple(tok.mask.shape)}, got {tuple(ref.shape)}")
    if ref is not None:
        k = kl_estimate(tok.logp, tok.zero(ref.detach().to(tok.logp.dtype)), kl)
        metrics["kl"] = tok.mean(k)
        if beta > 0:
            loss_t = loss_t + beta * tok.zero(k)
    loss, per = aggregate(tok, loss_t, loss_agg, norm_len)
    metrics["tokens"] = float(tok.mask.sum())
    return LossOutput(loss, per, metrics)


def _value_inputs(stats: SequenceStats, tok: Tokens) -> tuple[Tensor, Tensor, Tensor]:
    """(values with grad, old values, returns) [B, K, T], 0 outside counted tokens."""
    got = {n: stats.extra.get(n) for n in ("values", "old_values", "returns")}
    bad = [n for n, t in got.items() if t is None or t.shape != tok.mask.shape]
    if bad:
        raise ValueError(
            f"objective 'ppo' needs extra {bad} of shape {tuple(tok.mask.shape)}: the value head's estimates "
            f"(with grad), those at sampling time, and the GAE returns (alignkit.objectives.rl_ppo.gae)"
        )
    v = tok.zero(got["values"].to(tok.logp.dtype))
    return v, tok.zero(got["old_values"].detach().to(v.dtype)), tok.zero(got["returns"].detach().to(v.dtype))


@register(
    "ppo",
    label_kinds=("scores",),
    inputs="rollout",
    needs_token_logps=True,
    extras=("advantages", "old_token_logps", "values", "old_values", "returns"),
)
def ppo(
    stats: SequenceStats, clip: float = 0.2, vf_coef: float = 0.1, cliprange_value: float = 0.2
) -> LossOutput:
    """PPO, https://arxiv.org/abs/1707.06347, as in RLHF (InstructGPT, https://arxiv.org/abs/2203.02155).

    Per counted token, with token-level advantages ``extra["advantages"]`` [B, K, T] (GAE over
    :func:`token_rewards`, usually whitened — both the recipe's): the clipped surrogate
    ``−min(ratio·A, clip(ratio, 1 ± clip)·A)`` plus ``vf_coef`` times the clipped value loss
    ``½·max((V − R)², (V_old + clip(V − V_old, ±cliprange_value) − R)²)``, with ``V =
    extra["values"]`` (current value head, with grad), ``V_old = extra["old_values"]`` and the returns
    ``R = extra["returns"]``. Both are averaged over all counted tokens of the batch (record-weighted
    token mean). The KL to the reference sits in the reward (:func:`token_rewards`), so this loss
    reads no reference model; the recipe computes the reference's log-probs for the reward. The online
    recipe (``alignkit.algorithms.ppo``: value model, ``kl_coef``, ``gamma``, ``gae_lambda``,
    ``whiten_advantages``) fills every extra; ``vf_coef`` and ``cliprange_value`` are set as ``hparams``.

    Metrics: ``pg_loss``, ``vf_loss``, ``vf_clipfrac`` (tokens whose clipped value term is the larger),
    ``clip_fraction`` (``/low``, ``/high``), ``approx_kl``, ``ratio/mean``, ``values/mean``, ``tokens``.
    """
    if not 0 <= clip <= 1:
        raise ConfigError(f"hyper-parameter clip must be in [0, 1], got {clip}")
    if not (vf_coef >= 0 and math.isfinite(vf_coef)):
        raise ConfigError(f"hyper-parameter vf_coef must be finite and >= 0, got {vf_coef}")
    if not cliprange_value >= 0:
        raise ConfigError(
            f"hyper-parameter cliprange_value must be >= 0 (inf: no value clipping), got {cliprange_value}"
        )
    tok = rollout_tokens(stats, "ppo")
    pg_t, metrics = clipped_surrogate(tok, token_advantages(stats, tok, "ppo"), clip, clip)
    v, v_old, ret = _value_inputs(stats, tok)
    v_clip = v_old + (v - v_old).clamp(-cliprange_value, cliprange_value)
    plain, clipped = (v - ret).square(), (v_clip - ret).square()
    vf_t = tok.zero(0.5 * torch.maximum(plain, clipped))
    loss, per = aggregate(tok, pg_t + vf_coef * vf_t, "token")
    metrics["pg_loss"] = float(aggregate(tok, pg_t, "token")[0].detach())
    metrics["vf_loss"] = float(aggregate(tok, vf_t, "token")[0].detach())
    metrics["vf_clipfrac"] = tok.mean((clipped > plain).to(v.dtype))
    metrics["values/mean"] = tok.mean(v)
    metrics["tokens"] = float(tok.mask.sum())
    return LossOutput(loss, per, metrics)
