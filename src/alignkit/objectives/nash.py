"""Online IPO toward the Nash equilibrium of a preference game: ``online_ipo``, ``ipo_md`` and ``egpo``.

One loss, three ways of feeding and stepping it (the recipes of ``algorithms/nash.py``). Each record holds
K samples of one prompt with, per sample, its win rate ``w_i = (1/(K−1)) Σ_{j≠i} P(y_i ≻ y_j | x)`` against
the record's other samples (``reward=winrate:PREF_SPEC``, rewards/preference.py) and its sequence log-ratio
``ρ_i = log πθ(y_i|x) − log π_ref(y_i|x)`` (``stats.logratios``).

The population loss (IPO with the preference as a soft label, Calandriello et al. 2024; the "online IPO"
loss of EGPO, Zhou et al. 2025)::

    L(θ) = E_{y, y' ~ μ} [ ( ρ(y) − ρ(y') − (P(y ≻ π_s) − P(y' ≻ π_s)) / β )² ]

(μ the sampling policy, π_s the opponent policy; both stop-gradient). Its minimiser over πθ is
``πθ(y) ∝ π_ref(y)·exp(P(y ≻ π_s)/β)`` on μ's support: a fixed point ``πθ = π_s`` is the Nash equilibrium
of the β-KL-regularised preference game. Estimated on a record, all K(K − 1)/2 pairs with the pair's own
preference as the label (the soft IPO loss ``(ρ_i − ρ_j − (P_ij − ½)/β)²``, unbiased for the above with
μ = π_s = the sampler) has exactly the gradient of the same sum with win rates,
``(ρ_i − ρ_j − c·(w_i − w_j)/β)²``, ``c = (K − 1)/K`` — because ``Σ_{j≠i} (P_ij − ½) = (K − 1)(w_i − ½)``
and ``Σ_{j≠i} (w_i − w_j) = K(w_i − ½)`` (the group's win rates average ½). The loss here is that sum
over the record's valid samples (n of them, c = (n − 1)/n), divided by the number of pairs; with
``x_i = ρ_i − c·w_i/β`` it is ``2/(n − 1) · Σ_i (x_i − x̄)²`` (``Σ_{i<j} (x_i − x_j)² = n Σ_i (x_i − x̄)²``).
Records with fewer than two valid samples drop out; records are combined with their weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.selfplay import SELFPLAY, preference_inputs
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

NASH = {**SELFPLAY, "min_responses": 2}


def pairwise_ipo(rho: Tensor, p: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Per-record soft-IPO loss over all pairs of valid samples (module docstring), from log-ratios ``rho``,
    win rates ``p`` and ``mask`` [B, K]: ``(1/C(n, 2)) Σ_{i<j} (ρ_i − ρ_j − ((n−1)/n)(p_i − p_j)/β)²``.
    Returns (loss [B], records with ≥ 2 valid samples [B])."""
    m = mask.to(rho.dtype)
    n = m.sum(1)
    c = ((n - 1) / n.clamp(min=1)).unsqueeze(1)
    x = (rho - c * p / beta) * m
    centred = (x - x.sum(1, keepdim=True) / n.clamp(min=1).unsqueeze(1)) * m
    rows = n >= 2
    per = 2 * centred.square().sum(1) / (n - 1).clamp(min=1)
    return torch.where(rows, per, torch.zeros_like(per)), rows


def _nash_ipo(stats: SequenceStats, beta: float, name: str) -> LossOutput:
    if not beta > 0:
        raise ConfigError(f"{name} hyper-parameter beta must be > 0, got {beta}")
    p, rho, mask = preference_inputs(stats, name)
    per, rows = pairwise_ipo(rho, p, mask, beta)
    m = mask.to(rho.dtype)
    count = m.sum().clamp(min=1)
    metrics = {"winrate/mean": float((p * m).sum() / count), "logratio/mean": float((rho.detach() * m).sum() / count),
               "winrate/spread": float(((p - 0.5).abs() * m).sum() / count)}
    return LossOutput(weighted_mean(per, stats, rows), per, metrics)


@register("online_ipo", **NASH)
def online_ipo(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Online IPO, Calandriello et al. 2024, "Human alignment of large language models through online
    preference optimisation", https://arxiv.org/abs/2403.08635 (μ = sg(πθ)).

    Per record of K samples of the current policy: ``(1/C(n,2)) Σ_{i<j} (ρ_i − ρ_j − ((n−1)/n)(w_i − w_j)/β)²``
    with win rates w (``reward=winrate:PREF``) — the soft-label IPO loss on every pair (module docstring).
    Its fixed point is the Nash equilibrium of the β-regularised game; a plain gradient step on it is the
    self-play baseline that ``egpo`` and ``ipo_md`` improve on (it can circle an intransitive game's
    equilibrium instead of reaching it).

    Args:
        beta: β > 0, the KL regularisation toward the reference (IPO's τ).

    Metrics: ``winrate/mean`` (½ for complete groups), ``winrate/spread`` (mean |w − ½|), ``logratio/mean``.
    """
    return _nash_ipo(stats, beta, "online_ipo")


@register("ipo_md", **NASH)
def ipo_md(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """IPO-MD, Calandriello et al. 2024, https://arxiv.org/abs/2403.08635: the online IPO
    loss (`online_ipo`, same formula) on samples from the token-level geometric mixture
    ``π_mix ∝ πθ^{1−α}·π_ref^{α}`` (``mixture_alpha``; Nash-MD's mixture) instead of πθ, so that both the
    regression weights μ and the opponent are the mixture, as in Nash-MD (Munos et al. 2023); the recipe
    samples from the mixture (``algorithms/nash.py``), the loss reads πθ's and π_ref's log-probs of those
    samples. Args: ``beta`` as online_ipo."""
    return _nash_ipo(stats, beta, "ipo_md")


@register("egpo", **NASH)
def egpo(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Extragradient preference optimisation, Zhou, Fazel and Du 2025, https://arxiv.org/abs/2503.08942.

    The online IPO loss (`online_ipo`, same formula) stepped by extragradient (the recipe
    in ``algorithms/nash.py``): from θ_t a step on samples of π_t gives θ_{t+½}; then samples of π_{t+½},
    back to θ_t (weights and optimizer state) and a step with that loss gives θ_{t+1}. The paper's tabular
    update, ``θ_{t+½} = (1 − ηβ)θ_t + η(P(·≻π_t) + β log π_ref)`` and
    ``θ_{t+1} = (1 − ηβ)θ_t + η(P(·≻π_{t+½}) + β log π_ref)`` (θ the logits, up to a constant), is a
    gradient step on this loss with uniform sampling weights; it converges in the last iterate to the
    regularised Nash equilibrium where the plain step circles (``tests/test_nash.py`` shows it through this
    function on a cyclic game). Args: ``beta`` as online_ipo."""
    return _nash_ipo(stats, beta, "egpo")
