"""Look at a preference data set before training on it (`alignkit data inspect`).

`inspect_data` counts records, responses and label kinds; measures prompt and response lengths (tokens as
the trainer sees them when a tokenizer is given — chat template applied, EOS included in the response —
else whitespace-separated words); summarises ranks / scores / labels; measures length bias (over every
strictly ordered pair of responses of a record: how often the longer one is preferred); counts repeated
prompts and repeated records; and, with a tokenizer and ``max_length``, how much truncation that limit
would cause. `Inspection.save` writes ``inspection.json`` and PNG histograms; `format_table` prints it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.data.dataset import prompt_key
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig, tokenize_record
from alignkit.data.tools.common import plain, progress, record_key, write_json
from alignkit.data.transforms_common import goodness, kind_of
from alignkit.errors import ConfigError, DataError
from alignkit.io_atomic import atomic_path


@dataclass
class Inspection:
    """``report`` (JSON-able numbers) plus the raw lengths and scores the histograms are drawn from."""

    report: dict[str, Any]
    prompt_lengths: list[int] = field(default_factory=list)
    response_lengths: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """``inspection.json``, ``prompt_lengths.png``, ``response_lengths.png`` (and ``scores.png``)."""
        out = Path(out_dir)
        paths = [write_json(self.report, out / "inspection.json")]
        unit = self.report["length_unit"]
        paths.append(_histogram(self.prompt_lengths, f"prompt length ({unit})", out / "prompt_lengths.png"))
        paths.append(_histogram(self.response_lengths, f"response length ({unit})", out / "response_lengths.png"))
        if self.scores:
            paths.append(_histogram(self.scores, "score (scalar scores)", out / "scores.png"))
        return paths


def stats(values: list[float]) -> dict[str, float] | None:
    """count, min, mean, p50, p90, p99, max (numpy's linear-interpolated percentiles); None if empty."""
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    out = {"count": len(a), "min": a.min(), "mean": a.mean(), "p50": p50, "p90": p90, "p99": p99, "max": a.max()}
    return {k: (int(v) if k == "count" else round(float(v), 4)) for k, v in out.items()}


def _lengths(records, tokenizer, chat_template: str, show: bool) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Per record: prompt length, each response's length, each full (prompt + response) length."""
    prompts, responses, fulls = [], [], []
    config = TokenizeConfig(max_length=None, chat_template=chat_template)
    for i, rec in enumerate(progress(records, show, "inspect", len(records), "record")):
        if tokenizer is None:
            p = len(plain(rec.prompt).split()) + (len(rec.system.split()) if rec.system else 0)
            rs = [len(plain(r).split()) for r in rec.responses]
            prompts.append(p), responses.append(rs), fulls.append([p + r for r in rs])
            continue
        tr = tokenize_record(rec, tokenizer, config, index=i)
        prompts.append(len(tr.prompt_ids))
        responses.append([len(s) - st for s, st in zip(tr.segments, tr.score_start)])
        fulls.append([len(tr.prompt_ids) + len(s) for s in tr.segments])
    return prompts, responses, fulls


def _labels(records: list[PreferenceRecord]) -> tuple[dict[str, Any], list[float]]:
    out: dict[str, Any] = {}
    ranked = [r for r in records if r.ranks is not None]
    if ranked:
        values = Counter(str(v) for r in ranked for v in r.ranks)
        out["ranks"] = {"records": len(ranked), "values": dict(sorted(values.items())),
                        "records_with_ties": sum(len(set(r.ranks)) < r.k for r in ranked if r.k > 1)}  # fmt: skip
    scalar = [r for r in records if kind_of(r) == "scalar scores"]
    flat = [float(s) for r in scalar for s in r.scores]
    if scalar:
        out["scores"] = {"records": len(scalar), "stats": stats(flat),
                         "records_with_ties": sum(len(set(r.scores)) < r.k for r in scalar if r.k > 1)}  # fmt: skip
    vector = [r for r in records if kind_of(r) == "vector scores"]
    if vector:
        dims = zip(*[s for r in vector for s in r.scores])
        out["score_vectors"] = {"records": len(vector), "per_dimension": [stats(list(d)) for d in dims]}
    labelled = [v for r in records if r.labels is not None for v in r.labels]
    if labelled:
        out["labels"] = {"desirable": sum(labelled), "undesirable": len(labelled) - sum(labelled)}
    return out, flat


def length_bias(records: list[PreferenceRecord], lengths: list[list[int]]) -> dict[str, Any] | None:
    """Over every strictly ordered response pair (ranks or scalar scores): is the preferred one longer?

    ``longer_preferred_rate`` = longer_preferred / (longer_preferred + shorter_preferred): 0.5 is no bias;
    pairs of equal length are counted apart. For label records: mean length of desirable vs undesirable.
    """
    c, chosen, rejected = Counter(), [], []
    for rec, ls in zip(records, lengths):
        if kind_of(rec) not in ("ranks", "scalar scores"):
            continue
        g = goodness(rec)
        for i in range(rec.k):
            for j in range(i + 1, rec.k):
                if g[i] == g[j]:
                    continue
                w, l = (i, j) if g[i] > g[j] else (j, i)
                c["pairs"] += 1
                c["longer_preferred" if ls[w] > ls[l] else "shorter_preferred" if ls[w] < ls[l] else "same_length"] += 1
                chosen.append(ls[w]), rejected.append(ls[l])
    out: dict[str, Any] = {}
    if c["pairs"]:
        decided = c["longer_preferred"] + c["shorter_preferred"]
        out.update({k: c[k] for k in ("pairs", "longer_preferred", "shorter_preferred", "same_length")})
        out["longer_preferred_rate"] = round(c["longer_preferred"] / decided, 4) if decided else None
        out["mean_length_preferred"] = round(float(np.mean(chosen)), 4)
        out["mean_length_dispreferred"] = round(float(np.mean(rejected)), 4)
    good = [n for rec, ls in zip(records, lengths) if rec.labels for n, ok in zip(ls, rec.labels) if ok]
    bad = [n for rec, ls in zip(records, lengths) if rec.labels for n, ok in zip(ls, rec.labels) if not ok]
    if good or bad:
        out["mean_length_desirable"] = round(float(np.mean(good)), 4) if good else None
        out["mean_length_undesirable"] = round(float(np.mean(bad)), 4) if bad else None
    return out or None


def duplicates(records: list[PreferenceRecord]) -> dict[str, Any]:
    """Exact repeats: records whose (system, prompt) appeared before, and records repeated whole
    (same system, prompt, responses and labels; id, weight and meta are not compared)."""
    n = len(records)
    distinct_prompts = len({prompt_key(r) for r in records})
    distinct_records = len({record_key(r) for r in records})
    return {"distinct_prompts": distinct_prompts, "repeated_prompt_records": n - distinct_prompts,
            "repeated_prompt_rate": round((n - distinct_prompts) / n, 4),
            "duplicate_records": n - distinct_records, "duplicate_record_rate": round((n - distinct_records) / n, 4)}  # fmt: skip


def truncation(fulls: list[list[int]], max_length: int) -> dict[str, Any]:
    """What ``max_length`` (tokens of prompt + one response) would cut."""
    seqs = [n for ls in fulls for n in ls]
    over = [n for n in seqs if n > max_length]
    return {"max_length": max_length, "sequences": len(seqs), "sequences_over": len(over),
            "sequences_over_rate": round(len(over) / len(seqs), 4),
            "records_over": sum(any(n > max_length for n in ls) for ls in fulls),
            "tokens_cut": sum(n - max_length for n in over), "tokens_cut_rate": round(sum(n - max_length for n in over) / sum(seqs), 4)}  # fmt: skip


def inspect_data(records: list[PreferenceRecord], *, tokenizer=None, max_length: int | None = None,
                 chat_template: str = "auto", show_progress: bool = False) -> Inspection:  # fmt: skip
    """All statistics of ``records`` (see the module docstring). ``max_length`` needs a ``tokenizer``."""
    if not records:
        raise DataError("inspect: no records")
    if max_length is not None and tokenizer is None:
        raise ConfigError("inspect: --max-length needs --tokenizer (truncation is counted in tokens)")
    prompts, responses, fulls = _lengths(records, tokenizer, chat_template, show_progress)
    flat = [n for ls in responses for n in ls]
    labels, scores = _labels(records)
    name = getattr(tokenizer, "name_or_path", "") if tokenizer is not None else ""
    report = {
        "records": len(records), "responses": len(flat),
        "k": {str(k): n for k, n in sorted(Counter(r.k for r in records).items())},
        "label_kinds": dict(Counter(kind_of(r) for r in records)),
        "chat_prompts": sum(r.is_chat for r in records), "with_system": sum(r.system is not None for r in records),
        "length_unit": f"tokens ({name or 'tokenizer'})" if tokenizer is not None else "whitespace words",
        "prompt_length": stats(prompts), "response_length": stats(flat),
        "labels": labels, "length_bias": length_bias(records, responses), "duplicates": duplicates(records),
        "truncation": truncation(fulls, max_length) if max_length is not None else None,
    }  # fmt: skip
    return Inspection(report, prompts, flat, scores)


def _histogram(values: list[float], label: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=min(50, max(1, len(set(values)))), color="#4c72b0")
    ax.set_xlabel(label)
    ax.set_title(f"{len(values)} values, mean {sum(values) / len(values):.4g}", fontsize=10)
    ax.set_ylabel("count")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _fmt(stats_: dict[str, float] | None) -> str:
    if not stats_:
        return "-"
    return "  ".join(f"{k} {stats_[k]:g}" for k in ("min", "mean", "p50", "p90", "p99", "max"))


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table for the console."""
    rows = [("records", report["records"]), ("responses", report["responses"]),
            ("K (responses per record)", ", ".join(f"{k}: {n}" for k, n in report["k"].items())),
            ("label kinds", ", ".join(f"{k}: {n}" for k, n in report["label_kinds"].items())),
            ("chat prompts", report["chat_prompts"]), ("with system prompt", report["with_system"]),
            ("length unit", report["length_unit"]),
            ("prompt length", _fmt(report["prompt_length"])), ("response length", _fmt(report["response_length"]))]  # fmt: skip
    for kind, info in report["labels"].items():
        rows.append((kind, ", ".join(f"{k} {_fmt(v) if isinstance(v, dict) and 'mean' in v else v}"
                                     for k, v in info.items())))  # fmt: skip
    for k, v in (report["length_bias"] or {}).items():
        rows.append((f"length bias: {k}", v))
    rows.extend((f"duplicates: {k}", v) for k, v in report["duplicates"].items())
    rows.extend((f"truncation: {k}", v) for k, v in (report["truncation"] or {}).items())
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
