"""Win rates of system A over system B: confidence intervals, length control, per-subset breakdown.

An *outcome* is one comparison seen from A's side: 1 (A wins), ½ (tie), 0 (B wins), or a soft
``P(A wins)`` in [0, 1] (a judge's probability). The win rate is the mean outcome, so ties count half
(METHODS.md section 9).

* ``wilson`` — the Wilson score interval of the win rate (`alignkit.eval.rm_report.wilson_interval`, the sum
  of outcomes as successes). It treats comparisons as independent; ties and soft outcomes have less
  variance than a coin flip with the same mean, so for them it is conservative.
* ``bootstrap`` — a seeded percentile bootstrap. With ``groups`` (e.g. the prompt of each comparison) it
  resamples whole groups: several samples of one prompt are correlated, and the cluster bootstrap
  widens the interval accordingly.
* ``length_controlled`` — AlpacaEval 2's GLM (`alignkit.eval.lc_glm`); for one pair of systems its system
  and length terms, ``σ(θ + φ·tanh(Δ/sd(Δ)))`` with the length term switched off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from alignkit.errors import DataError
from alignkit.eval.bootstrap import bootstrap_ci, resample_weights  # noqa: F401  (re-exported)
from alignkit.eval.lc_glm import length_controlled
from alignkit.eval.rm_report import wilson_interval
from alignkit.rewards.judges import outcomes, score_vector  # noqa: F401  (outcomes re-exported)

Values = Tensor | Sequence[float]


def ci_methods(n_boot: int, clustered: bool, soft: bool) -> dict[str, str]:
    """How each interval of `win_rate` was computed, in words (the reports print these)."""
    return {"wilson": "Wilson score interval with the sum of outcomes as successes (ties ½"
                      + ("; soft outcomes: conservative, Var(p) ≤ m(1 − m))" if soft else ")"),
            "bootstrap": f"percentile bootstrap, {n_boot} resamples"
                         + (", whole prompts resampled" if clustered else ", comparisons resampled")}


def win_rate(values: Values, *, length_diff: Values | None = None, groups: Sequence[Any] | None = None,
             subsets: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
             z: float = 1.96) -> dict[str, Any]:
    """Win rate of A over B from outcomes ``[n]`` (1 / ½ / 0, or soft in [0, 1]), with the intervals above.

    Returns::

        {"n", "wins" (outcome > ½), "ties" (= ½), "losses" (< ½), "soft" (outcomes not in {0, ½, 1}),
         "win_rate", "wilson": [lo, hi], "bootstrap": [lo, hi], "n_boot", "ci_methods": {name: words},
         "clusters": number of groups or None,
         "length_controlled": lc_glm.length_controlled(...) or None (no length_diff),
         "subsets": {name: {"n", "win_rate", "wilson", "bootstrap"}}}   # {} without subsets
    """
    y = score_vector(values, "outcomes")
    n = y.numel()
    if n == 0:
        raise DataError("no comparisons: A and B have no prompt in common")
    if float(y.min()) < 0 or float(y.max()) > 1:
        raise DataError("outcomes must be 1 (A wins), 0.5 (tie), 0 (B wins) or a probability P(A wins) in [0, 1]")
    rate = float(y.mean())
    soft = int((~((y == 0) | (y == 0.5) | (y == 1))).sum())
    out: dict[str, Any] = {
        "n": n, "wins": int((y > 0.5).sum()), "ties": int((y == 0.5).sum()), "losses": int((y < 0.5).sum()),
        "soft": soft, "win_rate": rate, "wilson": list(wilson_interval(rate * n, n, z)),
        "bootstrap": bootstrap_ci(y, groups, n_boot, seed, level), "n_boot": n_boot,
        "ci_methods": ci_methods(n_boot, groups is not None, soft > 0),
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
