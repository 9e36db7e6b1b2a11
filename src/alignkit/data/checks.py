"""Checks of raw values and of whole datasets that the readers and the trainer share.

Values (every row of every format, before its layout is parsed):

* a JSON number outside the float range (``1e999``, which Python would read as ``inf``) -> ``out_of_range``;
* a non-finite float anywhere in a row (JSON ``NaN``/``Infinity``, or a Parquet NaN) -> ``nan_score``: it
  cannot be written back as standard JSON, and a score or margin that is not a number trains nothing;
* a string with a lone surrogate (JSON ``"\\ud800"``: not Unicode text, no tokenizer can encode it)
  -> ``bad_encoding``.

Datasets (counted and reported, never silently changed): pairs whose two responses tie in rank or score
(a pairwise loss masks them out) or are the same text, and ids that occur more than once.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


class _OutOfRange(str):
    """A JSON number literal that does not fit a float (it would read as inf)."""


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(text)


def loads(text: str) -> Any:
    """``json.loads`` that keeps an out-of-range literal (``1e999``) visible to `first_bad_value`."""
    return json.loads(text, parse_float=_parse_float)


def surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, or None."""
    if text.isascii():
        return None
    m = _SURROGATE.search(text)
    return m.start() if m else None


def _bad_leaf(value: Any) -> tuple[str, str] | None:
    if isinstance(value, _OutOfRange):
        return f"{value} is outside the float range (it would read as inf)", "out_of_range"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (not finite)", "nan_score"
    if isinstance(value, str) and (i := surrogate_at(value)) is not None:
        return (f"not valid Unicode: a lone surrogate \\u{ord(value[i]):04x} at character {i + 1} "
                "(no tokenizer can encode it)", "bad_encoding")
    return None


def first_bad_value(row: dict[str, Any]) -> tuple[str, str, str] | None:
    """``(field, detail, reason)`` of the first bad value in a raw row (see the module docstring), else None.
    ``field`` is the user's column, with ``[i]`` / ``.key`` for what is inside it (``scores[1]``)."""
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in reversed(row.items())]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}", v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif (bad := _bad_leaf(value)) is not None:
            return name, *bad
    return None


# ------------------------------------------------------------------------------------- datasets
def _order(record: Any) -> list | None:
    if record.ranks is not None:
        return record.ranks
    if record.scores is not None and not isinstance(record.scores[0], list):
        return record.scores
    return None


def pair_problems(records: Iterable[Any]) -> Counter:
    """Among K = 2 records labelled by ranks or scalar scores: ``tied`` (equal ranks or scores: a pairwise
    loss masks the pair out) and ``identical`` (chosen and rejected are the same text: no signal)."""
    out: Counter = Counter()
    for r in records:
        order = _order(r) if r.k == 2 else None
        if order is None:
            continue
        if order[0] == order[1]:
            out["tied"] += 1
        elif r.responses[0] == r.responses[1]:
            out["identical"] += 1
    return out


def duplicate_ids(records: Iterable[Any]) -> int:
    """How many records carry an id that an earlier record already has."""
    seen: Counter = Counter(r.id for r in records if r.id is not None)
    return sum(n - 1 for n in seen.values())
