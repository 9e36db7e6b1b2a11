"""Transforms that build or split pairs: `pairs`, `rso`, `to_unpaired`, `negatives_only`.

See ``docs/data_transforms.md`` for the rules and report counts of each.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms_common import (
    TransformError,
    choice,
    derive,
    goodness,
    kind_of,
    number,
    pair_order,
    pair_record,
    pairs_only,
    report,
    require,
    sub_id,
    transform,
)

PAIR_STRATEGIES = ("best_vs_worst", "best_vs_random", "all_pairs")
RSO_STRATEGIES = ("rejection", "uniform")
_VECTOR_HINT = " (vector scores need weights first: put weight_scores before this transform)"


def _candidates(rec: PreferenceRecord, strategy: str, rng: random.Random) -> tuple[list[tuple[int, int]], int]:
    """(better, worse) index pairs to consider, and how many candidate pairs tie."""
    g = goodness(rec)
    if strategy == "all_pairs":
        both = [(i, j) for i in range(rec.k) for j in range(i + 1, rec.k)]
        return [(i, j) if g[i] > g[j] else (j, i) for i, j in both if g[i] != g[j]], sum(g[i] == g[j] for i, j in both)
    best = g.index(max(g))  # first on ties
    if g[best] == min(g):
        return [], 1
    if strategy == "best_vs_worst":
        return [(best, g.index(min(g)))], 0
    worse = [j for j in range(rec.k) if g[j] < g[best]]
    return [(best, worse[rng.randrange(len(worse))])], 0


@transform
def pairs(records: list[PreferenceRecord], *, strategy: str = "best_vs_worst", min_margin: float = 0.0,
          seed: int = 0) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Ranked or scored lists (K >= 2) -> K = 2 pairs, chosen first (ranks [0, 1]).

    ``best_vs_worst``: the best vs the worst response (first one on ties); ``best_vs_random``: the best
    vs a seeded uniform pick among the strictly worse ones; ``all_pairs``: every strictly ordered pair
    (i < j order). A tied candidate is never a pair; a pair whose gap is below ``min_margin`` is dropped.
    Meta gains ``margin`` (score gap, or rank gap for ranks), ``source_responses`` [chosen, rejected],
    and for scores ``score_chosen``/``score_rejected``. Ids become ``<id>:<chosen>-<rejected>``.

    Report ``dropped``: ``too_few_responses`` (records), ``tied`` and ``below_min_margin`` (candidate
    pairs; best_vs_* has one candidate per record); ``records_without_pairs`` (input records that gave
    no pair, for any of these reasons).
    """
    choice("pairs", "strategy", strategy, PAIR_STRATEGIES)
    number("pairs", "min_margin", min_margin, low=0.0)
    rng, out, dropped, empty = random.Random(seed), [], Counter(), 0
    for i, rec in enumerate(records):
        require("pairs", i, rec, ("ranks", "scalar scores"), "ranked or scored lists",
                _VECTOR_HINT if kind_of(rec) == "vector scores" else "")  # fmt: skip
        if rec.k < 2:
            dropped["too_few_responses"] += 1
            empty += 1
            continue
        found, ties = _candidates(rec, strategy, rng)
        dropped["tied"] += ties
        made = [pair_record(rec, w, l, f"{w}-{l}") for w, l in found]
        kept = [p for p in made if p.meta["margin"] >= min_margin]
        dropped["below_min_margin"] += len(made) - len(kept)
        empty += not kept
        out.extend(kept)
    return out, report("pairs", len(records), out, +dropped, records_without_pairs=empty)


def acceptance_probs(rewards: list[float], beta: float) -> list[float]:
    """RSO's acceptance probability of each candidate: ``exp((r - max r) / β)`` (the max is accepted surely)."""
    top = max(rewards)
    return [math.exp((r - top) / beta) for r in rewards]


def rejection_sample(rewards: list[float], beta: float, n: int, rng: random.Random) -> tuple[list[int], int]:
    """Draw ``n`` distinct candidates approximately from π* ∝ π_ref·exp(r/β) (RSO, arXiv 2309.06657).

    The K candidates stand in for samples of π_ref. Repeat: propose a uniform random remaining
    candidate; accept it with probability ``exp((r - r_max)/β)``, r_max the largest remaining reward;
    an accepted candidate leaves the pool. Each accepted one is thus an exact draw from
    ``softmax(r/β)`` over the remaining candidates. β -> 0 accepts the best first; β -> ∞ accepts
    every proposal (uniform sampling without replacement). Returns (accepted indices in order,
    number of proposals).
    """
    pool, accepted, proposals = list(range(len(rewards))), [], 0
    while len(accepted) < n and pool:
        top = max(rewards[j] for j in pool)
        j = pool[rng.randrange(len(pool))]
        proposals += 1
        if rng.random() < math.exp((rewards[j] - top) / beta):
            accepted.append(j)
            pool.remove(j)
    return accepted, proposals


@transform
def rso(records: list[PreferenceRecord], *, beta: float = 0.1, num_pairs: int = 1, strategy: str = "rejection",
        seed: int = 0) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Statistical Rejection Sampling Optimization pairs (https://arxiv.org/abs/2309.06657).

    Per record with K scalar rewards: draw ``2·num_pairs`` distinct responses (at most K) with
    `rejection_sample` (``strategy="uniform"``: uniformly, the paper's "sft-sample-rank" baseline),
    then pair them in draw order — (1st, 2nd), (3rd, 4th), … (the paper's first-round pairing); the
    higher reward is chosen. Pairs look like `pairs`' output; ids ``<id>:rso<n>``.

    Report: ``proposals`` and ``accepted`` (rejected = proposals - accepted), ``short_records``
    (K < 2·num_pairs: fewer pairs), ``dropped``: ``too_few_responses`` (records), ``tied`` (pairs).
    """
    number("rso", "beta", beta, low=0.0, strict=True)
    number("rso", "num_pairs", num_pairs, low=1, integer=True)
    choice("rso", "strategy", strategy, RSO_STRATEGIES)
    temp = math.inf if strategy == "uniform" else beta
    rng, out, dropped, counts = random.Random(seed), [], Counter(), Counter()
    for i, rec in enumerate(records):
        require("rso", i, rec, ("scalar scores",), "scalar rewards (scores)",
                _VECTOR_HINT if kind_of(rec) == "vector scores" else "")  # fmt: skip
        if rec.k < 2:
            dropped["too_few_responses"] += 1
            continue
        drawn, proposals = rejection_sample(rec.scores, temp, min(rec.k, 2 * num_pairs), rng)
        counts.update(proposals=proposals, accepted=len(drawn), short_records=int(rec.k < 2 * num_pairs))
        for n, (a, b) in enumerate(zip(drawn[0::2], drawn[1::2])):
            if rec.scores[a] == rec.scores[b]:
                dropped["tied"] += 1
                continue
            w, l = (a, b) if rec.scores[a] > rec.scores[b] else (b, a)
            out.append(pair_record(rec, w, l, f"rso{n}"))
    return out, report("rso", len(records), out, +dropped, proposals=counts["proposals"],
                       accepted=counts["accepted"], short_records=counts["short_records"])  # fmt: skip


@transform
def to_unpaired(records: list[PreferenceRecord], *, chosen_label: bool = True
                ) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Split each pair into two K = 1 label records: chosen -> ``chosen_label``, rejected -> the other.

    For KTO/BCO on "the same data split into labels". Ids ``<id>:chosen`` / ``<id>:rejected``; meta
    gains ``pair_role``. Report: ``desirable``, ``undesirable``; ``dropped``: ``tied`` (pairs).
    """
    if not isinstance(chosen_label, bool):
        raise TransformError(f"to_unpaired: chosen_label must be true or false, got {chosen_label!r}")
    out, dropped = [], Counter()
    for i, rec in enumerate(records):
        pairs_only("to_unpaired", i, rec)
        order = pair_order(rec)
        if order is None:
            dropped["tied"] += 1
            continue
        for role, j, label in (("chosen", order[0], chosen_label), ("rejected", order[1], not chosen_label)):
            out.append(derive(rec, {"pair_role": role}, responses=[rec.responses[j]], labels=[label],
                              id=sub_id(rec, role)))  # fmt: skip
    good = sum(r.labels[0] for r in out)
    return out, report("to_unpaired", len(records), out, +dropped, desirable=good, undesirable=len(out) - good)


@transform
def negatives_only(records: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], dict[str, Any]]:
    """Keep only the undesirable responses of label records (input to D2O, which adds its own samples).

    A record keeps its undesirable responses (all labels false, same id); a record with none is
    dropped. Report ``dropped``: ``desirable_responses``, ``records_without_negatives``; ``negatives``.
    """
    out, dropped = [], Counter()
    for i, rec in enumerate(records):
        require("negatives_only", i, rec, ("labels",), "label records (desirable/undesirable)",
                " (pairs: put to_unpaired before this transform)" if rec.label_kind != "labels" else "")  # fmt: skip
        bad = [r for r, label in zip(rec.responses, rec.labels) if not label]
        dropped["desirable_responses"] += rec.k - len(bad)
        if not bad:
            dropped["records_without_negatives"] += 1
            continue
        out.append(derive(rec, responses=bad, labels=[False] * len(bad)))
    return out, report("negatives_only", len(records), out, +dropped, negatives=sum(r.k for r in out))
