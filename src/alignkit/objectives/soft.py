"""Soft-label preference objectives: pairs whose label is a probability, not a hard choice.

``soft_dpo`` trains on ``p = P(w ≻ l)``, the probability that the chosen response (rank 0, or the
higher scalar score) is the better one. Where p comes from (option ``target``):

* ``p`` — the record's own ``p`` (a ``p`` column, or ``meta.p``): a human agreement rate, several
  annotators' vote share, or a judge's probability (e.g. ``P("A") / (P("A") + P("B"))`` of an LLM
  judge, `alignkit.rewards.judges`). The readers check it is a number in [0, 1] (file, row and field
  named otherwise); the collator carries it as ``extra['p']`` [B] (NaN for a record without one).
* ``scores`` — a Bradley–Terry link on the pair's score gap g: ``p = σ(g / temperature)``, with g the
  ``margin`` of the record (a ``margin`` column or the gap the ``pairs`` transform writes) or, for
  scored K = 2 records, ``|s(w) − s(l)|`` (`alignkit.objectives.common.pair_gap`). A small
  temperature makes every clear gap a near-hard label; a large one pulls every p towards ½.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import PairView, check_positive, pair_gap
from alignkit.objectives.pairwise import PAIR, finish_pair, pair_stats
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats

TARGETS = ("p", "scores")


def soft_targets(stats: SequenceStats, view: PairView, target: str, temperature: float, dtype: torch.dtype) -> Tensor:
    """``p`` [B] for every pair (½ on masked rows); a counted row without one raises `DataError`."""
    mask = view.mask
    if target == "p":
        given = stats.extra.get("p")
        p = torch.full_like(mask, float("nan"), dtype=dtype) if given is None else given.to(dtype)
        hint = "give every pair a 'p' column (P(chosen ≻ rejected) in [0, 1]), or use target=scores"
    else:
        gap = pair_gap(stats, view, dtype)
        p = torch.sigmoid(gap / temperature)
        hint = ("give every pair a 'margin' column or scalar scores (the pairs transform writes the score gap of "
                "scored lists as margin), or use target=p")
    missing = int((mask & torch.isnan(p)).sum())
    if missing:
        raise DataError(f"soft_dpo (target={target}): {missing} of the {int(mask.sum())} pairs in this batch "
                        f"have no target probability; {hint}")
    if bool(((p < 0) | (p > 1)).any()):  # the readers check p; tensors built by hand may not be
        raise DataError(f"soft_dpo: target probabilities must be in [0, 1], got {p[(p < 0) | (p > 1)].tolist()[:4]}")
    return torch.where(mask, p, torch.full_like(p, 0.5))


@register("soft_dpo", needs_reference=True, extras=("p",), **PAIR)
def soft_dpo(stats: SequenceStats, beta: float = 0.1, target: str = "p", temperature: float = 1.0) -> LossOutput:
    """Soft-label (preference-strength) DPO: ``−p·logσ(βΔ) − (1−p)·logσ(−βΔ)``.

    The cross-entropy between the target ``p = P(w ≻ l)`` and the Bradley–Terry probability ``σ(βΔ)``
    of the implicit reward (Furuta et al. 2024, soft preference labels,
    https://arxiv.org/abs/2409.06691). Its gradient in βΔ is ``σ(βΔ) − p``: a pair stops pushing once
    the model agrees with its label's strength, so near-ties (p ≈ ½) barely move the policy and a
    confident pair is fitted to the finite margin ``βΔ = log(p/(1−p))``. p = 1 is :func:`dpo`;
    p = 1 − ε for every pair is ``cdpo`` with ``label_smoothing`` ε.

    Args:
        stats: ``logps``, ``ref_logps`` [B, 2]; ranks or scalar scores [B, 2]; ``extra['p']`` [B]
            (``target=p``) or ``extra['margin']`` [B] / scalar scores (``target=scores``).
        beta: inverse temperature β > 0.
        target: ``p`` (the record's probability) or ``scores`` (``σ(gap / temperature)``); module docstring.
        temperature: > 0, the Bradley–Terry link's temperature for ``target=scores``.

    Returns:
        LossOutput, ``per_example`` [B]; rewards are ``β·ρ``; also logs ``target_p`` (mean p).
    """
    check_positive(beta=beta, temperature=temperature)
    if target not in TARGETS:
        raise ConfigError(f"soft_dpo target must be one of {TARGETS}, got {target!r}")
    pr = pair_stats(stats, reference=True)
    p = soft_targets(stats, pr.view, target, temperature, pr.delta.dtype)
    z = beta * pr.delta
    per = -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)
    return finish_pair(stats, pr, per, beta * pr.rho_w, beta * pr.rho_l, target_p=p)
