"""Diagnostics of preference learning, as pure functions (``alignkit eval --diagnose``, `alignkit.eval.diagnose`).

* **Idealised ranking accuracy** (Chen et al. 2024, "Preference learning algorithms do not learn preference
  rankings", https://arxiv.org/abs/2405.19534, Theorem 3.1): the DPO / RLHF optimum is
  ``π*(y|x) ∝ π_ref(y|x)·exp(r*(x, y)/β)`` and under Bradley–Terry ``r*(y_w) − r*(y_l) = logit α`` with
  ``α = P(y_w ≻ y_l)`` (the share of raters preferring y_w), so

      log π*(y_w|x) − log π*(y_l|x) = [log π_ref(y_w|x) − log π_ref(y_l|x)] + logit(α)/β

  and π* ranks the pair correctly iff that is > 0, i.e. ``π_ref(y_w)/π_ref(y_l) > ((1 − α)/α)^{1/β}``.
  The idealised ranking accuracy is the share of pairs where it is (a tie counts ½): even a perfect
  optimiser stays below 100% where the reference is confidently wrong and α is close to ½.
* **Gradient entanglement** (Yuan et al. 2024, "A common pitfall of margin-based language model alignment:
  gradient entanglement", https://arxiv.org/abs/2410.13828): with ``g_w = ∇_θ log π(y_w|x)`` and
  ``g_l = ∇_θ log π(y_l|x)``, a small gradient-ascent step along the margin ``g_w − g_l`` changes
  ``log π(y_w)`` by ``η(‖g_w‖² − ⟨g_w, g_l⟩)`` and ``log π(y_l)`` by ``η(⟨g_w, g_l⟩ − ‖g_l‖²)`` to first
  order: the chosen log-prob falls when ``⟨g_w, g_l⟩ > ‖g_w‖²`` and the rejected one rises when
  ``⟨g_w, g_l⟩ > ‖g_l‖²`` — both happen only when the two gradients are strongly aligned (cosine > 0).
* **Token-distribution shift** (Lin et al. 2023, "The unlocking spell on base LLMs: rethinking alignment via
  in-context learning" (URIAL), https://arxiv.org/abs/2312.01552, section 2): at each position t of the
  aligned model's answer y, the rank η_t of y_t in the base model's next-token distribution given the same
  context (x, y_<t): *unshifted* if η_t = 1, *marginal* if 1 < η_t ≤ 3, *shifted* otherwise. Alignment that
  is "superficial" leaves most positions unshifted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignkit.eval.rm_report import wilson_interval


def _logit(p: float) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"alpha must be a probability in [0, 1], got {p}")
    if p == 0:
        return -math.inf
    if p == 1:
        return math.inf
    return math.log(p) - math.log1p(-p)


def idealised_ranking(ref_chosen: Sequence[float], ref_rejected: Sequence[float], alpha: float | Sequence[float],
                      beta: float, z: float = 1.96) -> dict[str, Any]:
    """Idealised ranking accuracy of the DPO optimum on pairs (Chen et al. 2024, Theorem 3.1; module docstring).

    Args:
        ref_chosen, ref_rejected: summed ``log π_ref(y|x)`` of each pair's winner and loser, ``[P]``.
        alpha: ``P(y_w ≻ y_l)`` per pair (``[P]``) or one value for all pairs, in [0, 1].
        beta: the KL coefficient β > 0 of the objective whose optimum is imagined.

    Returns ``{"n", "beta", "accuracy", "wilson", "reference_accuracy" (the reference's own likelihood ranking
    accuracy), "margins": [P] idealised log-ratios (can be ±inf), "reference_margins": [P]}``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    n = len(ref_chosen)
    if n == 0 or len(ref_rejected) != n:
        raise ValueError(f"need one winner and one loser log-prob per pair, got {n} and {len(ref_rejected)}")
    alphas = [float(alpha)] * n if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != n:
        raise ValueError(f"need one alpha per pair ({n}), got {len(alphas)}")
    ref_margins = [float(w) - float(lo) for w, lo in zip(ref_chosen, ref_rejected)]
    margins = [m + _logit(a) / beta for m, a in zip(ref_margins, alphas)]
    acc, ref_acc = _share_positive(margins), _share_positive(ref_margins)
    return {"n": n, "beta": beta, "accuracy": acc, "wilson": list(wilson_interval(acc * n, n, z)),
            "reference_accuracy": ref_acc, "margins": margins, "reference_margins": ref_margins}


def _share_positive(xs: Sequence[float]) -> float:
    """Share of values > 0, zeros counting ½."""
    return sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in xs) / len(xs)


def bradley_terry_alpha(score_chosen: float, score_rejected: float, temperature: float = 1.0) -> float:
    """``P(y_w ≻ y_l) = σ((s_w − s_l) / temperature)``: a preference probability from two scores."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return 1.0 / (1.0 + math.exp(-(score_chosen - score_rejected) / temperature))


def sequence_logp(model, ids: Tensor, start: int) -> Tensor:
    """``Σ_{t ≥ start} log π(ids[t] | ids[:t])`` of one sequence ``ids`` [T] (a scalar, with its graph):
    ``start`` is the position of the first scored (completion) token, ≥ 1."""
    if not 1 <= start < ids.numel():
        raise ValueError(f"start must be in [1, {ids.numel() - 1}], got {start}")
    logits = model(input_ids=ids[None]).logits[0, start - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[start:, None]).sum()


def logp_gradient(model, ids: Tensor, start: int, params: Sequence[torch.nn.Parameter]) -> list[Tensor]:
    """``∇ log π(completion | prompt)`` w.r.t. ``params``: one detached tensor per parameter (zeros where unused)."""
    grads = torch.autograd.grad(sequence_logp(model, ids, start), list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


Grad = Tensor | Sequence[Tensor]


def _dot(a: Grad, b: Grad) -> float:
    """``⟨a, b⟩`` in float64 over a tensor or a list of tensors (piece by piece: no flattened copy)."""
    a, b = ([a], [b]) if isinstance(a, Tensor) else (a, b)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("the two gradients differ in shape")
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def entanglement(g_chosen: Grad, g_rejected: Grad) -> dict[str, float | bool]:
    """Gradient entanglement of one pair from ``g_w`` and ``g_l`` (tensors, or lists of per-parameter tensors).

    Returns ``{"inner": ⟨g_w, g_l⟩, "cosine", "norm_chosen": ‖g_w‖, "norm_rejected": ‖g_l‖,
    "chosen_falls": ⟨g_w, g_l⟩ > ‖g_w‖², "rejected_rises": ⟨g_w, g_l⟩ > ‖g_l‖²}`` (first-order effect of
    a margin-increasing step; module docstring). The cosine of a zero gradient is NaN.
    """
    inner, nw2, nl2 = _dot(g_chosen, g_rejected), _dot(g_chosen, g_chosen), _dot(g_rejected, g_rejected)
    denom = math.sqrt(nw2 * nl2)
    return {"inner": inner, "cosine": inner / denom if denom > 0 else math.nan, "norm_chosen": math.sqrt(nw2),
            "norm_rejected": math.sqrt(nl2), "chosen_falls": inner > nw2, "rejected_rises": inner > nl2}


SHIFT_CLASSES = ("unshifted", "marginal", "shifted")


def token_ranks(base_logits: Tensor, tokens: Tensor) -> Tensor:
    """Rank (1 = the base model's top token) of each ``tokens[t]`` under ``base_logits[t]`` ``[T, V]``:
    ``1 + #{v : logit_v > logit_{tokens[t]}}`` (ties with the token do not push it down)."""
    logits = base_logits.float()
    own = logits.gather(-1, tokens.long()[:, None])
    return 1 + (logits > own).sum(-1)


def shift_class(rank: int, marginal_rank: int = 3) -> str:
    """``unshifted`` (rank 1), ``marginal`` (rank 2 .. ``marginal_rank``) or ``shifted``."""
    return "unshifted" if rank == 1 else "marginal" if rank <= marginal_rank else "shifted"


def shift_fractions(ranks: Sequence[int] | Tensor, marginal_rank: int = 3) -> dict[str, float]:
    """Share of positions in each `SHIFT_CLASSES` class, plus ``"positions"`` (the count)."""
    ranks = [int(r) for r in (ranks.tolist() if isinstance(ranks, Tensor) else ranks)]
    if not ranks:
        raise ValueError("shift_fractions needs at least one position")
    counts = Counter(shift_class(r, marginal_rank) for r in ranks)
    return {**{c: counts[c] / len(ranks) for c in SHIFT_CLASSES}, "positions": len(ranks)}
