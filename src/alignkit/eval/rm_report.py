"""Reward-model evaluation on preference pairs (RewardBench-style) and report writers.

Input is one score per response of each pair: ``chosen[i] = r(x_i, y_w)``, ``rejected[i] = r(x_i, y_l)``,
optionally a ``subset`` name per pair (e.g. ``"chat"``, ``"safety-refusal"``) and an annotated
``margin`` per pair (preference strength, e.g. "significantly" vs "slightly better").

* ``pairwise_accuracy`` — fraction of pairs with ``r_w > r_l``; a tie counts 0.5 (a coin flip
  would break it either way), so a constant reward scores exactly 0.5.
* **Ties** (`tie_mask`): a pair of identical responses is a tie whatever the two scores (two forward
  passes of one text can differ by float noise, ±5e-8 in fp32, which would otherwise decide it), and so
  is a pair whose rewards are within ``rtol·max(|r_w|, |r_l|, 1)`` (``rm_report``'s default ``rtol``
  1e-5; 0 in the plain functions, which compare exactly).
* ``accuracy_by_subset`` — the same per subset, plus ``"overall"``.
* ``calibration`` — expected calibration error of ``p = σ(r_w − r_l)`` read as the probability that
  the first response wins. The label is always "chosen wins", so the set is symmetrised: every pair
  enters as ``(p, 1)`` and ``(1 − p, 0)``. ECE = ``Σ_b (n_b / n) |acc_b − conf_b|`` over equal-width
  bins of ``[0, 1]``.
* ``margin_buckets`` — count and accuracy per bucket of ``|r_w − r_l|`` (or of annotated margins).
* ``wilson_interval`` — the Wilson score interval of a binomial proportion.
* ``rm_report`` bundles everything into a JSON-ready dict — counts of correct / wrong / tied pairs,
  accuracy and its interval under one key naming overall and per subset, RewardBench-style section
  scores (`alignkit.eval.rm_sections`) — and ``write_report`` writes ``report.json`` and ``report.md``.

(METHODS.md sections 5 and 9; N. Lambert et al., "RewardBench", 2024, https://arxiv.org/abs/2403.13787.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignkit.errors import DataError
from alignkit.eval.rm_sections import section_scores
from alignkit.io_atomic import atomic_write_text

Scores = Tensor | Sequence[float]
DEFAULT_EDGES = (0.0, 0.5, 1.0, 2.0, math.inf)
DEFAULT_TIE_RTOL = 1e-5  # well above fp32 noise (~1e-7 relative); raise it for bf16 / fp16 scores
TIE_RULE = "identical responses, or |r_w − r_l| <= rtol·max(|r_w|, |r_l|, 1)"


def _scores(x: Scores) -> Tensor:
    # Python floats go straight to float64: through torch's default float32 they would lose digits (and
    # differences of 5e-8 at 4.0 would vanish into ties)
    return (x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)).detach().double().flatten().cpu()


def _pair(chosen: Scores, rejected: Scores) -> tuple[Tensor, Tensor]:
    c, r = _scores(chosen), _scores(rejected)
    if c.numel() != r.numel():
        raise ValueError(
            f"chosen has {c.numel()} scores but rejected has {r.numel()}; give one of each per pair"
        )
    if c.numel() == 0:
        raise DataError("no pairs to evaluate: chosen and rejected are empty")
    bad = (~torch.isfinite(c) | ~torch.isfinite(r)).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"non-finite score in pair(s) {bad[:5].tolist()}: chosen and rejected must be finite"
        )
    return c, r


def tie_mask(c: Tensor, r: Tensor, identical: Sequence[bool] | None = None, rtol: float = 0.0) -> Tensor:
    """``[P]`` bool: pairs that are ties — identical responses, or rewards within ``rtol·max(|c|, |r|, 1)``."""
    if rtol < 0:
        raise ValueError(f"the tie tolerance rtol must be >= 0, got {rtol}")
    ties = (c - r).abs() <= rtol * torch.maximum(torch.maximum(c.abs(), r.abs()), torch.ones_like(c))
    if identical is not None:
        same = torch.as_tensor(list(identical), dtype=torch.bool)
        if same.numel() != c.numel():
            raise ValueError(f"identical has {same.numel()} flags but there are {c.numel()} pairs; give one per pair")
        ties = ties | same
    return ties


def _wins(c: Tensor, r: Tensor, ties: Tensor | None = None) -> Tensor:
    """1 where chosen scores higher, 0.5 on a tie (exact equality, or ``ties``), 0 otherwise."""
    ties = (c == r) if ties is None else ties
    return torch.where(ties, torch.full_like(c, 0.5), (c > r).double())


def pairwise_accuracy(chosen: Scores, rejected: Scores, identical: Sequence[bool] | None = None,
                      rtol: float = 0.0) -> float:
    """Fraction of pairs with ``chosen > rejected``; ties (`tie_mask`) count 0.5. Inputs ``[P]`` each."""
    c, r = _pair(chosen, rejected)
    return float(_wins(c, r, tie_mask(c, r, identical, rtol)).mean())


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (fractional successes from ties are fine).

    ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``; e.g. 7/10 → (0.3968, 0.8922).
    Unlike the normal interval it stays inside [0, 1] and is not degenerate at 0/n or n/n.
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_by_subset(
    chosen: Scores, rejected: Scores, subsets: Sequence[str] | None = None, identical: Sequence[bool] | None = None,
    rtol: float = 0.0,
) -> dict[str, tuple[float, int]]:
    """``{subset: (accuracy, n_pairs)}`` for each subset (sorted by name), then ``"overall"``.

    ``subsets`` has one name per pair; ``None`` gives only ``"overall"``. Ties (`tie_mask`) count 0.5.
    """
    c, r = _pair(chosen, rejected)
    wins = _wins(c, r, tie_mask(c, r, identical, rtol))
    out: dict[str, tuple[float, int]] = {}
    if subsets is not None:
        names = [str(s) for s in subsets]
        if len(names) != c.numel():
            raise ValueError(
                f"subsets has {len(names)} names but there are {c.numel()} pairs; give one per pair"
            )
        if "overall" in names:
            raise DataError("a subset is named 'overall', which is reserved for the total; rename it")
        for name in sorted(set(names)):
            mask = torch.tensor([s == name for s in names])
            out[name] = (float(wins[mask].mean()), int(mask.sum()))
    out["overall"] = (float(wins.mean()), c.numel())
    return out


def calibration(chosen: Scores, rejected: Scores, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of ``p = σ(r_w − r_l)`` on the symmetrised pair set.

    Each pair contributes ``(p, label 1)`` and ``(1 − p, label 0)``, so ``n = 2·P`` points. Bins are
    ``[k/bins, (k+1)/bins)``, the last one closed at 1.

    Returns:
        ``{"ece": float, "n": 2·P, "bins": [{"lower", "upper", "confidence", "accuracy", "count"}]}``,
        one row per bin; ``confidence`` is the mean ``p`` in the bin and ``accuracy`` the fraction of
        label 1; both are ``None`` for an empty bin (which adds nothing to the ECE).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    c, r = _pair(chosen, rejected)
    p = torch.sigmoid(c - r)
    probs = torch.cat([p, 1 - p])
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    which = (probs * bins).floor().long().clamp(0, bins - 1)
    n = probs.numel()
    counts = torch.bincount(which, minlength=bins).tolist()
    conf_sum = torch.bincount(which, weights=probs, minlength=bins).tolist()
    acc_sum = torch.bincount(which, weights=labels, minlength=bins).tolist()
    ece, table = 0.0, []
    for k, count in enumerate(counts):
        conf = conf_sum[k] / count if count else None
        acc = acc_sum[k] / count if count else None
        if count:
            ece += count / n * abs(acc - conf)
        table.append(
            {"lower": k / bins, "upper": (k + 1) / bins, "confidence": conf, "accuracy": acc, "count": count}
        )
    return {"ece": ece, "n": n, "bins": table}


def margin_buckets(
    chosen: Scores,
    rejected: Scores,
    edges: Sequence[float] = DEFAULT_EDGES,
    margins: Scores | None = None,
    ties: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Accuracy by margin bucket ``[edges[i], edges[i+1])``.

    The margin is the model's ``|r_w − r_l|`` by default (how confident is it where it is right or
    wrong?), or the annotated ``margins`` per pair when given (is it right on the clear pairs?).

    Returns:
        One row per bucket: ``{"lower", "upper", "count", "correct", "wrong", "ties", "accuracy"}``;
        ``accuracy`` counts ties (``ties``, a `tie_mask`; default exact equality) as 0.5 and is ``None``
        for an empty bucket. Every pair lands in a bucket: a margin outside ``[edges[0], edges[-1])`` is
        an error.
    """
    c, r = _pair(chosen, rejected)
    ties = (c == r) if ties is None else ties
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two strictly increasing numbers, got {edges}")
    if margins is None:
        m = (c - r).abs()
    else:
        m = _scores(margins)
        if m.numel() != c.numel():
            raise ValueError(
                f"margins has {m.numel()} values but there are {c.numel()} pairs; give one per pair"
            )
    outside = ((m < edges[0]) | (m >= edges[-1]) | torch.isnan(m)).nonzero().flatten()
    if outside.numel():
        raise ValueError(
            f"margin of pair(s) {outside[:5].tolist()} ({m[outside[:5]].tolist()}) lies outside the edges "
            f"[{edges[0]}, {edges[-1]}); widen edges"
        )
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        mask = (m >= lo) & (m < hi)
        cm, rm, tm = c[mask], r[mask], ties[mask]
        count = int(mask.sum())
        rows.append({"lower": lo, "upper": hi, "count": count, **_counts(cm, rm, tm),
                     "accuracy": float(_wins(cm, rm, tm).mean()) if count else None})
    return rows


def _counts(c: Tensor, r: Tensor, ties: Tensor) -> dict[str, int]:
    return {"correct": int(((c > r) & ~ties).sum()), "wrong": int(((c < r) & ~ties).sum()), "ties": int(ties.sum())}


def rm_report(
    chosen: Scores,
    rejected: Scores,
    subsets: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    identical: Sequence[bool] | None = None,
    tie_rtol: float = DEFAULT_TIE_RTOL,
    margins: Scores | None = None,
    bins: int = 10,
    edges: Sequence[float] = DEFAULT_EDGES,
    z: float = 1.96,
) -> dict[str, Any]:
    """Everything above for one reward model, as a JSON-ready dict.

    Returns::

        {"n": P, "correct", "wrong", "ties", "accuracy": a, "ci": [lo, hi], "ci_method": "wilson", "z": z,
         "tie_rule": {"rule", "rtol", "identical_pairs"}, "mean_margin": mean(r_w − r_l),
         "subsets": {name: {"n", "correct", "wrong", "ties", "accuracy", "ci"}, ...},   # {} without subsets
         "sections": rm_sections.section_scores(...) or None,
         "calibration": calibration(...), "margin_buckets": margin_buckets(...),
         "margin_source": "model" | "annotated", "extra": extra or {}}

    ``identical`` flags the pairs whose two responses are the same text (ties whatever their scores);
    ``tie_rtol`` the relative tolerance for near-equal rewards. The CI is Wilson's with ties as half a
    success; ``extra`` (model name, dataset, step, ...) is carried through and must be JSON-serialisable.
    """
    c, r = _pair(chosen, rejected)
    ties = tie_mask(c, r, identical, tie_rtol)
    wins = _wins(c, r, ties)

    def block(mask: Tensor) -> dict[str, Any]:
        k, acc = int(mask.sum()), float(wins[mask].mean())
        return {"n": k, **_counts(c[mask], r[mask], ties[mask]), "accuracy": acc,
                "ci": list(wilson_interval(acc * k, k, z))}

    by_subset: dict[str, dict[str, Any]] = {}
    if subsets is not None:
        names = [str(x) for x in subsets]
        if len(names) != c.numel():
            raise ValueError(f"subsets has {len(names)} names but there are {c.numel()} pairs; give one per pair")
        for name in sorted(set(names)):
            by_subset[name] = block(torch.tensor([x == name for x in names]))
    return {
        **block(torch.ones_like(ties)),
        "ci_method": "wilson",
        "z": z,
        "tie_rule": {"rule": TIE_RULE, "rtol": tie_rtol,
                     "identical_pairs": None if identical is None else int(sum(bool(x) for x in identical))},
        "mean_margin": float((c - r).mean()),
        "subsets": by_subset,
        "sections": section_scores(by_subset),
        "calibration": calibration(c, r, bins),
        "margin_buckets": margin_buckets(c, r, edges, margins, ties),
        "margin_source": "model" if margins is None else "annotated",
        "extra": dict(extra or {}),
    }


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def format_markdown(report: dict[str, Any]) -> str:
    """The Markdown text of ``report.md``: overall, per subset, calibration and margin-bucket tables."""
    lines = ["# Reward model evaluation", ""]
    for key, value in report.get("extra", {}).items():
        lines.append(f"- {key}: {value}")
    if report.get("extra"):
        lines.append("")
    lo, hi = report["ci"]
    rule = report["tie_rule"]
    lines += ["## Overall", ""]
    lines += _table(
        ["pairs", "correct", "wrong", "ties", "accuracy", f"CI low (Wilson, z={report['z']:g})", "CI high",
         "mean margin", "ECE"],
        [[report["n"], report["correct"], report["wrong"], report["ties"], report["accuracy"], lo, hi,
          report["mean_margin"], report["calibration"]["ece"]]],
    )
    same = "" if rule["identical_pairs"] is None else f"; {rule['identical_pairs']} pairs of identical responses"
    lines += ["", f"Ties count 0.5. A pair is a tie for {rule['rule']}, rtol = {rule['rtol']:g}{same}."]
    if report["subsets"]:
        lines += ["", "## Per subset", ""]
        rows = [[name, s["n"], s["correct"], s["wrong"], s["ties"], s["accuracy"], s["ci"][0], s["ci"][1]]
                for name, s in report["subsets"].items()]
        lines += _table(["subset", "pairs", "correct", "wrong", "ties", "accuracy", "CI low", "CI high"], rows)
    sec = report.get("sections")
    if sec:
        how = {"rewardbench": "RewardBench's sections and subset weights (Prior Sets at half weight)",
               "named": "sections named `section/subset`, subsets weighted by their pairs",
               "subsets": "every subset its own section"}[sec["scheme"]]
        lines += ["", "## Sections", "", f"{how}: section-weighted accuracy "
                  f"{_fmt(sec['section_weighted_accuracy'])}, subset-weighted (mean of the subsets) "
                  f"{_fmt(sec['subset_weighted_accuracy'])}, pair-weighted (overall) {_fmt(report['accuracy'])}.", ""]
        lines += _table(["section", "pairs", "accuracy", "weight in the mean", "subsets (weight)"],
                        [[name, s["n"], s["accuracy"], s["weight"],
                          ", ".join(f"{m} ({w:g})" for m, w in s["subsets"].items())] for name, s in sec["sections"].items()])
    cal = report["calibration"]
    lines += [
        "",
        "## Calibration",
        "",
        f"ECE {_fmt(cal['ece'])} over {cal['n']} points (each pair in both orders).",
        "",
    ]
    rows = [[b["lower"], b["upper"], b["count"], b["confidence"], b["accuracy"]] for b in cal["bins"]]
    lines += _table(["p low", "p high", "count", "mean confidence", "accuracy"], rows)
    source = "|r_w − r_l|" if report["margin_source"] == "model" else "annotated margin"
    lines += ["", "## Margin buckets", "", f"Bucketed by {source}; ties count 0.5 in accuracy.", ""]
    rows = [[m["lower"], m["upper"], m["count"], m["correct"], m["wrong"], m["ties"], m["accuracy"]]
            for m in report["margin_buckets"]]  # fmt: skip
    lines += _table(["margin low", "margin high", "count", "correct", "wrong", "ties", "accuracy"], rows)
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` (the dict, infinities as ``"inf"``) and ``report.md`` into ``out_dir``.

    Returns the two paths. ``out_dir`` is created if missing; existing reports are overwritten.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def clean(x: Any) -> Any:  # JSON has no Infinity: write edges like inf as a string
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps(clean(report), indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, format_markdown(report))
    return json_path, md_path
