"""PORTIA: split-and-merge correction of a pairwise judge's position bias.

Li, Wang, Ma, Wu, Wang, Gao & Liu, "Split and Merge: Aligning Position Biases in LLM-based Evaluators"
(EMNLP 2024, https://arxiv.org/abs/2310.01432). A judge reading two long answers one after the other
favours a position; shown the answers cut into aligned parts and interleaved (part 1 of A, part 1 of B,
part 2 of A, ...), it compares like with like, side by side.

alignkit applies it to the comparisons whose plain verdict flips when the answers swap places (a
consistent verdict has no position bias to correct, and the extra judge calls stay proportional to the
inconsistency):

1. **Split points**: ends of sentences (``.``, ``!``, ``?`` before white space) and of lines, never inside
   a fenced code block; the parts of an answer concatenate back to it exactly.
2. **Length alignment**: each answer cut into ``k`` parts at the split points nearest to ``i/k`` of its
   length; the merged question is asked in both orders. A consistent verdict ends it.
3. **Semantic alignment** otherwise: among the split points (at most ``max_points`` per answer, evenly
   thinned) the cuts whose corresponding parts are most alike (mean cosine similarity of their word
   counts) are asked in both orders, and those verdicts stand, consistent or not (still inconsistent:
   the order-averaged outcome is a tie, as without PORTIA).

``k`` is lowered to what both answers can be cut into; an answer without a split point cannot be split
and its comparison keeps the plain verdict ("unsplittable").
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from alignkit.data.schema import Text

_END = re.compile(r"(?<=[.!?])[ \t]+|\n+")
_WORD = re.compile(r"\w+")


def split_points(text: str) -> list[int]:
    """Offsets where ``text`` may be cut: after a sentence end's white space or a run of newlines, outside
    fenced code blocks (````` ``` `````), strictly inside the text."""
    fenced, pos = [], 0
    while (start := text.find("```", pos)) != -1:
        end = text.find("```", start + 3)
        end = len(text) if end == -1 else end + 3
        fenced.append((start, end))
        pos = end
    return [m.end() for m in _END.finditer(text)
            if 0 < m.end() < len(text) and not any(a < m.end() < b for a, b in fenced)]


def cut(text: str, points: Sequence[int]) -> list[str]:
    """``text`` cut at ``points`` (increasing offsets)."""
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:])]


def length_cuts(text: str, k: int) -> list[int]:
    """The ``k − 1`` split points nearest to ``i/k`` of the length, increasing and distinct."""
    points, chosen = split_points(text), []
    for i in range(1, k):
        target = i * len(text) / k
        free = [p for p in points if not chosen or p > chosen[-1]]
        free = free[:len(free) - (k - 1 - i)] if k - 1 - i else free  # leave room for the cuts still to come
        chosen.append(min(free, key=lambda p: (abs(p - target), p)))
    return chosen


def _similarity(x: str, y: str) -> float:
    a, b = Counter(w.lower() for w in _WORD.findall(x)), Counter(w.lower() for w in _WORD.findall(y))
    dot = sum(v * b[w] for w, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def _thin(points: list[int], limit: int) -> list[int]:
    if len(points) <= limit:
        return points
    return [points[round(i * (len(points) - 1) / (limit - 1))] for i in range(limit)]


def semantic_cuts(a: str, b: str, k: int, max_points: int = 12) -> tuple[list[int], list[int]]:
    """Cuts of ``a`` and ``b`` into ``k`` parts each maximising the mean word-count cosine similarity of
    corresponding parts (ties: the more length-balanced). Searches ``C(m_a, k−1)·C(m_b, k−1)`` pairs."""
    pa, pb = _thin(split_points(a), max_points), _thin(split_points(b), max_points)
    best, best_key = None, None
    for ca in itertools.combinations(pa, k - 1):
        parts_a = cut(a, ca)
        for cb in itertools.combinations(pb, k - 1):
            parts_b = cut(b, cb)
            sim = sum(_similarity(x, y) for x, y in zip(parts_a, parts_b)) / k
            balance = -sum(abs(len(x) / max(len(a), 1) - len(y) / max(len(b), 1)) for x, y in zip(parts_a, parts_b))
            key = (round(sim, 12), balance)
            if best_key is None or key > best_key:
                best, best_key = (list(ca), list(cb)), key
    return best


def merge(parts_first: Sequence[str], parts_second: Sequence[str], labels: tuple[str, str] = ("A", "B")) -> str:
    """The interleaved answers: part 1 of the first, part 1 of the second, part 2 of the first, ..."""
    k = len(parts_first)
    blocks = []
    for i, (x, y) in enumerate(zip(parts_first, parts_second), 1):
        blocks.append(f"Answer {labels[0]}, part {i} of {k}: {x.strip()}")
        blocks.append(f"Answer {labels[1]}, part {i} of {k}: {y.strip()}")
    return "\n\n".join(blocks)


def _verdict(p: float) -> float:
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


def correct(judge, prompts: Sequence[Text], a: Sequence[str], b: Sequence[str], p_ab: Sequence[float],
            p_ba: Sequence[float], parts: int = 3, max_points: int = 12) -> dict[str, Any]:
    """PORTIA on the comparisons whose plain verdicts (``p_ab``: A shown first, ``p_ba``: B shown first)
    disagree; ``judge.prefer_first_parts(prompts, parts_first, parts_second)`` asks the merged question.

    Returns ``{"p_ab", "p_ba"`` (every comparison: the plain value, or the last PORTIA attempt's),
    ``"method"`` (per comparison: ``plain``, ``length``, ``semantic`` or ``unsplittable``), ``"rejudged"``,
    ``"fixed"`` (re-judged and now consistent), ``"calls"`` (extra questions asked), ``"parts"}``.
    """
    if parts < 2:
        raise ValueError(f"PORTIA splits each answer into parts >= 2, got {parts}")
    new_ab, new_ba = list(p_ab), list(p_ba)
    method = ["plain"] * len(prompts)
    todo = [i for i in range(len(prompts)) if _verdict(p_ab[i]) != 1.0 - _verdict(p_ba[i])]
    calls = 0
    for stage in ("length", "semantic"):
        jobs = []
        for i in todo:
            k = min(parts, 1 + len(split_points(a[i])), 1 + len(split_points(b[i])))
            if k < 2:
                method[i] = "unsplittable"
                continue
            if stage == "length":
                ca, cb = length_cuts(a[i], k), length_cuts(b[i], k)
            else:
                ca, cb = semantic_cuts(a[i], b[i], k, max_points)
            jobs.append((i, cut(a[i], ca), cut(b[i], cb)))
        if not jobs:
            break
        ps = [prompts[i] for i, _, _ in jobs]
        got_ab = judge.prefer_first_parts(ps, [x for _, x, _ in jobs], [y for _, _, y in jobs])
        got_ba = judge.prefer_first_parts(ps, [y for _, _, y in jobs], [x for _, x, _ in jobs])
        calls += 2 * len(jobs)
        todo = []
        for (i, _, _), q_ab, q_ba in zip(jobs, got_ab, got_ba):
            new_ab[i], new_ba[i], method[i] = q_ab, q_ba, stage
            if _verdict(q_ab) != 1.0 - _verdict(q_ba):
                todo.append(i)  # still inconsistent: try the semantic alignment
    rejudged = sum(m in ("length", "semantic") for m in method)
    fixed = sum(m in ("length", "semantic") and _verdict(new_ab[i]) == 1.0 - _verdict(new_ba[i])
                for i, m in enumerate(method))
    return {"p_ab": new_ab, "p_ba": new_ba, "method": method, "rejudged": rejudged, "fixed": fixed,
            "calls": calls, "parts": parts}
