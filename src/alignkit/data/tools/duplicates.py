"""Exact and near-duplicate prompts (`alignkit data dedup`).

Records are taken in order; the first record of a prompt is kept, and a later record is removed when

* ``exact_record`` — its system prompt, prompt, responses and labels all equal a kept record's;
* ``exact_prompt`` — its prompt text equals a kept record's after `normalize` (NFKC, case-folded,
  whitespace collapsed). With ``keep_same_prompt=True`` a record whose prompt is *identical* (before
  normalising) to a kept one's is kept: several pairs of one prompt are not duplicates then;
* ``near_prompt`` — the Jaccard similarity of its prompt's shingle set (character 5-grams or word
  3-grams of the normalised text) with a kept prompt's is at least ``threshold``.

Near duplicates are found with MinHash + LSH banding (implemented here in numpy: no extra dependency)
and then *verified* with the exact Jaccard similarity, so nothing is removed on an estimate. The bands
are chosen so that a pair exactly at ``threshold`` becomes a candidate with probability >= 0.999
(`lsh_bands`); pairs above it more surely still. Every removal is reported: which kept record it
duplicates and the similarity.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignkit.data.dataset import prompt_key
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tools.common import normalize, progress, prompt_text, record_key
from alignkit.errors import ConfigError

SHINGLES = ("char", "word")
DEFAULT_NGRAM = {"char": 5, "word": 3}
_PRIME = (1 << 61) - 1  # Mersenne prime of the universal hash family (a*x + b) mod p


def shingles(text: str, kind: str = "char", n: int | None = None) -> set[str]:
    """Character n-grams or word n-grams of ``normalize(text)``; a text shorter than n is one shingle."""
    if kind not in SHINGLES:
        raise ValueError(f"shingle must be one of {', '.join(SHINGLES)}, got {kind!r}")
    n = n or DEFAULT_NGRAM[kind]
    units: Any = normalize(text) if kind == "char" else normalize(text).split()
    join = "".join if kind == "char" else " ".join
    if len(units) <= n:
        return {join(units)}
    return {join(units[i : i + n]) for i in range(len(units) - n + 1)}


def hashed(shingle_set: set[str]) -> frozenset[int]:
    """32-bit CRC of each shingle (deterministic across runs, unlike ``hash``)."""
    return frozenset(zlib.crc32(s.encode("utf-8")) for s in shingle_set)


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


class MinHash:
    """``num_perm`` hash functions ``h_i(x) = (a_i x + b_i) mod (2^61 - 1)``; a signature is their minima.

    For two sets, P[signature_i(A) == signature_i(B)] = Jaccard(A, B). With ``a, b < 2^31`` and 32-bit
    ``x`` the products stay below 2^64, so uint64 arithmetic is exact.
    """

    def __init__(self, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 1 << 31, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, num_perm, dtype=np.uint64)

    def signature(self, hashes: frozenset[int]) -> np.ndarray:
        x = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) such that a pair with Jaccard
    ``threshold`` shares at least one band with probability ``1 - (1 - t^rows)^bands >= 0.999``."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.999:
            return bands, rows
    return num_perm, 1


class _Index:
    """Kept prompts in LSH buckets; `best` returns the most similar kept one at or above the threshold."""

    def __init__(self, threshold: float, num_perm: int, seed: int):
        self.hasher = MinHash(num_perm, seed)
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.sets: dict[int, frozenset[int]] = {}
        self.threshold = threshold
        self.candidates = 0

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[b * self.rows : (b + 1) * self.rows].tobytes() for b in range(self.bands)]

    def best(self, hashes: frozenset[int]) -> tuple[int | None, float, list[bytes]]:
        keys = self._keys(self.hasher.signature(hashes))
        found = {j for band, key in zip(self.buckets, keys) for j in band.get(key, ())}
        self.candidates += len(found)
        scored = sorted(((jaccard(hashes, self.sets[j]), -j) for j in found), reverse=True)
        if scored and scored[0][0] >= self.threshold:
            return -scored[0][1], scored[0][0], keys
        return None, 0.0, keys

    def add(self, i: int, hashes: frozenset[int], keys: list[bytes]) -> None:
        self.sets[i] = hashes
        for band, key in zip(self.buckets, keys):
            band.setdefault(key, []).append(i)


@dataclass
class DedupResult:
    kept: list[PreferenceRecord]
    removed: list[dict[str, Any]]  # one row per removed record: index, reason, duplicate_of, similarity, ...
    report: dict[str, Any]


def _removal(records, i: int, j: int, reason: str, similarity: float) -> dict[str, Any]:
    return {"index": i, "id": records[i].id, "reason": reason, "duplicate_of": j, "duplicate_of_id": records[j].id,
            "similarity": round(similarity, 4), "prompt": prompt_text(records[i])[:300],
            "duplicate_of_prompt": prompt_text(records[j])[:300]}  # fmt: skip


def dedup(records: list[PreferenceRecord], *, near: bool = True, threshold: float = 0.8, shingle: str = "char",
          ngram: int | None = None, num_perm: int = 128, keep_same_prompt: bool = False, seed: int = 0,
          show_progress: bool = False) -> DedupResult:  # fmt: skip
    """Remove duplicate records and prompts (rules in the module docstring); indices are 0-based positions
    in ``records``. The result's ``removed`` rows say why each record went and which kept one it repeats."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"dedup: threshold must be in (0, 1], got {threshold}")
    if shingle not in SHINGLES:
        raise ConfigError(f"dedup: shingle must be one of {', '.join(SHINGLES)}, got {shingle!r}")
    index = _Index(threshold, num_perm, seed)
    by_record: dict[str, int] = {}
    by_text: dict[str, int] = {}
    kept, removed = [], []
    for i, rec in enumerate(progress(records, show_progress, "dedup", len(records), "record")):
        rk, text = record_key(rec), normalize(prompt_text(rec))
        j, reason, sim, keys, hashes = by_record.get(rk), "exact_record", 1.0, None, None
        if j is None and (j := by_text.get(text)) is not None:
            reason = "exact_prompt"
            if keep_same_prompt and prompt_key(rec) == prompt_key(records[j]):
                j = None
        elif j is None and near:
            hashes = hashed(shingles(text, shingle, ngram))
            j, sim, keys = index.best(hashes)
            reason = "near_prompt"
        if j is not None:
            removed.append(_removal(records, i, j, reason, sim))
            continue
        kept.append(rec)
        by_record[rk] = i
        if text not in by_text:
            by_text[text] = i
            if near:
                hashes = hashes or hashed(shingles(text, shingle, ngram))
                index.add(i, hashes, keys or index._keys(index.hasher.signature(hashes)))
    why = Counter(r["reason"] for r in removed)
    report = {"records_in": len(records), "records_out": len(kept), "removed": dict(sorted(why.items())),
              "near": near, "threshold": threshold, "shingle": shingle, "ngram": ngram or DEFAULT_NGRAM[shingle],
              "num_perm": num_perm, "bands": index.bands, "rows": index.rows, "lsh_candidates": index.candidates,
              "keep_same_prompt": keep_same_prompt}  # fmt: skip
    return DedupResult(kept, removed, report)
