"""Shared pieces of the record transforms (`alignkit.data.transforms`): registry, checks, helpers.

A transform is a pure function ``fn(records, *, **options) -> (records, report)`` registered with
`transform`; it never mutates its input records. A report is a dict: ``transform`` (the name),
``records_in``, ``records_out``, ``dropped`` (``{reason: count}``, only reasons that occurred) and
any transform-specific counts.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.data.schema import LABEL_KINDS, PreferenceRecord, Text
from alignkit.errors import DataError

TRANSFORMS: dict[str, Callable[..., tuple[list[PreferenceRecord], dict[str, Any]]]] = {}


class TransformError(DataError):
    """A bad transform spec or option, or a record a transform cannot take (the message names it)."""


def transform(fn: Callable) -> Callable:
    """Register ``fn`` in `TRANSFORMS` under its own name."""
    TRANSFORMS[fn.__name__] = fn
    return fn


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def choice(transform_name: str, option: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        hint = suggest(value, allowed) if isinstance(value, str) else ""
        raise TransformError(f"{transform_name}: {option}={value!r} is not one of "
                             f"{', '.join(allowed)}.{hint}")  # fmt: skip
    return value


def number(transform_name: str, option: str, value: Any, *, low: float | None = None,
           strict: bool = False, integer: bool = False) -> float:  # fmt: skip
    """A finite number option, ``>= low`` (``> low`` if ``strict``); an int if ``integer``."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise TransformError(f"{transform_name}: {option} must be {kind}, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise TransformError(f"{transform_name}: {option} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


def vector(transform_name: str, option: str, value: Any, *, simplex: bool) -> list[float]:
    """Weights normalised to sum 1 (``simplex``: non-negative) or a direction normalised to unit norm."""
    if not isinstance(value, (list, tuple)) or not value:
        raise TransformError(f"{transform_name}: {option} must be a non-empty list of numbers, got {value!r}")
    xs = [float(number(transform_name, f"{option}[{i}]", v, low=0.0 if simplex else None))
          for i, v in enumerate(value)]  # fmt: skip
    total = sum(xs) if simplex else math.sqrt(sum(x * x for x in xs))
    if total == 0:
        raise TransformError(f"{transform_name}: {option} must not be all zeros")
    return [x / total for x in xs]


def where(i: int, rec: PreferenceRecord) -> str:
    """``record 3 (id=abc)`` — records are numbered from 0 in the list the transform receives."""
    return f"record {i}" + (f" (id={rec.id})" if rec.id is not None else "")


def kind_of(rec: PreferenceRecord) -> str:
    """``ranks``, ``labels``, ``scalar scores`` or ``vector scores``."""
    if rec.scores is None:
        return rec.label_kind
    return "vector scores" if isinstance(rec.scores[0], list) else "scalar scores"


def require(name: str, i: int, rec: PreferenceRecord, kinds: Sequence[str], needs: str, hint: str = "") -> None:
    """Raise unless the record's `kind_of` is in ``kinds``: "pairs needs ...; record 3 (id=x) has labels"."""
    have = kind_of(rec)
    if have not in kinds:
        raise TransformError(f"{name} needs {needs}; {where(i, rec)} has {have}{hint}")


def pairs_only(name: str, i: int, rec: PreferenceRecord) -> None:
    """Raise unless ``rec`` is a pair: K = 2 with ranks or scalar scores."""
    require(name, i, rec, ("ranks", "scalar scores"), "pair records (K = 2 ranks or scalar scores)")
    if rec.k != 2:
        raise TransformError(f"{name} needs pair records (K = 2); {where(i, rec)} has K = {rec.k} "
                             "(put pairs before this transform)")  # fmt: skip


def derive(rec: PreferenceRecord, meta: dict[str, Any] | None = None, **fields: Any) -> PreferenceRecord:
    """A new record from ``rec``: ``fields`` replace its fields (a label kind replaces its labels), ``meta``
    updates a copy of its meta."""
    out: dict[str, Any] = {"prompt": rec.prompt, "responses": list(rec.responses), "system": rec.system,
                           "id": rec.id, "weight": rec.weight, "group": rec.group,
                           "meta": {**rec.meta, **(meta or {})}}  # fmt: skip
    if not any(kind in fields for kind in LABEL_KINDS):
        out[rec.label_kind] = list(getattr(rec, rec.label_kind))
    out.update(fields)
    return PreferenceRecord(**out)


def sub_id(rec: PreferenceRecord, suffix: str) -> str | None:
    """``"<id>:<suffix>"``; a record without an id gives records without ids."""
    return None if rec.id is None else f"{rec.id}:{suffix}"


def report(name: str, n_in: int, out: list, dropped: Counter | None = None, **counts: Any) -> dict[str, Any]:
    return {"transform": name, "records_in": n_in, "records_out": len(out),
            "dropped": dict(sorted((dropped or Counter()).items())), **counts}  # fmt: skip


def goodness(rec: PreferenceRecord) -> list[float]:
    """Higher is better: scalar scores as they are, ranks negated."""
    return list(rec.scores) if rec.scores is not None else [-r for r in rec.ranks]


def pair_record(rec: PreferenceRecord, w: int, l: int, suffix: str) -> PreferenceRecord:
    """K = 2 record ``[responses[w], responses[l]]`` with ranks [0, 1]; meta gets ``margin`` (score gap, or
    rank gap for ranked lists), ``source_responses`` [w, l] and, for scored lists, ``score_chosen`` and
    ``score_rejected``."""
    g = goodness(rec)
    meta: dict[str, Any] = {"margin": g[w] - g[l], "source_responses": [w, l]}
    if rec.scores is not None:
        meta.update(score_chosen=rec.scores[w], score_rejected=rec.scores[l])
    return derive(rec, meta, responses=[rec.responses[w], rec.responses[l]], ranks=[0, 1], id=sub_id(rec, suffix))


def pair_order(rec: PreferenceRecord) -> tuple[int, int] | None:
    """(chosen, rejected) indices of a K = 2 record with ranks or scalar scores; None on a tie."""
    g = goodness(rec)
    if g[0] == g[1]:
        return None
    return (0, 1) if g[0] > g[1] else (1, 0)


def pair_scores(rec: PreferenceRecord) -> tuple[float, float] | None:
    """(chosen score, rejected score) of a K = 2 record: its scalar scores (higher first), or meta
    ``score_chosen`` / ``score_rejected`` of a ranked pair (as `pairs` and the paired layout write them,
    by role, not position); else None."""
    if rec.scores is not None:
        w, l = (0, 1) if rec.scores[0] >= rec.scores[1] else (1, 0)
        return rec.scores[w], rec.scores[l]
    sc, sr = rec.meta.get("score_chosen"), rec.meta.get("score_rejected")
    if _is_number(sc) and _is_number(sr):
        return float(sc), float(sr)
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def score_gap(rec: PreferenceRecord, field: str = "margin") -> float | None:
    """The record's score gap: ``meta[field]``; for ``field="margin"`` also ``score_chosen - score_rejected``
    from meta, or ``max - min`` of scalar scores. None when there is none."""
    if field in rec.meta:
        return float(rec.meta[field]) if _is_number(rec.meta[field]) else None
    if field != "margin":
        return None
    if _is_number(rec.meta.get("score_chosen")) and _is_number(rec.meta.get("score_rejected")):
        return float(rec.meta["score_chosen"]) - float(rec.meta["score_rejected"])
    if kind_of(rec) == "scalar scores" and rec.k >= 2:
        return max(rec.scores) - min(rec.scores)
    return None


def need_gap(name: str, i: int, rec: PreferenceRecord, field: str) -> float:
    gap = score_gap(rec, field)
    if gap is None:
        raise TransformError(f"{name} needs a score gap; {where(i, rec)} has no numeric meta['{field}']"
                             + (", no meta score_chosen/score_rejected and no scalar scores (run pairs on "
                                "scored data first)" if field == "margin" else ""))  # fmt: skip
    return gap


def prefix_prompt(prompt: Text, prefix: str) -> Text:
    """``prefix + prompt`` for a text prompt; for a chat, a copy whose first user message is prefixed."""
    if isinstance(prompt, str):
        return prefix + prompt
    at = next((j for j, m in enumerate(prompt) if m.get("role") == "user"), None)
    if at is None:
        raise TransformError("the chat prompt has no user message to put the conditioning in")
    out = [dict(m) for m in prompt]
    out[at]["content"] = prefix + out[at]["content"]
    return out


def check_template(name: str, template: Any, field: str, example: Any) -> str:
    if not isinstance(template, str) or "{" + field not in template:
        raise TransformError(f"{name}: template must be a string containing '{{{field}}}', got {template!r}")
    try:
        template.format(**{field: example})
    except (KeyError, IndexError, ValueError) as e:
        raise TransformError(f"{name}: template {template!r} cannot be formatted with only "
                             f"'{field}': {type(e).__name__}: {e}") from None  # fmt: skip
    return template
