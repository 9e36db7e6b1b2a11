"""alignkit's length-controlled win rate against AlpacaEval 2's published one, on AlpacaEval's own annotations.

The extract (``weighted_gpt4_turbo.json``, written by ``scripts/alpaca_eval_table.py --extract`` from a clone of
tatsu-lab/alpaca_eval; found by `fixture_path`) holds, for every system of the AlpacaEval 2 leaderboard whose
``weighted_alpaca_eval_gpt4_turbo`` annotations are public, the judge's soft preference and the answer
length of each comparison with the baseline (gpt4_1106_preview), plus the published numbers. `compare`
runs `alignkit.eval.lc_glm.length_controlled_glm` on them and lines the results up.

Instruction keys: AlpacaEval looks its instruction difficulty up by the *row position* of a system's
annotations (``df.reset_index()["index"]``), which is the instruction's own index only when no
annotation is missing. For the few systems with missing rows the published LC therefore used shifted
difficulties. ``keys="as_published"`` makes each system's own fit look γ up the same way (like for like;
γ itself is still estimated from comparisons keyed by their instruction); ``keys="prompt"`` keys
everything by instruction, as alignkit does for real data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from alignkit.eval.lc_glm import length_controlled_glm

FIXTURE_NAME = "weighted_gpt4_turbo.json"
THRESHOLDS = {"within": 1.5, "share_within": 0.90, "spearman": 0.98, "gamed": "gpt4_gamed", "gamed_within": 3.0}


def fixture_path() -> Path:
    """Where the extract is read from: ``$ALIGNKIT_ALPACA_EVAL`` (a file), else ``shared/alpaca_eval/`` beside
    the repository. It is data taken from another repository, so it is not committed to alignkit: the
    workplace's shared folder (or the user) holds it; `scripts/alpaca_eval_table.py --extract` writes it."""
    if env := os.environ.get("ALIGNKIT_ALPACA_EVAL"):
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "alpaca_eval" / FIXTURE_NAME


def load_fixture(path: str | Path | None = None) -> dict[str, Any]:
    return json.loads(Path(path or fixture_path()).read_text(encoding="utf-8"))


def _rows(fixture: dict[str, Any], name: str, keys: str) -> dict[str, Any]:
    s = fixture["systems"][name]
    n_all = len(fixture["baseline_length"])
    missing = set(s["missing"])
    present = [i for i in range(n_all) if i not in missing]
    base = fixture["baseline_length"]
    rows = {"outcomes": s["preference"], "length_diff": [s["length"][r] - base[i] for r, i in enumerate(present)],
            "prompts": present}
    if keys == "as_published":
        rows["difficulty_prompts"] = list(range(len(present)))
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> torch.Tensor:
        v = torch.tensor(x, dtype=torch.float64)
        order = torch.argsort(v)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in set(x):  # ties share their mean rank
            mask = v == value
            r[mask] = r[mask].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def compare(fixture: dict[str, Any] | None = None, keys: str = "as_published", **glm_kwargs: Any) -> dict[str, Any]:
    """alignkit's LC (×100) next to the published LC for every system but the baseline.

    Returns ``{"rows": [{"system", "n", "win_rate", "published_win_rate", "published_lc", "lc", "diff",
    "missing"}], "summary": {...}, "model": ...}`` (rows sorted by published LC, descending).
    """
    if keys not in ("as_published", "prompt"):
        raise ValueError(f"keys must be 'as_published' or 'prompt', got {keys!r}")
    fixture = fixture or load_fixture()
    names = [n for n in fixture["systems"] if n != fixture["baseline"]]
    out = length_controlled_glm({n: _rows(fixture, n, keys) for n in names}, **glm_kwargs)
    rows = []
    for n in names:
        s, pub = fixture["systems"][n], fixture["systems"][n]["published"]
        lc = 100 * out["systems"][n]["win_rate"]
        rows.append({"system": n, "n": len(s["preference"]), "win_rate": 100 * sum(s["preference"]) / len(s["preference"]),
                     "published_win_rate": pub["win_rate"], "published_lc": pub["lc"], "lc": lc,
                     "diff": lc - pub["lc"], "missing": len(s["missing"])})
    rows.sort(key=lambda r: -r["published_lc"])
    return {"rows": rows, "summary": summarise(rows), "model": out["model"], "keys": keys}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    diffs = sorted(abs(r["diff"]) for r in rows)
    mid = len(diffs) // 2
    median = diffs[mid] if len(diffs) % 2 else (diffs[mid - 1] + diffs[mid]) / 2
    gamed = next((r for r in rows if r["system"] == THRESHOLDS["gamed"]), None)
    return {"systems": len(rows), "max_abs_diff": diffs[-1], "median_abs_diff": median,
            "share_within": sum(d <= THRESHOLDS["within"] for d in diffs) / len(diffs),
            "spearman": spearman([r["lc"] for r in rows], [r["published_lc"] for r in rows]),
            "spearman_raw_win_rate": spearman([r["win_rate"] for r in rows], [r["published_lc"] for r in rows]),
            "gamed": None if gamed is None else {"system": gamed["system"], "lc": gamed["lc"],
                                                 "published_lc": gamed["published_lc"], "win_rate": gamed["win_rate"]}}


def markdown(result: dict[str, Any], prompt_keyed: dict[str, Any] | None = None) -> str:
    """The side-by-side table (and its summary line) as Markdown."""
    other = {r["system"]: r["lc"] for r in prompt_keyed["rows"]} if prompt_keyed else {}
    head = ["system", "comparisons", "win rate", "AlpacaEval LC", "alignkit LC", "difference"]
    if other:
        head.append("alignkit LC, prompt-keyed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        name = r["system"] + (f" ({r['missing']} missing)" if r["missing"] else "")
        cells = [name, str(r["n"]), f"{r['win_rate']:.2f}", f"{r['published_lc']:.2f}", f"{r['lc']:.2f}",
                 f"{r['diff']:+.2f}"]
        if other:
            cells.append(f"{other[r['system']]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_line(summary: dict[str, Any]) -> str:
    g = summary["gamed"]
    gamed = f"; {g['system']}: {g['lc']:.2f} (AlpacaEval {g['published_lc']:.2f})" if g else ""
    return (f"{summary['systems']} systems: max |difference| {summary['max_abs_diff']:.2f}, median "
            f"{summary['median_abs_diff']:.2f}, within 1.5 points {100 * summary['share_within']:.1f}%, Spearman "
            f"{summary['spearman']:.4f} (raw win rate: {summary['spearman_raw_win_rate']:.4f}){gamed}")


def passes(summary: dict[str, Any]) -> bool:
    g = summary["gamed"]
    return (summary["share_within"] >= THRESHOLDS["share_within"] and summary["spearman"] >= THRESHOLDS["spearman"]
            and g is not None and math.fabs(g["lc"] - g["published_lc"]) <= THRESHOLDS["gamed_within"])
