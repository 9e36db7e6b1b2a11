"""Select a subset of candidate records (`alignkit data select`): ZIP-FIT, Deita, MIG, and random / length baselines.

ZIP-FIT (Obbad et al. 2024, https://arxiv.org/abs/2410.18194) ranks candidates by how well they align
with a target set, measured by gzip: the normalised compression distance

    NCD(x, y) = (C(x + y) - min(C(x), C(y))) / max(C(x), C(y)),    C = len(gzip.compress(.))

is about 0 for identical texts and about 1 for unrelated ones. A candidate's score is its mean
alignment ``1 - NCD`` to the target examples; the top fraction is kept. Baselines: ``random`` (a seeded
uniform sample) and ``length`` (the longest texts, a strong baseline for instruction data: Zhao et al.
2024, "Long Is More for Alignment"). ``deita`` (scorer models' complexity × quality, then a diversity filter)
and ``mig`` (greedy information gain over the records' labels) are in `alignkit.data.tools.selection_scored`.
Kept records stay in their input order.
"""

from __future__ import annotations

import gzip
import math
import random
from dataclasses import dataclass
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.tools import selection_scored as scored
from alignkit.data.tools.common import progress, record_text
from alignkit.errors import ConfigError, DataError

METHODS = ("zipfit", "deita", "mig", "random", "length")


def compressed_size(text: str) -> int:
    """Bytes of ``gzip.compress(text, level 9)`` (``mtime=0``: the same bytes every run)."""
    return len(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def ncd(x: str, y: str, cx: int | None = None, cy: int | None = None) -> float:
    """Normalised compression distance of two texts (``cx``/``cy``: their compressed sizes, if known)."""
    cx = compressed_size(x) if cx is None else cx
    cy = compressed_size(y) if cy is None else cy
    return (compressed_size(x + y) - min(cx, cy)) / max(cx, cy)


def zipfit_scores(candidates: list[str], targets: list[str], show_progress: bool = False) -> list[float]:
    """Each candidate's mean ``1 - NCD`` to the targets (higher = closer to the target distribution)."""
    if not targets:
        raise DataError("zipfit needs at least one target text")
    target_sizes = [compressed_size(t) for t in targets]
    scores = []
    for x in progress(candidates, show_progress, "zipfit", len(candidates), "record"):
        cx = compressed_size(x)
        scores.append(sum(1 - ncd(x, t, cx, ct) for t, ct in zip(targets, target_sizes)) / len(targets))
    return scores


@dataclass
class Selection:
    kept: list[PreferenceRecord]
    scores: list[float]  # one per input record (random: the uniform draw; length: characters)
    ranking: list[int]  # input indices, best first
    report: dict[str, Any]
    ids: list[str | None]

    def score_rows(self) -> list[dict[str, Any]]:
        """One row per input record, best first: rank, index (0-based input position), id, score, kept."""
        n_kept = self.report["records_out"]
        return [{"rank": r, "index": i, "id": self.ids[i], "score": round(self.scores[i], 6), "kept": r < n_kept}
                for r, i in enumerate(self.ranking)]  # fmt: skip


def _how_many(n: int, fraction: float | None, count: int | None) -> int:
    if (fraction is None) == (count is None):
        raise ConfigError("select: give exactly one of fraction (e.g. 0.1) or n (a number of records)")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"select: fraction must be in (0, 1], got {fraction}")
        return max(1, math.ceil(fraction * n))
    if count < 1:
        raise ConfigError(f"select: n must be >= 1, got {count}")
    return min(count, n)


def select(records: list[PreferenceRecord], *, method: str = "zipfit", fraction: float | None = None,
           n: int | None = None, targets: list[str] | None = None, text: str = "all", max_targets: int | None = None,
           seed: int = 0, show_progress: bool = False, scorer=None, quality_scorer=None, embedder=None,
           diversity_threshold: float = 0.9, tags_key: str = "tags", quality_key: str | None = None,
           label_threshold: float = 0.9, mig_exponent: float = 0.8) -> Selection:  # fmt: skip
    """Keep the best ``fraction`` (or ``n``) of ``records`` by ``method``; ties keep the earlier record.

    ``text`` is the part of each record compared (``all``, ``prompt`` or ``responses``); ``targets`` are
    target texts (zipfit only), of which at most ``max_targets`` (a seeded sample) are used. ``deita``:
    ``scorer`` / ``quality_scorer`` (model folders or ``(model, tokenizer)``), ``embedder`` and
    ``diversity_threshold`` (>= 1: no diversity filter). ``mig``: labels in ``meta[tags_key]``, quality in
    ``meta[quality_key]``, a label graph from ``embedder`` at ``label_threshold``, Φ's exponent ``mig_exponent``.
    """
    if method not in METHODS:
        raise ConfigError(f"select: method must be one of {', '.join(METHODS)}, got {method!r}")
    if not records:
        raise DataError("select: no records")
    keep = _how_many(len(records), fraction, n)
    texts = [record_text(r, text) for r in records]
    report: dict[str, Any] = {"method": method, "text": text}
    if method == "zipfit":
        if not targets:
            raise ConfigError("select: method zipfit needs target texts (--target FILE)")
        if max_targets is not None and len(targets) > max_targets:
            targets = random.Random(seed).sample(list(targets), max_targets)
        scores = zipfit_scores(texts, list(targets), show_progress)
        report["targets"] = len(targets)
    elif method == "random":
        rng = random.Random(seed)
        scores = [rng.random() for _ in records]
        report["seed"] = seed
    elif method == "deita":
        scores, report["scores_from"] = scored.deita_scores(records, scorer, quality_scorer)
        use = embedder or scorer if diversity_threshold < 1 else None
        if diversity_threshold < 1 and use is None:
            raise ConfigError("select: deita's diversity filter needs --embedder MODEL (or --diversity-threshold 1)")
        emb = scored.embed(*scored.load_scorer(use), texts) if use is not None else None
        ranking = scored.diverse_order(scores, emb, diversity_threshold, keep)
        report["diversity_threshold"] = diversity_threshold
    elif method == "mig":
        vectors, labels = scored.label_vectors(records, tags_key, quality_key)
        p = scored.propagation(scored.label_graph(labels, embedder, label_threshold))
        ranking, scores = scored.mig_order(vectors, p, keep, b=mig_exponent)
        report.update(labels=len(labels), label_graph_edges=int((p > 0).sum() - len(labels)))
    else:
        scores = [float(len(t)) for t in texts]
    if method not in ("deita", "mig"):  # a plain sort; deita and mig give their own selection order
        ranking = sorted(range(len(records)), key=lambda i: (-scores[i], i))
    chosen = sorted(ranking[:keep])
    kept_scores = [scores[i] for i in chosen]
    report.update(records_in=len(records), records_out=keep, dropped=len(records) - keep,
                  mean_score_all=round(sum(scores) / len(scores), 6),
                  mean_score_kept=round(sum(kept_scores) / keep, 6), lowest_kept_score=round(min(kept_scores), 6))
    return Selection([records[i] for i in chosen], scores, ranking, report, [r.id for r in records])
