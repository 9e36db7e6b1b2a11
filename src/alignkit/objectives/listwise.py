"""Listwise objectives (METHODS.md section 3): K ≥ 2 responses per prompt, ordered by ranks or scores.

Notation: ``ρ = s − s_ref`` and the implicit reward ``h = β·ρ`` of each response. The order comes
from ``ranks`` (0 = best) when present, otherwise from scalar ``scores`` (higher is better), as in
:func:`alignkit.objectives.common.pair_view`. Padded slots (``valid == False``) are replaced by 0
before any arithmetic, so NaN/inf there never reach the loss or gradient. A row without two valid
responses of different rank is masked: ``per_example`` 0, left out of ``loss`` (record-weighted
mean, :func:`alignkit.objectives.stats.weighted_mean`) and of the metrics.

Metrics are means over the ordered pairs i ≻ j of a row (ties skip), then over rows:
``rewards/chosen`` (h of the better response), ``rewards/rejected``, ``rewards/margin``,
``rewards/accuracy`` (fraction of pairs with h_i > h_j), ``logps/chosen``, ``logps/rejected``; for
K = 2 these are exactly dpo's metrics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import check_positive, pair_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

LIST = {"label_kinds": ("ranks", "scores"), "min_responses": 2}
MAX_TIE_GROUP = 10  # plackett_luce enumerates the 2^g subsets of a tie group of g responses
PAIR_BASES = ("dpo", "ipo", "hinge")


class ListView(NamedTuple):
    key: Tensor  # [B, K] order key, lower is better; +inf on padded slots
    valid: Tensor  # [B, K] bool
    better: Tensor  # [B, K, K] bool: i strictly better than j, both valid
    mask: Tensor  # [B] rows with at least one such pair

    @property
    def live(self) -> Tensor:
        """[B, K] valid slots of rows that count."""
        return self.valid & self.mask[:, None]


def list_view(stats: SequenceStats, name: str) -> ListView:
    if stats.ranks is not None:
        key = stats.ranks
    elif stats.scores is not None and stats.scores.dim() == 2:
        key = -stats.scores
    else:
        raise ValueError(
            f"{name} needs ranks or scalar scores [B, K] to order the responses"
            + (" (got vector scores [B, K, m]; see modpo)" if stats.scores is not None else "")
        )
    valid = stats.valid
    key = torch.where(valid, key, torch.full_like(key, math.inf))
    better = valid[:, :, None] & valid[:, None, :] & (key[:, :, None] < key[:, None, :])
    return ListView(key, valid, better, better.flatten(1).any(1))


def _logratios(stats: SequenceStats, valid: Tensor) -> Tensor:
    """ρ [B, K] with 0 in padded slots."""
    return torch.where(valid, stats.logratios, torch.zeros_like(stats.logps))


def _finish(stats: SequenceStats, lst: ListView, per: Tensor, h: Tensor, **extra: Tensor) -> LossOutput:
    per = torch.where(lst.mask, per, torch.zeros_like(per))
    pf = lst.better.to(h.dtype)
    n = pf.sum((1, 2)).clamp(min=1)
    s = torch.where(lst.valid, stats.logps, torch.zeros_like(stats.logps))

    def over_pairs(x: Tensor) -> Tensor:  # [B, K, K] -> [B] mean over the row's pairs
        return (pf * x).sum((1, 2)) / n

    hi, hj = h.detach()[:, :, None], h.detach()[:, None, :]
    metrics = pair_metrics(
        {
            "rewards/chosen": over_pairs(hi.expand_as(pf)),
            "rewards/rejected": over_pairs(hj.expand_as(pf)),
            "rewards/margin": over_pairs(hi - hj),
            "rewards/accuracy": over_pairs((hi > hj).to(h.dtype)),
            "logps/chosen": over_pairs(s.detach()[:, :, None].expand_as(pf)),
            "logps/rejected": over_pairs(s.detach()[:, None, :].expand_as(pf)),
            **extra,
        },
        lst.mask,
    )
    return LossOutput(weighted_mean(per, stats, lst.mask), per, metrics)


def plackett_luce_nll(h: Tensor, lst: ListView) -> Tensor:
    """Plackett–Luce NLL of each row's order, averaged over the orders of tied responses, [B].

    With the row sorted best first, ``Σ_k [logΣ_{j≥k} exp h_(j) − h_(k)]``. Inside a tie group G of
    g responses, a uniformly random order leaves, at its i-th place, a uniformly random subset of G
    of size g − i (plus everything ranked below G), so the average over the g! orders is
    ``Σ_{∅≠S⊆G} logsumexp(h_S ∪ h_below(G)) / C(g, |S|) − Σ_{y∈G} h_y``: exact, 2^g terms.
    """
    K = h.shape[1]
    live = lst.live
    key_s, perm = torch.where(live, lst.key, math.inf).sort(dim=1, stable=True)
    h_s, live_s = h.gather(1, perm), live.gather(1, perm)
    pos = torch.arange(K, device=h.device)
    tied = torch.zeros_like(live_s)
    tied[:, 1:] = live_s[:, 1:] & (key_s[:, 1:] == key_s[:, :-1])
    start = torch.where(tied, 0, pos).cummax(dim=1).values  # first position of each one's tie group
    # size[b, a]: members of the tie group starting at sorted position a (0 where a starts none)
    size = ((start[:, None, :] == pos[None, :, None]) & live_s[:, None, :]).sum(-1)
    g_max = max(int(size.max()), 1) if size.numel() else 1
    if g_max > MAX_TIE_GROUP:
        raise DataError(
            f"plackett_luce averages over every order of tied responses and a row has {g_max} tied "
            f"responses (at most {MAX_TIE_GROUP}); give those responses distinct ranks or scores"
        )
    subsets = torch.arange(1, 2**g_max, device=h.device)  # [M] bit d = (d-th member of the group)
    bits = ((subsets[:, None] >> torch.arange(g_max, device=h.device)) & 1).bool()  # [M, g_max]
    d = pos[None, :] - pos[:, None]  # [A, Q] = q − a
    in_subset = bits[:, d.clamp(0, g_max - 1)] & ((d >= 0) & (d < g_max))  # [M, A, Q]
    below = pos[None, None, :] >= (pos[None, :] + size)[:, :, None]  # [B, A, Q]
    # member[b, a, m, q]: sorted response q is in the tail set (subset m of a's group) ∪ below(a)
    member = live_s[:, None, None, :] & (below[:, :, None, :] | in_subset.transpose(0, 1)[None])
    x = torch.where(member, h_s[:, None, None, :], -math.inf)
    x = torch.where(member.any(-1, keepdim=True), x, torch.zeros_like(x))  # empty sets: finite dummies
    lse = torch.logsumexp(x, dim=-1)  # [B, A, M]
    inv_comb = torch.tensor(
        [[1 / math.comb(g, c) if c <= g else 0.0 for c in range(g_max + 1)] for g in range(g_max + 1)],
        dtype=h.dtype,
        device=h.device,
    )
    use = (size[:, :, None] > 0) & (subsets < 2 ** size[:, :, None])
    weight = torch.where(use, inv_comb[size[:, :, None], bits.sum(-1)], torch.zeros_like(lse))
    return (weight * lse).sum((1, 2)) - torch.where(live_s, h_s, torch.zeros_like(h_s)).sum(1)


@register("plackett_luce", needs_reference=True, **LIST)
def plackett_luce(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Plackett–Luce listwise DPO (DPO's appendix; PRO), https://arxiv.org/abs/2305.18290,
    https://arxiv.org/abs/2306.17492.

    ``−Σ_{k=1}^{K−1} [h_(k) − logΣ_{j≥k} exp h_(j)]`` with ``h = β·ρ`` and the valid responses
    ordered best first: the likelihood that the policy's implicit rewards pick the best response, then
    the best of the rest, and so on. K = 2 is :func:`~alignkit.objectives.pairwise.dpo`; adding a
    constant to every h of a row changes nothing.

    Ties: the loss is the average of this NLL over every order of the valid responses consistent
    with the ranks (each tie group permuted uniformly), computed exactly by enumerating subsets of
    each tie group (at most ``MAX_TIE_GROUP`` = 10 tied responses). A tied group's term
    ``avg_S logsumexp − mean h`` is smallest when its rewards are equal, so ties pull together.

    Args:
        stats: ``logps``, ``ref_logps`` [B, K]; ranks or scalar scores [B, K]; ``valid``.
        beta: β > 0.
    """
    check_positive(beta=beta)
    lst = list_view(stats, "plackett_luce")
    h = beta * _logratios(stats, lst.valid)
    return _finish(stats, lst, plackett_luce_nll(h, lst), h)


@register("listnet", needs_reference=True, **LIST)
def listnet(stats: SequenceStats, beta: float = 0.1, temperature: float = 1.0) -> LossOutput:
    """ListNet (top-one cross-entropy), Cao et al. ICML 2007,
    https://www.microsoft.com/en-us/research/publication/learning-to-rank-from-pairwise-approach-to-listwise-approach/
    (as a LiPO baseline, https://arxiv.org/abs/2402.01878).

    ``−Σ_k softmax(scores/τ)_k · log softmax(h)_k`` over the valid responses, ``h = β·ρ``. With
    ranks (which win over scores) the target is ``softmax(−ranks/τ)``. Its gradient in h is
    ``softmax(h) − target``: zero exactly when the policy's distribution matches the target, where
    the loss equals the target's entropy (not 0). Tied labels get equal target mass.

    Args:
        temperature: τ > 0 of the target distribution.
    """
    check_positive(beta=beta, temperature=temperature)
    lst = list_view(stats, "listnet")
    live = lst.live
    h = beta * _logratios(stats, lst.valid)
    inf = torch.full_like(h, -math.inf)
    z = torch.where(live, -lst.key / temperature, inf)  # -key: -ranks, or the scores themselves
    z = torch.where(lst.mask[:, None], z, torch.zeros_like(z))
    target = torch.softmax(z, dim=-1)
    x = torch.where(lst.mask[:, None], torch.where(live, h, inf), torch.zeros_like(h))
    logq = torch.log_softmax(x, dim=-1)
    per = -torch.where(live, target * logq, torch.zeros_like(logq)).sum(-1)
    return _finish(stats, lst, per, h)


def _lipo_labels(stats: SequenceStats, lst: ListView) -> Tensor:
    """ψ [B, K]: the scalar scores, or for ranks the number of valid responses ranked strictly below."""
    if stats.ranks is None:
        psi = stats.scores
    else:
        psi = lst.better.sum(-1).to(stats.logps.dtype)
    return torch.where(lst.live, psi, torch.zeros_like(stats.logps))


@register("lipo", needs_reference=True, **LIST)
def lipo(stats: SequenceStats, beta: float = 0.1, normalize: bool = False) -> LossOutput:
    """LiPO-λ, https://arxiv.org/abs/2402.01878.

    ``Σ_{i≻j} Δ_ij · (−logσ(β(ρ_i − ρ_j)))`` over ordered pairs (ties skip), with the LambdaLoss
    weight ``Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|`` (detached): gain ``G = 2^ψ − 1``, discount
    ``D(τ) = log2(1 + τ)``, and τ the 1-based position of the response when the row's valid responses
    are sorted by the current rewards ``h = β·ρ``, highest first (equal rewards keep slot order).
    ψ is the scalar score; with ranks, ψ = the number of valid responses ranked strictly below
    (K − 1 for the best of K distinct ranks, 0 for the worst).

    ``normalize=False`` is the paper's sum. ``normalize=True`` divides the weights by their sum
    in the row, so the loss is a Δ-weighted mean of pairwise dpo losses: independent of the score
    scale (G is computed from ψ − max ψ, exact for the ratios), and K = 2 is dpo exactly.
    Also logs ``lambda_weight`` (the mean Δ over pairs).
    """
    check_positive(beta=beta)
    lst = list_view(stats, "lipo")
    rho = _logratios(stats, lst.valid)
    h = beta * rho
    psi = _lipo_labels(stats, lst)
    if normalize:
        top = torch.where(lst.live, psi, -math.inf).amax(1, keepdim=True)
        psi = torch.where(lst.live, psi - torch.where(lst.mask[:, None], top, 0.0), torch.zeros_like(psi))
    gain = torch.exp2(psi)  # the −1 of G cancels in |G_i − G_j|
    hk = torch.where(lst.live, h.detach(), -math.inf)
    order = hk.sort(dim=1, descending=True, stable=True).indices
    places = torch.arange(1, h.shape[1] + 1, device=h.device).expand_as(order)
    tau = torch.empty_like(order).scatter_(1, order, places)  # 1-based position by current reward
    inv_d = 1 / torch.log2(1 + tau.to(h.dtype))
    pf = lst.better.to(h.dtype)
    delta = pf * (gain[:, :, None] - gain[:, None, :]).abs() * (inv_d[:, :, None] - inv_d[:, None, :]).abs()
    if normalize:
        delta = delta / delta.sum((1, 2), keepdim=True).clamp(min=torch.finfo(h.dtype).tiny)
    pair = -F.logsigmoid(beta * (rho[:, :, None] - rho[:, None, :]))
    per = torch.where(lst.better, delta * pair, torch.zeros_like(pair)).sum((1, 2))
    n = pf.sum((1, 2)).clamp(min=1)
    return _finish(stats, lst, per, h, lambda_weight=delta.sum((1, 2)) / n)


def _pair_loss(base: str, d: Tensor, beta: float) -> Tensor:
    """Per-pair loss of the pairwise objective ``base`` at log-ratio margin d (pairwise.py's formulas)."""
    if base == "dpo":
        return -F.logsigmoid(beta * d)
    if base == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    return F.relu(1 - beta * d)  # hinge


@register("all_pairs", needs_reference=True, **LIST)
def all_pairs(stats: SequenceStats, beta: float = 0.1, base: str = "dpo") -> LossOutput:
    """A pairwise loss averaged over every ordered pair of a list (the pair-based reading of LiPO,
    https://arxiv.org/abs/2402.01878).

    ``per_example = mean over pairs i ≻ j (ties skip) of ℓ_base(ρ_i − ρ_j)`` with ``base``:
    ``dpo`` ``−logσ(βd)``, ``ipo`` ``(d − 1/(2β))²``, ``hinge`` ``max(0, 1 − βd)``. Every row
    counts once however many pairs it has. K = 2 is the base objective exactly. Rewards are ``β·ρ``.
    """
    check_positive(beta=beta)
    if base not in PAIR_BASES:
        raise ConfigError(f"all_pairs base must be one of {PAIR_BASES}, got '{base}'")
    lst = list_view(stats, "all_pairs")
    rho = _logratios(stats, lst.valid)
    pair = _pair_loss(base, rho[:, :, None] - rho[:, None, :], beta)
    pf = lst.better.to(rho.dtype)
    per = torch.where(lst.better, pair, torch.zeros_like(pair)).sum((1, 2)) / pf.sum((1, 2)).clamp(min=1)
    return _finish(stats, lst, per, beta * rho)


def _shared_logratio(stats: SequenceStats, valid: Tensor) -> Tensor:
    """Summed ``logp_t − ref_logp_t`` over the first ``shared_tokens`` tokens of each response, [B, K]."""
    missing = [
        n
        for n, t in (
            ("token_logps", stats.token_logps),
            ("token_mask", stats.token_mask),
            ("extra['shared_tokens']", stats.extra.get("shared_tokens")),
            ("extra['ref_token_logps']", stats.extra.get("ref_token_logps")),
        )
        if t is None
    ]
    if missing:
        raise ValueError(
            f"tpo with shared_weight != 1 needs {', '.join(missing)} (the executor provides them)"
        )
    mask = stats.token_mask.bool()
    shared = stats.extra["shared_tokens"].to(stats.logps.device)
    first = mask & (mask.cumsum(-1) <= shared[..., None]) & valid[..., None]
    zero = torch.zeros_like(stats.token_logps)
    ref = stats.extra["ref_token_logps"]
    ref_zero = torch.zeros_like(ref)
    return torch.where(first, stats.token_logps, zero).sum(-1) - torch.where(first, ref, ref_zero).sum(-1)


@register("tpo", needs_reference=True, needs_token_logps=True, extras=("shared_tokens",), **LIST)
def tpo(stats: SequenceStats, beta: float = 0.1, shared_weight: float = 0.0) -> LossOutput:
    """Tree Preference Optimization over a preference tree's responses, https://arxiv.org/abs/2410.12854.

    :func:`plackett_luce` (ties as there) on the adaptive step reward
    ``h(y) = β Σ_t w_t (logp_t − ref_logp_t)``, with ``w_t = shared_weight`` on the first
    ``shared_tokens(y)`` completion tokens (the leading tokens y shares with another response of the
    tree, ``stats.extra["shared_tokens"]``) and 1 after. Computed as
    ``β(ρ − (1 − shared_weight)·ρ_shared)``, so with ``shared_weight = 1`` or no shared tokens it is
    plackett_luce exactly.

    Our token-level reading of TPO's adaptive step reward: a shared step has similarity 1 to its
    sibling and gets weight ``shared_weight`` (default 0: shared steps carry no reward, the ranking
    is decided by the steps where the branches differ); other steps get weight 1 (similarity 0). The
    paper weights steps by embedding similarity instead.

    Args:
        shared_weight: weight of shared prefix tokens, in [0, 1].
    """
    check_positive(beta=beta)
    if not 0 <= shared_weight <= 1:
        raise ConfigError(f"hyper-parameter shared_weight must be in [0, 1], got {shared_weight}")
    lst = list_view(stats, "tpo")
    rho = _logratios(stats, lst.valid)
    if shared_weight != 1:
        rho = rho - (1 - shared_weight) * _shared_logratio(stats, lst.valid)
    h = beta * rho
    return _finish(stats, lst, plackett_luce_nll(h, lst), h)
