"""Reward-model objectives (METHODS.md section 5): pure losses over a reward model's head outputs.

Every objective here is registered with ``inputs="rewards"``: it reads ``stats.rewards`` (the head
read at each response's last completion token), never log-probs, and needs no reference.
``rewards`` is ``[B, K]`` for one head (``[B, K, 1]`` is accepted too) or ``[B, K, m]`` for m
outputs. Padded slots (``valid == False``) are replaced by 0 before any arithmetic, so NaN there
never reaches the loss or gradient. Pair objectives take K = 2 with the chosen column from ranks or
scalar scores; rows that tie or hold a padded slot are masked (``per_example`` 0, left out of
``loss = weighted_mean(per_example)``, record-weighted, and of the metrics).

Metrics (means over counted rows): ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``
``r(w) − r(l)`` and ``rewards/accuracy`` (fraction of pairs with ``r(w) > r(l)``).
Structured heads (mixture, GPM, process reward models) live in ``reward_structured.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import PairView, pair_gap, pair_metrics, pair_view, reward_metrics
from alignkit.objectives.listwise import ListView, list_view, plackett_luce_nll
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

RM = {"inputs": "rewards", "needs_reference": False}
PAIR = {**RM, "label_kinds": ("ranks", "scores"), "min_responses": 2, "max_responses": 2}


# ---------------------------------------------------------------- shared helpers
def _finite(**kw: float) -> None:
    for k, v in kw.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"hyper-parameter {k} must be a finite number >= 0, got {v!r}")


def check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"hyper-parameter {name} must be an integer >= {low}, got {value!r}")
    return value


def masked_rewards(stats: SequenceStats, name: str, m: int | None = None, hp: str = "dim") -> Tensor:
    """``stats.rewards`` with 0 in padded slots: [B, K] when ``m`` is None, else [B, K, m].

    ``m = 0`` accepts any number of outputs; ``m > 0`` must match the head (named by ``hp``).
    """
    r = stats.rewards
    if r is None:
        raise ValueError(
            f"objective '{name}' trains a reward model and reads stats.rewards, which is None "
            "(it cannot train a policy from log-probs)"
        )
    if m is None:
        if r.dim() == 3 and r.shape[-1] == 1:
            r = r.squeeze(-1)
        if r.dim() != 2:
            raise ValueError(f"objective '{name}' needs one reward per response [B, K], got {tuple(r.shape)}")
        return torch.where(stats.valid, r, torch.zeros_like(r))
    if r.dim() == 2:
        r = r.unsqueeze(-1)
    if m and r.shape[-1] != m:
        raise ConfigError(
            f"objective '{name}' with {hp}={m} needs rewards [B, K, {m}], got {tuple(r.shape)}; "
            f"set {hp} to the reward head's number of outputs"
        )
    return torch.where(stats.valid[..., None], r, torch.zeros_like(r))


def gate_weights(stats: SequenceStats, name: str, m: int, hp: str) -> Tensor:
    """``stats.extra['gate']`` [B, m] in the rewards' dtype."""
    gate = stats.extra.get("gate")
    if gate is None:
        raise ValueError(f"objective '{name}' needs extra['gate'] [B, {hp}]: the model's prompt gate")
    if gate.shape != (stats.batch_size, m):
        raise ValueError(
            f"objective '{name}' needs gate [B, {hp}] = {(stats.batch_size, m)}, got {tuple(gate.shape)}"
        )
    return gate.to(stats.rewards.dtype)


def reward_pair(stats: SequenceStats, r: Tensor) -> tuple[PairView, Tensor, Tensor]:
    """Chosen and rejected rows of ``r`` [B, 2] or [B, 2, m], 0 on masked rows."""
    view = pair_view(stats)
    rows = torch.arange(stats.batch_size, device=r.device)
    mask = view.mask.reshape(-1, *([1] * (r.dim() - 2)))
    r_w, r_l = r[rows, view.w], r[rows, view.l]
    return view, torch.where(mask, r_w, torch.zeros_like(r_w)), torch.where(mask, r_l, torch.zeros_like(r_l))


def reward_output(
    stats: SequenceStats, view: PairView, per: Tensor, r_w: Tensor, r_l: Tensor, **extra: Tensor
) -> LossOutput:
    per = torch.where(view.mask, per, torch.zeros_like(per))
    metrics = reward_metrics(r_w, r_l, view.mask)
    metrics.update(pair_metrics(extra, view.mask))
    return LossOutput(weighted_mean(per, stats, view.mask), per, metrics)


def _bt_pair(stats: SequenceStats, name: str) -> tuple[PairView, Tensor, Tensor]:
    return reward_pair(stats, masked_rewards(stats, name))


def list_metrics(lst: ListView, h: Tensor) -> dict[str, float]:
    """``rewards/*`` metrics over the ordered pairs i ≻ j of each row (ties skip), then over rows."""
    pf = lst.better.to(h.dtype)
    n = pf.sum((1, 2)).clamp(min=1)
    hi, hj = h.detach()[:, :, None], h.detach()[:, None, :]

    def over_pairs(x: Tensor) -> Tensor:
        return (pf * x).sum((1, 2)) / n

    return pair_metrics(
        {
            "rewards/chosen": over_pairs(hi.expand_as(pf)),
            "rewards/rejected": over_pairs(hj.expand_as(pf)),
            "rewards/margin": over_pairs(hi - hj),
            "rewards/accuracy": over_pairs((hi > hj).to(h.dtype)),
        },
        lst.mask,
    )


# ---------------------------------------------------------------- Bradley–Terry family
@register("bt", **PAIR)
def bt(stats: SequenceStats, center_coef: float = 0.0) -> LossOutput:
    """Bradley–Terry reward model (InstructGPT), https://arxiv.org/abs/2203.02155.

    ``−logσ(r(w) − r(l)) + η·(r(w) + r(l))²``: the likelihood that the reward orders the pair as
    labelled. With η = ``center_coef`` = 0 it depends only on the reward difference (adding a constant
    to both rewards changes nothing); η > 0 is the centering regulariser of Eisenstein et al. 2023,
    "Helping or Herding?", https://arxiv.org/abs/2312.09244, which pins that free constant so the
    rewards of a prompt's responses sum to about 0.

    Args:
        stats: ``rewards`` [B, 2]; ranks or scalar scores [B, 2].
        center_coef: η ≥ 0.
    """
    _finite(center_coef=center_coef)
    view, r_w, r_l = _bt_pair(stats, "bt")
    per = -F.logsigmoid(r_w - r_l)
    if center_coef:
        per = per + center_coef * (r_w + r_l) ** 2
    return reward_output(stats, view, per, r_w, r_l)


def pair_margin(stats: SequenceStats, view: PairView) -> Tensor:
    """m [B] for each pair: ``extra['margin']`` where it is not NaN, else ``|s_w − s_l|`` from scalar
    scores when the stats carry them, else 0; 0 on masked rows."""
    m = pair_gap(stats, view, stats.rewards.dtype)
    return torch.where(view.mask & ~torch.isnan(m), m, torch.zeros_like(m))


@register("bt_margin", extras=("margin",), **PAIR)
def bt_margin(stats: SequenceStats, margin_scale: float = 1.0) -> LossOutput:
    """Bradley–Terry with a preference margin (Llama 2, section 3.2.2), https://arxiv.org/abs/2307.09288.

    ``−logσ(r(w) − r(l) − λ·m)`` with λ = ``margin_scale`` ≥ 0: pairs labelled as clearly better must
    be separated by a larger reward gap. The margin m of a record is, in order: its
    ``meta['margin']`` (``extra['margin']``: a margin column, or the score gap the pairs transform
    writes) when not NaN; else ``|s(w) − s(l)|`` when the record has scalar scores; else 0. With
    m = 0 (or λ = 0) it is :func:`bt`. Also logs ``margin`` (the mean λ·m).
    """
    _finite(margin_scale=margin_scale)
    view, r_w, r_l = _bt_pair(stats, "bt_margin")
    m = margin_scale * pair_margin(stats, view)
    per = -F.logsigmoid(r_w - r_l - m)
    return reward_output(stats, view, per, r_w, r_l, margin=m)


@register("bt_pl", **RM, label_kinds=("ranks", "scores"), min_responses=2)
def bt_pl(stats: SequenceStats) -> LossOutput:
    """Plackett–Luce reward model over K ranked responses (K-wise comparisons, Zhu et al. 2023),
    https://arxiv.org/abs/2301.11270.

    ``Σ_k [logΣ_{j≥k} exp r_(j) − r_(k)]`` with the valid responses ordered best first: the
    likelihood that the reward picks the best response, then the best of the rest, and so on. Ties
    are averaged over every consistent order exactly as listwise ``plackett_luce`` (the same helper;
    at most 10 tied responses). K = 2 is :func:`bt`. Metrics are over the ordered pairs of a row.
    """
    lst = list_view(stats, "bt_pl")
    h = masked_rewards(stats, "bt_pl")
    per = plackett_luce_nll(h, lst)
    per = torch.where(lst.mask, per, torch.zeros_like(per))
    return LossOutput(weighted_mean(per, stats, lst.mask), per, list_metrics(lst, h))


# ---------------------------------------------------------------- multi-attribute (ArmoRM)
def _score_vectors(stats: SequenceStats, name: str) -> Tensor:
    if stats.scores is None:
        raise DataError(f"objective '{name}' needs records with score vectors (scores [B, K, m])")
    return stats.scores if stats.scores.dim() == 3 else stats.scores[..., None]


@register("regression", **RM, label_kinds=("scores",), score_shape="vector", reward_outputs="dim")
def regression(stats: SequenceStats, dim: int = 0) -> LossOutput:
    """Multi-attribute regression reward model (ArmoRM stage 1), https://arxiv.org/abs/2406.12845.

    ``mean over observed (response, attribute) of (r_a(y) − s_a(y))²`` per record: a head of m
    outputs regresses the records' attribute scores ``scores`` [B, K, m]. A NaN score means "not
    rated" (datasets with different attribute sets are merged that way) and is left out; a record
    with no observed score is masked.

    Args:
        dim: m, the number of head outputs; 0 (default) takes it from the data's score vectors (the
            trainer sizes the head from them); > 0 must match them.

    Metrics: ``mse/attr{a}`` per attribute (pooled over observed entries) and ``rewards/accuracy``,
    ``accuracy/attr{a}``: over pairs of responses of a record whose attribute-a scores differ, the
    fraction the head orders the same way (only when such pairs exist).
    """
    check_count("dim", dim, 0)
    scores = _score_vectors(stats, "regression")
    m = scores.shape[-1]
    if dim and dim != m:
        raise ConfigError(f"regression with dim={dim} got score vectors of length {m}; set dim: {m} (or 0)")
    r = masked_rewards(stats, "regression", m, "dim")
    obs = stats.valid[..., None] & torch.isfinite(scores)
    s = torch.where(obs, scores.to(r.dtype), torch.zeros_like(r))
    err = torch.where(obs, r - s, torch.zeros_like(r)) ** 2
    of = obs.to(r.dtype)
    n = of.sum((1, 2))
    mask = n > 0
    per = torch.where(mask, err.sum((1, 2)) / n.clamp(min=1), torch.zeros_like(n))
    metrics: dict[str, float] = {}
    mse = err.detach().sum((0, 1)) / of.sum((0, 1)).clamp(min=1)
    # pairs[b, i, j, a]: both observed and s_i > s_j on attribute a
    pairs = obs[:, :, None] & obs[:, None, :] & (s[:, :, None] > s[:, None, :])
    right = (pairs & (r.detach()[:, :, None] > r.detach()[:, None, :])).sum((0, 1, 2))
    total = pairs.sum((0, 1, 2))
    if total.sum() > 0:
        metrics["rewards/accuracy"] = float(right.sum() / total.sum())
    for a in range(m):
        metrics[f"mse/attr{a}"] = float(mse[a])
        if total[a] > 0:
            metrics[f"accuracy/attr{a}"] = float(right[a] / total[a])
    return LossOutput(weighted_mean(per, stats, mask), per, metrics)


@register("gated_bt", extras=("gate",), reward_outputs="dim", **PAIR)
def gated_bt(stats: SequenceStats, dim: int = 0, beta: float = 1.0) -> LossOutput:
    """Gated multi-attribute Bradley–Terry (ArmoRM stage 2), https://arxiv.org/abs/2406.12845.

    The scalar reward is ``R = β·Σ_a g_a(x)·r_a(y)``, the head's m attribute rewards mixed by the
    prompt gate ``g = extra['gate']`` [B, m] (a softmax, from the model); the loss is
    ``−logσ(R(w) − R(l))`` on pairs (ranks or scalar scores). ArmoRM learns β; here it is a fixed
    scale ``beta`` > 0 (the mixed rewards of a stage-1 regression head are bounded, so β sets how
    confident the preference probability can get).

    Args:
        dim: m, the number of head outputs; 0 accepts the head as it is (the trainer must then know
            its size, e.g. from a stage-1 regression checkpoint); > 0 must match it.
        beta: β > 0.

    Rewards are R; also logs ``gate/attr{a}``, the mean gate weight of each attribute.
    """
    check_count("dim", dim, 0)
    if not beta > 0:
        raise ConfigError(f"hyper-parameter beta must be > 0, got {beta}")
    r = masked_rewards(stats, "gated_bt", dim, "dim")
    gate = gate_weights(stats, "gated_bt", r.shape[-1], "dim")
    view, v_w, v_l = reward_pair(stats, r)
    gate = torch.where(view.mask[:, None], gate, torch.zeros_like(gate))
    r_w, r_l = beta * (gate * v_w).sum(-1), beta * (gate * v_l).sum(-1)
    per = -F.logsigmoid(r_w - r_l)
    usage = {f"gate/attr{a}": gate[:, a] for a in range(gate.shape[1])}
    return reward_output(stats, view, per, r_w, r_l, **usage)
