"""Transforms on scores and gaps: `weight_scores`, `margin_weights`, `curriculum` (+ `curriculum_order`).

See ``docs/data_transforms.md`` for the rules and report counts of each.
"""

from __future__ import annotations

import math
import random
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms_common import (
    TransformError,
    choice,
    derive,
    need_gap,
    number,
    report,
    require,
    transform,
    vector,
    where,
)

MARGIN_MODES = ("weight", "tanh")


def dot(w: list[float], s: list[float]) -> float:
    return sum(a * b for a, b in zip(w, s))


def check_length(name: str, option: str, i: int, rec: PreferenceRecord, w: list[float]) -> None:
    m = len(rec.scores[0])
    if m != len(w):
        raise TransformError(f"{name}: {where(i, rec)} has score vectors of length {m} but {option} has "
                             f"{len(w)} entries")  # fmt: skip


@transform
def weight_scores(records: list[PreferenceRecord], *, weights: list[float] | None = None,
                  direction: list[float] | None = None) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Vector scores [K][m] -> scalar scores ``wᵀs`` [K].

    ``weights``: non-negative, normalised to sum 1 (a point of the simplex); ``direction``: any
    non-zero vector, normalised to unit length (DPA's preference direction). Give exactly one. The
    original vectors go to ``meta["score_vectors"]``. Nothing is dropped.
    """
    if (weights is None) == (direction is None):
        raise TransformError("weight_scores: give exactly one of weights (simplex) or direction (unit vector)")
    option = "weights" if weights is not None else "direction"
    w = vector("weight_scores", option, weights if weights is not None else direction, simplex=weights is not None)
    out = []
    for i, rec in enumerate(records):
        require("weight_scores", i, rec, ("vector scores",), "multi-objective records (vector scores)")
        check_length("weight_scores", option, i, rec, w)
        out.append(derive(rec, {"score_vectors": rec.scores}, scores=[dot(w, s) for s in rec.scores]))
    return out, report("weight_scores", len(records), out)


@transform
def margin_weights(records: list[PreferenceRecord], *, scale: float = 1.0, field: str = "margin",
                   mode: str = "weight") -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Margin-weighted training: each record's ``weight`` is multiplied by f(gap).

    ``mode="weight"``: f = scale·gap (linear); ``mode="tanh"``: f = tanh(scale·gap), in [0, 1),
    saturating. The gap is ``meta[field]`` (for ``field="margin"`` also score_chosen - score_rejected
    or max - min of scalar scores); a negative gap is an error. Nothing is dropped; ``zero_weight``
    counts records whose weight became 0 (they then add nothing to the loss).
    """
    number("margin_weights", "scale", scale, low=0.0, strict=True)
    if not isinstance(field, str):
        raise TransformError(f"margin_weights: field must be a meta key (string), got {field!r}")
    choice("margin_weights", "mode", mode, MARGIN_MODES)
    out = []
    for i, rec in enumerate(records):
        gap = need_gap("margin_weights", i, rec, field)
        if gap < 0:
            raise TransformError(f"margin_weights: {where(i, rec)} has a negative gap {gap:g} in '{field}' "
                                 "(the chosen response must score higher)")  # fmt: skip
        factor = scale * gap if mode == "weight" else math.tanh(scale * gap)
        out.append(derive(rec, weight=rec.weight * factor))
    return out, report("margin_weights", len(records), out, zero_weight=sum(r.weight == 0 for r in out))


@transform
def curriculum(records: list[PreferenceRecord], *, stages: int = 3, by: str = "margin",
               seed: int = 0) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Curry-DPO ordering (https://arxiv.org/abs/2403.07230): easy (large gap) to hard (small gap).

    Records are sorted by gap (``meta[by]``, with the `margin_weights` fallbacks for "margin"),
    largest first (ties keep input order), cut into ``stages`` contiguous stages of near-equal size
    (the first ``n % stages`` get one more), and shuffled within each stage with the seed. The output
    list is in curriculum order; meta gains ``stage`` (0 = easiest) and ``curriculum_order`` (the
    position). Training must keep this order (no shuffling): see `curriculum_order`.
    Report: ``stage_sizes``.
    """
    number("curriculum", "stages", stages, low=1, integer=True)
    if not isinstance(by, str):
        raise TransformError(f"curriculum: by must be a meta key (string), got {by!r}")
    gaps = [need_gap("curriculum", i, rec, by) for i, rec in enumerate(records)]
    order = sorted(range(len(records)), key=lambda i: -gaps[i])
    sizes = [len(records) // stages + (s < len(records) % stages) for s in range(stages)]
    rng, out, start = random.Random(seed), [], 0
    for stage, size in enumerate(sizes):
        chunk = order[start : start + size]
        start += size
        rng.shuffle(chunk)
        for i in chunk:
            out.append(derive(records[i], {"stage": stage, "curriculum_order": len(out)}))
    return out, report("curriculum", len(records), out, stage_sizes=sizes)


def curriculum_order(records: list[PreferenceRecord]) -> list[int]:
    """Indices into ``records`` in the intended training order (by ``meta["curriculum_order"]``).

    The `curriculum` transform already returns records in this order; use this after anything that
    may reorder them (splitting off eval data, sharding). Ties (e.g. after `to_unpaired` split a
    pair) keep input order.
    """
    keys = []
    for i, rec in enumerate(records):
        key = rec.meta.get("curriculum_order")
        if isinstance(key, bool) or not isinstance(key, int):
            raise TransformError(f"curriculum_order: {where(i, rec)} has no integer meta['curriculum_order'] "
                                 "(run the curriculum transform on these records first)")  # fmt: skip
        keys.append(key)
    return sorted(range(len(records)), key=keys.__getitem__)
