"""Reward models with structured heads (METHODS.md section 5): a mixture of Bradley–Terry heads, the
General Preference Model, and process reward models. Conventions as in ``reward.py``: registered
with ``inputs="rewards"``, padded slots replaced by 0 before any arithmetic, masked rows out of the
record-weighted loss and the metrics.

``gpm_score`` and ``prm_outcome`` are pure functions for evaluation and ranking code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import pair_metrics
from alignkit.objectives.listwise import list_view
from alignkit.objectives.registry import register
from alignkit.objectives.reward import (
    PAIR,
    RM,
    check_count,
    gate_weights,
    list_metrics,
    masked_rewards,
    reward_output,
    reward_pair,
)
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

PRM_AGGREGATES = ("min", "product")


@register("mixture", extras=("gate",), reward_outputs="num_heads", **PAIR)
def mixture(stats: SequenceStats, num_heads: int = 2) -> LossOutput:
    """Mixture of Bradley–Terry heads with a prompt router (MiCRo), https://arxiv.org/abs/2505.24846.

    ``P(w ≻ l) = Σ_h α_h(x)·σ(r_h(w) − r_h(l))`` with H = ``num_heads`` reward heads
    ``rewards`` [B, 2, H] and the prompt gate ``α = extra['gate']`` [B, H] (a softmax, from the
    model); the loss is ``−log P``, computed as ``−logsumexp_h(log α_h + logσ(d_h))`` so it stays
    finite when every σ underflows. Heads with α_h = 0 drop out exactly (no 0·log 0). One head, or
    a one-hot gate, is :func:`~alignkit.objectives.reward.bt` on that head.

    Rewards (``rewards/chosen``, ``/rejected``, ``/margin``) are the gate-weighted ``Σ_h α_h r_h``;
    ``rewards/accuracy`` is the fraction of pairs with P(w ≻ l) > 1/2; ``prob`` the mean P;
    ``gate/head{h}`` the mean gate weight of each head (its usage).
    """
    check_count("num_heads", num_heads, 1)
    r = masked_rewards(stats, "mixture", num_heads, "num_heads")
    view, r_w, r_l = reward_pair(stats, r)  # [B, H]
    gate = gate_weights(stats, "mixture", num_heads, "num_heads")
    gate = torch.where(view.mask[:, None], gate, torch.ones_like(gate))
    used = gate > 0
    log_gate = torch.where(used, torch.log(torch.where(used, gate, torch.ones_like(gate))), -math.inf)
    log_p = torch.logsumexp(log_gate + F.logsigmoid(r_w - r_l), dim=-1)
    per = -log_p
    mix_w, mix_l = (gate * r_w).sum(-1), (gate * r_l).sum(-1)
    out = reward_output(stats, view, per, mix_w, mix_l, prob=log_p.exp())
    out.metrics["rewards/accuracy"] = pair_metrics({"a": (log_p > -math.log(2)).to(r.dtype)}, view.mask)["a"]
    out.metrics.update(pair_metrics({f"gate/head{h}": gate[:, h] for h in range(num_heads)}, view.mask))
    return out


def gpm_score(v_a: Tensor, v_b: Tensor, beta: float = 10.0, normalize: bool = True) -> Tensor:
    """GPM preference score ``s(a ≻ b) = β·⟨R v_a, v_b⟩`` over the last dimension (even, 2k).

    R is block-diagonal with k blocks ``[[0, −1], [1, 0]]`` (the paper's ``R^≻``), so per block
    ``⟨R v_a, v_b⟩ = a₀b₁ − a₁b₀``; ``P(a ≻ b) = σ(s)``. With ``normalize`` the embeddings are first
    L2-normalised (as the GPM code does, zero vectors stay 0). Exactly antisymmetric:
    ``s(a, b) = −s(b, a)`` and ``s(a, a) = 0`` bit for bit. Shapes ``[..., 2k]`` → ``[...]``.
    """
    if v_a.shape[-1] % 2 or v_a.shape[-1] != v_b.shape[-1]:
        raise ValueError(
            f"gpm_score needs embeddings of the same even length, got {v_a.shape[-1]} and {v_b.shape[-1]}"
        )
    if normalize:
        v_a, v_b = F.normalize(v_a, dim=-1), F.normalize(v_b, dim=-1)
    return beta * (v_a[..., 0::2] * v_b[..., 1::2] - v_a[..., 1::2] * v_b[..., 0::2]).sum(-1)


@register("gpm", reward_outputs="dim", **PAIR)
def gpm(stats: SequenceStats, dim: int = 4, beta: float = 10.0, normalize: bool = True) -> LossOutput:
    """General Preference Model, Zhang et al. 2024, https://arxiv.org/abs/2410.02197.

    Each response is embedded as ``v(y) = rewards`` [B, 2, dim] (dim = 2k even) and the pair is
    scored by the skew-symmetric form of :func:`gpm_score`, ``s(w, l) = β·⟨R v̂(w), v̂(l)⟩`` with
    ``v̂ = v/‖v‖`` when ``normalize`` (the paper's released model and loss: R with ``R[2i, 2i+1] = −1``,
    ``R[2i+1, 2i] = 1``, L2-normalised embeddings, ``s/τ`` with τ = 0.1, i.e. β = 10 here). The loss
    is ``−logσ(s(w, l))``. Because ``s(a, b) = −s(b, a)``, ``P(a ≻ b) + P(b ≻ a) = 1``, and unlike a
    scalar reward it can fit intransitive (cyclic) preferences. With normalised embeddings
    ``|s| ≤ β``, so β caps the confidence. The paper's optional prompt-dependent scale of each block
    (its "eigenvalue scale gate") is not implemented.

    Args:
        dim: embedding size 2k (even, ≥ 2): the head's number of outputs.
        beta: β > 0 (1/τ of the paper's code).
        normalize: L2-normalise the embeddings first.

    Metrics: ``rewards/margin`` is the mean score s(w, l), ``rewards/accuracy`` the fraction with
    s > 0, ``prob`` the mean σ(s); there is no scalar reward, so no chosen/rejected.
    """
    check_count("dim", dim, 2)
    if dim % 2:
        raise ConfigError(f"hyper-parameter dim must be even (GPM embeds in 2x2 blocks), got {dim}")
    if not beta > 0:
        raise ConfigError(f"hyper-parameter beta must be > 0, got {beta}")
    view, v_w, v_l = reward_pair(stats, masked_rewards(stats, "gpm", dim, "dim"))
    s = gpm_score(v_w, v_l, beta, normalize)  # 0 on masked rows, whose embeddings are 0
    per = torch.where(view.mask, -F.logsigmoid(s), torch.zeros_like(s))
    metrics = pair_metrics(
        {"rewards/margin": s, "rewards/accuracy": (s > 0).to(s.dtype), "prob": torch.sigmoid(s)}, view.mask
    )
    return LossOutput(weighted_mean(per, stats, view.mask), per, metrics)


def prm_outcome(step_logits: Tensor, step_mask: Tensor, aggregate: str = "min") -> Tensor:
    """Outcome score of each response from its step logits ``[..., S]`` → ``[...]``, in [0, 1].

    ``min``: the smallest step probability ``min_t σ(x_t)`` (a chain is as good as its worst step,
    Math-Shepherd, https://arxiv.org/abs/2312.08935); ``product``: ``Π_t σ(x_t)``, the probability
    that every step is correct (PRM800K, https://arxiv.org/abs/2305.20050), computed as
    ``exp(Σ logσ)``. Only steps in ``step_mask`` count (NaN elsewhere is ignored); a response with
    no step scores 1 for both (the empty min / product).
    """
    if aggregate not in PRM_AGGREGATES:
        raise ConfigError(f"prm aggregate must be one of {PRM_AGGREGATES}, got {aggregate!r}")
    mask = step_mask.bool()
    if aggregate == "min":
        return torch.sigmoid(torch.where(mask, step_logits, math.inf).amin(-1))
    x = torch.where(mask, step_logits, torch.zeros_like(step_logits))
    return torch.where(mask, F.logsigmoid(x), torch.zeros_like(x)).sum(-1).exp()


def _prm_inputs(stats: SequenceStats) -> tuple[Tensor, Tensor, Tensor]:
    missing = [k for k in ("step_mask", "step_labels") if k not in stats.extra]
    if missing:
        raise ValueError(f"prm needs extra {missing}: [B, K, S] steps of each response and their labels")
    logits = stats.rewards
    if logits is None or logits.dim() != 3:
        got = None if logits is None else tuple(logits.shape)
        raise ValueError(f"prm needs per-step logits rewards [B, K, S], got {got}")
    mask, labels = stats.extra["step_mask"], stats.extra["step_labels"]
    for k, t in (("step_mask", mask), ("step_labels", labels)):
        if t.shape != logits.shape:
            raise ValueError(
                f"prm needs extra['{k}'] shaped like rewards {tuple(logits.shape)}, got {tuple(t.shape)}"
            )
    obs = mask.bool() & stats.valid[..., None]
    y = torch.where(obs, labels.to(logits.dtype), torch.zeros_like(logits))
    if ((y < 0) | (y > 1)).any():
        raise DataError("prm step_labels must be in [0, 1] (1.0 good step, 0.0 bad step)")
    return torch.where(obs, logits, torch.zeros_like(logits)), y, obs


@register("prm", **RM, label_kinds=("labels", "ranks", "scores"), extras=("step_mask", "step_labels"))
def prm(stats: SequenceStats, aggregate: str = "min") -> LossOutput:
    """Process reward model: per-step binary cross-entropy (PRM800K), https://arxiv.org/abs/2305.20050.

    ``rewards`` [B, K, S] holds a logit at the end token of each of up to S steps of each response,
    ``extra['step_mask']`` which steps exist and ``extra['step_labels']`` their labels (1.0 good,
    0.0 bad; soft labels in [0, 1], e.g. Math-Shepherd's rollout estimates, are fine). The loss of a
    record is the mean over its steps of ``BCE(σ(x_t), y_t)``; records without steps are masked.
    The step labels carry the supervision: a record's own ranks, scores or labels only feed metrics.

    ``aggregate`` (``min`` or ``product``) turns step probabilities into an outcome score per
    response (:func:`prm_outcome`), used for ranking and the metrics: ``steps/accuracy`` (fraction of
    steps with ``x_t > 0`` exactly when ``y_t > 1/2``), ``outcome/mean``, ``rewards/*`` over the
    ordered pairs of responses when the records carry ranks or scalar scores, ``outcome/accuracy``
    (outcome > 1/2 exactly when the label is 1) when they carry labels.
    """
    if aggregate not in PRM_AGGREGATES:
        raise ConfigError(f"prm aggregate must be one of {PRM_AGGREGATES}, got {aggregate!r}")
    x, y, obs = _prm_inputs(stats)
    bce = torch.where(obs, F.binary_cross_entropy_with_logits(x, y, reduction="none"), torch.zeros_like(x))
    n = obs.to(x.dtype).sum((1, 2))
    mask = n > 0
    per = torch.where(mask, bce.sum((1, 2)) / n.clamp(min=1), torch.zeros_like(n))
    xd = x.detach()
    metrics: dict[str, float] = {}
    total = obs.sum()
    if total > 0:
        metrics["steps/accuracy"] = float((obs & ((xd > 0) == (y > 0.5))).sum() / total)
    has = obs.any(-1)  # [B, K] responses with at least one step
    outcome = torch.where(has, prm_outcome(xd, obs, aggregate), torch.zeros_like(n)[:, None])
    if has.any():
        metrics["outcome/mean"] = float(outcome.sum() / has.sum())
    if stats.ranks is not None or (stats.scores is not None and stats.scores.dim() == 2):
        lst = list_view(stats, "prm")
        lst = lst._replace(better=lst.better & has[:, :, None] & has[:, None, :])
        lst = lst._replace(mask=lst.better.flatten(1).any(1))
        if lst.mask.any():
            metrics.update(list_metrics(lst, outcome))
    elif stats.labels is not None and has.any():
        right = has & ((outcome > 0.5) == (stats.labels > 0.5))
        metrics["outcome/accuracy"] = float(right.sum() / has.sum())
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)
