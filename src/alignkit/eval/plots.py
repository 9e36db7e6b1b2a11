"""The report's matplotlib figures, each returned as PNG bytes (the HTML report embeds them as data URIs).

Every function draws with the Agg backend (no display needed) and closes its figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def frontier(rows: Sequence[dict[str, Any]], ylabel: str, kl_key: str = "k1") -> bytes:
    """Reward (``row["y"]`` ± ``row["y_ci"]``) vs KL (``row[kl_key]`` ± ``row[kl_key + "_ci"]``), one point per
    system; the Pareto-optimal points (``row["pareto"]``: no other point has lower KL and higher reward) are
    joined by a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for n, r in enumerate(sorted(rows, key=lambda r: (r[kl_key], r["y"]))):
        xerr = r.get(f"{kl_key}_ci") if _finite(r.get(f"{kl_key}_ci")) else None
        yerr = r.get("y_ci") if _finite(r.get("y_ci")) else None
        ax.errorbar([r[kl_key]], [r["y"]], xerr=xerr, yerr=yerr, fmt="s" if r.get("is_reference") else "o",
                    capsize=3, color="grey" if r.get("is_reference") else None)
        offset = (6, 5) if n % 2 == 0 else (6, -12)  # alternate sides so close neighbours stay readable
        ax.annotate(r["name"], (r[kl_key], r["y"]), textcoords="offset points", xytext=offset, fontsize=8)
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r[kl_key])
    if len(front) > 1:
        ax.plot([r[kl_key] for r in front], [r["y"] for r in front], "-", color="black", lw=1, alpha=0.6,
                label="Pareto frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"KL(π ‖ π_ref) per sample, nats ({kl_key} estimate, 95% CI)")
    ax.set_ylabel(ylabel)
    ax.set_title("Reward–KL frontier")
    ax.grid(alpha=0.3)
    return _png(fig)


def win_rates(rows: Sequence[dict[str, Any]], baseline: str) -> bytes:
    """Horizontal bars of each system's win rate over ``baseline`` with Wilson (thick) and bootstrap (thin)
    95% intervals, and the length-controlled win rate as a diamond."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.6))
    for k, r in enumerate(rows):
        w = r["win_rate"]
        ax.barh(k, w["win_rate"], color="#7aa6d6", height=0.6)
        lo, hi = w["wilson"]
        ax.plot([lo, hi], [k, k], color="black", lw=2.5, solid_capstyle="butt")
        blo, bhi = w["bootstrap"]
        ax.plot([blo, bhi], [k + 0.18, k + 0.18], color="#444", lw=1)
        if w.get("length_controlled"):
            ax.plot([w["length_controlled"]["win_rate"]], [k], "D", color="#d62728", ms=5)
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"win rate over {baseline} (ties count ½)")
    handles = [Line2D([], [], color="black", lw=2.5, label="Wilson 95%"),
               Line2D([], [], color="#444", lw=1, label="bootstrap 95% (by prompt)"),
               Line2D([], [], marker="D", color="#d62728", ls="", ms=5, label="length-controlled")]
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    ax.invert_yaxis()
    return _png(fig)


def leaderboard(board: Sequence[dict[str, Any]]) -> bytes:
    """Bradley–Terry ratings on the Elo scale with bootstrap 95% intervals (best on top), online Elo as ×."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(board) + 1.4))
    for k, r in enumerate(board):
        lo, hi = r["bt_elo_ci"]
        err = [[r["bt_elo"] - lo], [hi - r["bt_elo"]]] if _finite(lo) and _finite(hi) else None
        ax.errorbar([r["bt_elo"]], [k], xerr=err, fmt="o", color="#1f77b4", capsize=3)
        ax.plot([r["elo"]], [k], "x", color="#d62728")
    ax.set_yticks(range(len(board)), [f"{r['rank']}. {r['system']}" for r in board])
    ax.invert_yaxis()
    ax.set_xlabel("rating (Bradley–Terry on the Elo scale, 95% bootstrap CI; × online Elo)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def histograms(values: dict[str, Sequence[float]], xlabel: str, title: str, bins: int = 20) -> bytes:
    """Overlaid step histograms (shared bins, densities) of one quantity per system."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    flat = [v for vs in values.values() for v in vs if _finite(v)]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    for name, vs in values.items():
        ax.hist([v for v in vs if _finite(v)], bins=edges, histtype="step", lw=1.5, density=True, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def training_curves(runs: dict[str, Sequence[dict[str, Any]]], keys: Sequence[str]) -> bytes:
    """One panel per metric key (loss, rewards/margin, KL, eval/...), one line per run, against the step."""
    plt = _plt()
    cols = 2 if len(keys) > 1 else 1
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key)) and "step" in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o" if len(pts) < 12 else "-", ms=3, lw=1.2,
                        label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    return _png(fig)


def idealised_ranking(curve: Sequence[tuple[float, float]], reference: float,
                      models: Sequence[tuple[str, float, float]]) -> bytes:
    """The idealised ranking accuracy against β (``curve``: (β, accuracy), log-scale β), the reference's own
    accuracy as a dashed line, and each model's observed accuracy at its β (``models``: (name, β, accuracy))."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "-", color="#1f77b4", lw=1.5,
            label="idealised (DPO optimum at β)")
    ax.axhline(reference, color="grey", ls="--", lw=1, label="reference model")
    for n, (name, beta, acc) in enumerate(models):
        ax.plot([beta], [acc], "o", color="#d62728", ms=5, label="observed (each model at its β)" if n == 0 else None)
        ax.annotate(name, (beta, acc), textcoords="offset points", xytext=(5, -10 if n % 2 else 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("β")
    ax.set_ylabel("ranking accuracy: log π(y_w) > log π(y_l)")
    ax.set_title("Idealised vs observed ranking accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def shift_bars(shares: dict[str, Sequence[float]], classes: Sequence[str]) -> bytes:
    """Horizontal stacked bars, one per model: the share of answer positions in each of ``classes``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(shares) + 1.6))
    colours = ("#7aa6d6", "#f2b447", "#d62728")
    for k, vals in enumerate(shares.values()):
        left = 0.0
        for n, (cls, v) in enumerate(zip(classes, vals)):
            ax.barh(k, v, left=left, color=colours[n % len(colours)], height=0.6, label=cls if k == 0 else None)
            left += v
    ax.set_yticks(range(len(shares)), list(shares))
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answer positions, by the base model's rank of the token")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(classes), frameon=False)
    ax.invert_yaxis()
    return _png(fig)
