"""Win rates of system A over system B: confidence intervals, length control, per-subset breakdown.

An *outcome* is one comparison seen from A's side: 1 (A wins), ½ (tie), 0 (B wins). The win rate is the
mean outcome, so ties count half (METHODS.md section 9).

* ``wilson`` — the Wilson score interval of the win rate (`alignkit.eval.rm_report.wilson_interval`, ties
  as half a success). It treats comparisons as independent.
* ``bootstrap`` — a seeded percentile bootstrap. With ``groups`` (e.g. the prompt of each comparison) it
  resamples whole groups: several samples of one prompt are correlated, and the cluster bootstrap
  widens the interval accordingly.
* ``length_controlled`` — judges (and reward models) often prefer longer answers. We fit the logistic
  regression ``P(A wins) = σ(α + γ·Δ/s)`` of the outcome on the length difference ``Δ = len(A) − len(B)``
  (``s`` = the standard deviation of Δ; ties enter as y = ½ in the Bernoulli log-likelihood) and report
  ``σ(α)``: the win rate predicted at zero length difference — what the judge would say if A's answers
  were as long as B's. A tiny ridge (``1e-6·n`` on α and γ) keeps the fit finite when length separates the
  outcomes perfectly. Its interval is the same bootstrap, refitting on every resample (the AlpacaEval 2
  length-controlled win rate is this estimator with more terms; Dubois et al., 2024,
  https://arxiv.org/abs/2404.04475).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignkit.errors import DataError
from alignkit.eval.rm_report import wilson_interval

Values = Tensor | Sequence[float]


def _vec(x: Values, name: str) -> Tensor:
    t = (x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)).detach().double().flatten().cpu()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values; every comparison needs a finite {name}")
    return t


def outcomes(scores_a: Values, scores_b: Values) -> list[float]:
    """Outcome of each comparison of two scored answers: 1 where A scores higher, ½ on a tie, else 0."""
    a, b = _vec(scores_a, "scores_a"), _vec(scores_b, "scores_b")
    if a.numel() != b.numel():
        raise ValueError(f"scores_a has {a.numel()} values but scores_b has {b.numel()}; give one each per comparison")
    return ((a > b).double() + 0.5 * (a == b).double()).tolist()


def resample_weights(n: int, groups: Sequence[Any] | None, n_boot: int, seed: int) -> Tensor:
    """``[n_boot, n]`` bootstrap multiplicities of each item (seeded).

    Without ``groups`` items are drawn with replacement; with them whole groups are (the weight of an item
    is the number of times its group was drawn).
    """
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        idx = torch.randint(n, (n_boot, n), generator=gen)
        return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries but there are {n} comparisons; give one per comparison")
    ids: dict[Any, int] = {}
    gid = torch.tensor([ids.setdefault(g, len(ids)) for g in groups])
    n_groups = len(ids)
    idx = torch.randint(n_groups, (n_boot, n_groups), generator=gen)
    counts = torch.zeros(n_boot, n_groups, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n_groups, dtype=torch.float64))
    return counts[:, gid]


def _percentile(x: Tensor, level: float) -> list[float]:
    x = x[torch.isfinite(x)]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return torch.quantile(x, q).tolist()


def bootstrap_ci(values: Values, groups: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (cluster bootstrap with ``groups``)."""
    y = _vec(values, "values")
    if y.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    w = resample_weights(y.numel(), groups, n_boot, seed)
    return _percentile((w @ y) / w.sum(1), level)


def _logistic_fit(y: Tensor, x: Tensor, w: Tensor, iters: int = 50) -> Tensor:
    """Newton's method for ``P(y=1) = σ(α + γx)`` with item weights ``w`` ``[B, n]``; returns ``[B, 2]``."""
    design = torch.stack([torch.ones_like(x), x], 1)  # [n, 2]
    ridge = 1e-6 * w.sum(1).clamp(min=1.0)  # [B]
    theta = torch.zeros(w.shape[0], 2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(theta @ design.T)  # [B, n]
        grad = (w * (y - p)) @ design - ridge[:, None] * theta
        v = w * p * (1 - p)  # [B, n]
        h01 = v @ x
        hess = torch.stack([torch.stack([v.sum(1), h01], 1), torch.stack([h01, v @ (x * x)], 1)], 1)
        hess = hess + ridge[:, None, None] * eye
        step = torch.linalg.solve(hess, grad)
        theta = theta + step
        if float(step.abs().max()) < 1e-10:
            break
    return theta


def length_controlled(values: Values, length_diff: Values, groups: Sequence[Any] | None = None,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Length-controlled win rate ``σ(α)`` of the fit ``P(A wins) = σ(α + γ·Δ/s)`` (see the module docstring).

    Args:
        values: outcomes ``[n]`` in {0, ½, 1}.
        length_diff: ``len(A) − len(B)`` per comparison ``[n]`` (any unit: it is divided by its std).

    Returns:
        ``{"win_rate": σ(α), "bootstrap": [lo, hi], "coef": γ (per std of Δ), "length_diff_std": s,
        "mean_length_diff": mean Δ}``.
    """
    y, d = _vec(values, "outcomes"), _vec(length_diff, "length_diff")
    if y.numel() != d.numel():
        raise ValueError(f"{y.numel()} outcomes but {d.numel()} length differences; give one each per comparison")
    std = float(d.std()) if d.numel() > 1 else 0.0
    scale = std if std > 0 else 1.0
    x = d / scale
    full = _logistic_fit(y, x, torch.ones(1, y.numel(), dtype=torch.float64))[0]
    boot = _logistic_fit(y, x, resample_weights(y.numel(), groups, n_boot, seed))
    return {"win_rate": float(torch.sigmoid(full[0])), "bootstrap": _percentile(torch.sigmoid(boot[:, 0]), level),
            "coef": float(full[1]), "length_diff_std": std, "mean_length_diff": float(d.mean())}


def win_rate(values: Values, *, length_diff: Values | None = None, groups: Sequence[Any] | None = None,
             subsets: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
             z: float = 1.96) -> dict[str, Any]:
    """Win rate of A over B from outcomes ``[n]`` (1 / ½ / 0), with every interval described above.

    Returns::

        {"n", "wins", "ties", "losses", "win_rate", "wilson": [lo, hi], "bootstrap": [lo, hi],
         "n_boot", "clusters": number of groups or None,
         "length_controlled": length_controlled(...) or None (no length_diff),
         "subsets": {name: {"n", "win_rate", "wilson", "bootstrap"}}}   # {} without subsets
    """
    y = _vec(values, "outcomes")
    n = y.numel()
    if n == 0:
        raise DataError("no comparisons: A and B have no prompt in common")
    if not all(v in (0.0, 0.5, 1.0) for v in y.tolist()):
        raise ValueError("outcomes must be 1 (A wins), 0.5 (tie) or 0 (B wins)")
    rate = float(y.mean())
    out: dict[str, Any] = {
        "n": n, "wins": int((y == 1).sum()), "ties": int((y == 0.5).sum()), "losses": int((y == 0).sum()),
        "win_rate": rate, "wilson": list(wilson_interval(rate * n, n, z)),
        "bootstrap": bootstrap_ci(y, groups, n_boot, seed, level), "n_boot": n_boot,
        "clusters": len(set(groups)) if groups is not None else None,
        "length_controlled": None if length_diff is None else length_controlled(y, length_diff, groups, n_boot, seed,
                                                                                level),
        "subsets": {},
    }
    if subsets is not None:
        if len(subsets) != n:
            raise ValueError(f"subsets has {len(subsets)} names but there are {n} comparisons; give one each")
        for name in sorted({str(s) for s in subsets}):
            idx = [i for i, s in enumerate(subsets) if str(s) == name]
            ys = y[idx]
            sub_groups = [groups[i] for i in idx] if groups is not None else None
            r = float(ys.mean())
            out["subsets"][name] = {"n": len(idx), "win_rate": r, "wilson": list(wilson_interval(r * len(idx), len(idx), z)),
                                    "bootstrap": bootstrap_ci(ys, sub_groups, n_boot, seed, level)}
    return out
