"""`PreferenceRecord`: one prompt, K >= 1 responses, exactly one kind of label.

A record is the unit every reader produces and every later stage consumes:

* ``prompt`` — plain text, or a chat as a list of ``{"role", "content"}`` messages;
* ``responses`` — K >= 1 completions, each plain text or a list of messages (usually one
  assistant turn);
* exactly one of ``ranks`` (0 = best, ties allowed), ``scores`` (a float per response, or a
  vector of m floats per response for multi-objective data) or ``labels`` (True = desirable);
* optional ``system`` prompt, ``id``, ``weight`` (per-record loss weight), ``group`` (user or
  cluster id for pluralistic data) and ``meta`` (anything else, carried through untouched).

Pairs are K = 2 with ranks ``[0, 1]`` (chosen first) or ``[1, 0]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from alignkit.data.checks import surrogate_at
from alignkit.errors import DataError

Message = dict[str, Any]
Text = Union[str, list[Message]]
LABEL_KINDS = ("ranks", "scores", "labels")


class RecordError(DataError):
    """An invalid record. ``field`` names the offending field; the reader adds file and row."""

    def __init__(self, message: str, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = reason or "invalid"


def _check_unicode(value: str, name: str) -> None:
    if (i := surrogate_at(value)) is not None:
        raise RecordError(f"field '{name}' is not valid Unicode: a lone surrogate \\u{ord(value[i]):04x} at "
                          f"character {i + 1} (no tokenizer can encode it)", name, "bad_encoding")


def _check_text(value: Any, name: str, allow_empty: bool = False) -> None:
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise RecordError(f"field '{name}' is an empty string", name, "empty_field")
        _check_unicode(value, name)
        return
    if isinstance(value, list) and value:
        for i, m in enumerate(value):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise RecordError(
                    f"field '{name}' message {i} must be a dict with 'role' and 'content'", name, "wrong_type"
                )
            if not isinstance(m["content"], str):
                raise RecordError(f"field '{name}' message {i} content must be a string", name, "wrong_type")
            _check_unicode(m["content"], name)
        return
    if isinstance(value, list):
        raise RecordError(f"field '{name}' is an empty message list", name, "empty_field")
    raise RecordError(
        f"field '{name}' must be a string or a list of messages, got {type(value).__name__}", name, "wrong_type"
    )


def _finite(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RecordError(f"field '{name}' must be a number, got {type(x).__name__}", name, "wrong_type")
    try:
        value = float(x)
    except OverflowError:  # an integer with hundreds of digits
        raise RecordError(f"field '{name}' is outside the float range ({str(x)[:12]}..., "
                          f"{len(str(x))} digits)", name, "out_of_range") from None
    if not math.isfinite(value):
        raise RecordError(f"field '{name}' is {x} (not finite)", name, "nan_score")
    return value


@dataclass
class PreferenceRecord:
    prompt: Text
    responses: list[Text]
    ranks: list[float] | None = None
    scores: list[float] | list[list[float]] | None = None
    labels: list[bool] | None = None
    system: str | None = None
    id: str | None = None
    weight: float = 1.0
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # where the record was read ("data.jsonl line 7"), for errors found after reading (tokenization);
    # not data: not compared, not written by `to_dict`, carried by `dataclasses.replace`
    origin: str | None = field(default=None, compare=False, repr=False)
    # model output, not data: a sampled completion may be empty (EOS first) and is still scored; not written
    # by `to_dict`
    sampled: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def k(self) -> int:
        return len(self.responses)

    @property
    def label_kind(self) -> str:
        return next(kind for kind in LABEL_KINDS if getattr(self, kind) is not None)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    def validate(self) -> None:
        _check_text(self.prompt, "prompt")
        if not isinstance(self.responses, list) or not self.responses:
            raise RecordError("field 'responses' must be a non-empty list", "responses", "empty_field")
        for i, r in enumerate(self.responses):
            _check_text(r, f"responses[{i}]", allow_empty=self.sampled)
        given = [kind for kind in LABEL_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise RecordError(
                f"a record needs exactly one of ranks/scores/labels, got {given or 'none'}", "labels", "label_kind"
            )
        kind = given[0]
        values = getattr(self, kind)
        if not isinstance(values, list):
            raise RecordError(f"field '{kind}' must be a list", kind, "wrong_type")
        if len(values) != self.k:
            raise RecordError(
                f"field '{kind}' has {len(values)} entries but there are {self.k} responses", kind, "k_mismatch"
            )
        if kind == "ranks":
            self.ranks = [_finite(v, f"ranks[{i}]") for i, v in enumerate(values)]
            if any(r < 0 for r in self.ranks):
                raise RecordError("field 'ranks' must be >= 0 (0 = best)", "ranks", "wrong_value")
        elif kind == "scores":
            self.scores = _check_scores(values)
        else:
            for i, v in enumerate(values):
                if not isinstance(v, (bool, int)) or v not in (0, 1):
                    raise RecordError(f"field 'labels[{i}]' must be true/false, got {v!r}", "labels", "wrong_type")
            self.labels = [bool(v) for v in values]
        self.weight = _finite(self.weight, "weight")
        if self.weight < 0:
            raise RecordError("field 'weight' must be >= 0", "weight", "wrong_value")
        if self.system is not None and not isinstance(self.system, str):
            raise RecordError("field 'system' must be a string", "system", "wrong_type")
        if self.system is not None:
            _check_unicode(self.system, "system")

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form; ``PreferenceRecord(**d)`` round-trips it."""
        out: dict[str, Any] = {"prompt": self.prompt, "responses": self.responses, self.label_kind: getattr(self, self.label_kind)}
        for name in ("system", "id", "group"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.meta:
            out["meta"] = self.meta
        return out


def _check_scores(values: Sequence[Any]) -> list[float] | list[list[float]]:
    if all(isinstance(v, list) for v in values):
        dims = {len(v) for v in values}
        if len(dims) != 1 or 0 in dims:
            raise RecordError("score vectors must be non-empty and of equal length", "scores", "wrong_value")
        return [[_finite(x, f"scores[{i}]") for x in v] for i, v in enumerate(values)]
    return [_finite(v, f"scores[{i}]") for i, v in enumerate(values)]


def pair(prompt: Text, chosen: Text, rejected: Text, **kwargs: Any) -> PreferenceRecord:
    """A pairwise record: chosen first, rank 0."""
    return PreferenceRecord(prompt=prompt, responses=[chosen, rejected], ranks=[0, 1], **kwargs)


def chosen_rejected(record: PreferenceRecord) -> tuple[int, int] | None:
    """(chosen, rejected) response indices of a K = 2 record with a strict preference, else None."""
    if record.k != 2 or record.label_kind == "labels":
        return None
    order = record.ranks if record.label_kind == "ranks" else [-s for s in record.scores]
    if isinstance(order[0], list) or order[0] == order[1]:
        return None
    return (0, 1) if order[0] < order[1] else (1, 0)
