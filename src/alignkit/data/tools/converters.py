"""Convert common public preference-data layouts to alignkit records (`alignkit data convert`).

Formats (``fmt``; ``"auto"`` detects it from the first readable row, see `detect_format`):

* ``hh`` — HH-RLHF: ``chosen`` / ``rejected`` are whole transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  sharing every turn but the last (a ``prompt`` column beside them is then ignored); or a ``prompt``
  transcript ending in ``"\\n\\nAssistant:"`` and the two continuations. The output is chat data: prompt =
  the shared turns as ``{"role", "content"}`` messages (``Human`` -> ``user``, ``Assistant`` ->
  ``assistant``), each response exactly one assistant message. Transcripts that differ before their last
  assistant turn (an earlier reply differs, or one side has two replies in a row) have no shared prompt
  for one reply: they are bad rows (``no_split``), never records with several-message responses.
* ``ultrafeedback`` — ``prompt`` (or ``instruction``) and ``completions``: a list of objects with the text in
  ``response`` (or ``text`` / ``completion`` / ``content``) and a score in ``overall_score`` (or ``score`` /
  ``rating``), or per-aspect ``ratings`` (``{"helpfulness": 4, ...}``) / UltraFeedback ``annotations``
  (``{"helpfulness": {"Rating": "4"}, ...}``) giving score vectors (aspects sorted by name, listed in
  ``meta.score_names``). ``score_key`` picks the field. Each completion's ``model`` goes to ``meta.models``.
* ``trl`` — TRL columns: ``prompt, chosen, rejected`` (text or message lists), ``chosen, rejected`` alone
  (conversations, implicit prompt) or unpaired ``prompt, completion, label``.
* ``openai`` — ``messages`` (a chat ending with an assistant turn: prompt = the turns before it, one
  response labelled desirable), or OpenAI preference fine-tuning rows ``input.messages``,
  ``preferred_output``, ``non_preferred_output`` (a pair). Content given as a list of ``{"type": "text"}``
  parts is joined.
* ``oasst`` — OpenAssistant message trees (the trees or the messages export): each prompt's ranked answers
  as one ranked list; deleted, unreviewed and unranked messages counted (`alignkit.data.tools.oasst`).
* ``csv`` / ``native`` — any layout `alignkit.data.layouts` reads (``native`` = `PreferenceRecord.to_dict`).

Rows are read by `alignkit.data.io` (JSONL, JSON, Parquet, CSV, ``save_to_disk`` folders); bad rows raise
`BadRowError` naming file, row and field, or with ``on_bad_row="skip"`` go to a rejects file, counted.
Records with an empty reply (a response whose text is blank, e.g. HH-RLHF's ``"\\n\\nAssistant: "`` at the
end of a transcript) are counted; ``on_empty="keep"`` (the default) keeps them, ``"skip"`` writes them to
the rejects file as ``empty_reply`` and counts them with the skipped rows.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data import io
from alignkit.data.io import ReadResult, SourceError
from alignkit.data.layouts import LayoutError, check_columns, layout_for_columns, parse_row, rename
from alignkit.data.schema import LABEL_KINDS, PreferenceRecord, RecordError
from alignkit.data.tools.common import counts, progress
from alignkit.data.tools.oasst import is_oasst, read_oasst
from alignkit.data.tools.oasst import summary as oasst_summary
from alignkit.errors import ConfigError, DataError

FORMATS = ("auto", "hh", "ultrafeedback", "trl", "openai", "oasst", "csv", "native")
ON_EMPTY = ("keep", "skip")
_LAYOUTS_OF = {"trl": ("paired", "conversation", "unpaired"), "native": ("native", "ranked", "scored"),
               "csv": ("paired", "conversation", "unpaired", "native", "ranked", "scored")}  # fmt: skip
_TEXT_KEYS = ("response", "text", "completion", "content")
_SCORE_KEYS = ("overall_score", "score", "rating", "ratings", "annotations")


@dataclass
class ConvertResult:
    records: list[PreferenceRecord]
    format: str
    reason: str
    read: ReadResult
    out: Path | None = None
    empty_kept: int = 0  # records kept with an empty reply (on_empty="keep"); skipped ones are in read.skipped
    notes: str = ""  # what the format itself left out (oasst: deleted, unranked ... messages)

    def summary(self) -> str:
        line = f"converted {len(self.records)} records from {self.read.source} (format '{self.format}': {self.reason})"
        if self.empty_kept:
            n = self.empty_kept
            line += f"; {n} record{'s' if n != 1 else ''} with an empty reply kept (--on-empty skip drops them)"
        if self.notes:
            line += f" [{self.notes}]"
        if skipped := self.read.skipped:
            total = sum(skipped.values())
            line += f"; skipped {total} row{'s' if total != 1 else ''}: {counts(skipped)}"
            line += f" -> {self.read.rejects_path}" if self.read.rejects_path else ""
        return line + (f"; wrote {self.out}" if self.out else "")


def _err(field: str, detail: str, reason: str = "wrong_type") -> RecordError:
    return RecordError(f"field '{field}': {detail}", field, reason)


def _decode(value: Any, text: bool) -> Any:
    """A CSV cell holding JSON (a list or an object) decoded; anything else unchanged."""
    if text and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _is_hh(value: Any) -> bool:
    return isinstance(value, str) and ("\n\nHuman:" in value or value.startswith("Human:"))


# ------------------------------------------------------------------------------------- detection
def detect_format(row: Mapping[str, Any], path: str = "") -> tuple[str, str]:
    """(format, reason) from one raw row's columns (and values where columns are ambiguous)."""
    keys = set(row)
    if kind := is_oasst(row):
        return "oasst", f"OpenAssistant {kind} export (message_id/parent_id or message_tree_id + prompt)"
    if {"input", "preferred_output", "non_preferred_output"} <= keys:
        return "openai", "columns input, preferred_output, non_preferred_output (OpenAI preference format)"
    if {"chosen", "rejected"} <= keys:
        if _is_hh(row.get("chosen")) or _is_hh(row.get("prompt")):
            return "hh", "chosen/rejected (or prompt) hold 'Human: ... Assistant: ...' transcripts"
        return "trl", "columns " + ("prompt, " if "prompt" in keys else "") + "chosen, rejected"
    if {"completion", "label"} <= keys:
        return "trl", "columns prompt, completion, label (unpaired)"
    if "responses" in keys:
        return "native", "column responses (alignkit native)"
    if "completions" in keys and not keys & set(LABEL_KINDS):
        return "ultrafeedback", "column completions without ranks/scores/labels (scores inside each completion)"
    if "completions" in keys:
        return "native", "columns completions with ranks/scores/labels"
    if "messages" in keys:
        return "openai", "column messages (chat transcripts)"
    if Path(path).suffix.lower() == ".csv":
        return "csv", "a .csv file (layout detected from the header)"
    raise LayoutError(f"cannot tell the format from columns {', '.join(map(str, row)) or '(none)'}; pass "
                      f"--from one of {', '.join(FORMATS[1:])} (see `alignkit data convert --help`)")  # fmt: skip


# -------------------------------------------------------------------------------------- formats
def _layout_converter(fmt: str, columns: dict[str, str]) -> Callable[[dict[str, Any], bool], PreferenceRecord]:
    layout: list[str] = []  # fixed by the first row, as `read_records` does

    def fn(row: dict[str, Any], text: bool) -> PreferenceRecord:
        if not layout:
            found, _ = layout_for_columns(list(row), columns, header=False)
            if found not in _LAYOUTS_OF[fmt]:
                raise LayoutError(f"format '{fmt}' reads layouts {', '.join(_LAYOUTS_OF[fmt])}, but the columns "
                                  f"{', '.join(map(str, row))} are layout '{found}'; pass --from auto")  # fmt: skip
            layout.append(found)
        return parse_row(row, layout[0], columns=columns, text_cells=text)

    return fn


def _hh(row: dict[str, Any], text: bool) -> PreferenceRecord:
    prompt = row.get("prompt")
    whole = _is_hh(row.get("chosen")) and _is_hh(row.get("rejected"))  # full transcripts: the prompt is repeated
    if isinstance(prompt, str) and _is_hh(prompt) and not whole:
        for name in ("chosen", "rejected"):
            if not isinstance(row.get(name), str):
                raise _err(name, "must be text continuing the HH-RLHF prompt transcript")
        prompt = prompt.rstrip()
        row = {**{k: v for k, v in row.items() if k != "prompt"},
               "chosen": prompt + " " + row["chosen"].lstrip(), "rejected": prompt + " " + row["rejected"].lstrip()}
    record = parse_row(row, "conversation", text_cells=text)
    for name, reply in zip(("chosen", "rejected"), record.responses):
        if len(reply) != 1:  # the transcripts part before the last assistant turn: no prompt shared by both
            raise _err(name, f"chosen and rejected differ before the last assistant turn: after "
                       f"{_roles(record.prompt, False)} in common, chosen continues with {_roles(record.responses[0])} and rejected with "
                       f"{_roles(record.responses[1])}; HH conversion keeps only "
                       "pairs whose transcripts differ in the final assistant reply", "no_split")  # fmt: skip
    return record


def _roles(messages: list[dict[str, Any]], roles: bool = True) -> str:
    n = f"{len(messages)} message{'s' if len(messages) != 1 else ''}"
    return n + (f" ({', '.join(m['role'] for m in messages)})" if roles else "")


def _empty_reply(record: PreferenceRecord, fmt: str) -> str | None:
    """The field of the first response whose text is blank (chat: every message's content), or None."""
    for i, r in enumerate(record.responses):
        if (r.strip() if isinstance(r, str) else "".join(m["content"] for m in r).strip()) == "":
            return ("chosen", "rejected")[i] if fmt == "hh" else f"responses[{i}]"
    return None


def _completion_text(c: dict[str, Any], where: str) -> str:
    key = next((k for k in _TEXT_KEYS if isinstance(c.get(k), str)), None)
    if key is None:
        raise _err(where, f"has no text field ({' / '.join(_TEXT_KEYS)})", "missing_field")
    return c[key]


def _aspect_value(value: Any, where: str) -> float:
    if isinstance(value, dict):
        value = value.get("Rating", value.get("rating"))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _err(where, f"must be a number, got {value!r}", "wrong_value") from None


def _score(c: dict[str, Any], where: str, key: str | None) -> tuple[float | list[float], list[str] | None]:
    key = key or next((k for k in _SCORE_KEYS if c.get(k) is not None), None)
    if key is None or c.get(key) is None:
        raise _err(where, f"has no score ({key or ' / '.join(_SCORE_KEYS)})", "missing_field")
    value = c[key]
    if isinstance(value, dict):
        names = sorted(value)
        return [_aspect_value(value[n], f"{where}.{key}.{n}") for n in names], names
    return _aspect_value(value, f"{where}.{key}"), None


def _ultrafeedback(row: dict[str, Any], text: bool, score_key: str | None) -> PreferenceRecord:
    pkey = "prompt" if "prompt" in row else "instruction"
    completions = _decode(row.get("completions"), text)
    if not isinstance(completions, list) or not completions:
        raise _err("completions", "must be a non-empty list of objects", "wrong_type")
    responses, scores, names, models = [], [], None, []
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            raise _err(where, f"must be an object, got {type(c).__name__}")
        responses.append(_completion_text(c, where))
        value, aspects = _score(c, where, score_key)
        if i and aspects != names:
            raise _err(where, f"rates aspects {aspects}, but completions[0] rates {names}", "wrong_value")
        names = aspects
        scores.append(value)
        models.append(c.get("model"))
    native = {k: v for k, v in row.items() if k not in (pkey, "completions")}
    native.update(prompt=row.get(pkey), responses=responses, scores=scores)
    extra = {"models": models} if any(m is not None for m in models) else {}
    extra.update({"score_names": names} if names else {})
    meta = _decode(row.get("meta"), text)
    if extra and (meta is None or isinstance(meta, dict)):
        native["meta"] = {**(meta or {}), **extra}
    return _native(native, text, {"prompt": pkey, "responses": "completions"})


def _native(row: dict[str, Any], text: bool, names: dict[str, str]) -> PreferenceRecord:
    try:
        return parse_row(row, "native", text_cells=text)
    except RecordError as e:  # name the user's column, not the intermediate one
        field = e.field or ""
        base, sep, rest = field.partition("[")
        user = names.get(field) or names.get(base, base) + sep + rest
        raise RecordError(str(e).replace(f"'{field}'", f"'{user}'", 1), user, e.reason) from None


def _content(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise _err(where, "must be an object with a string 'role'")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):  # fmt: skip
            raise _err(where, "content parts must all be {'type': 'text', 'text': ...} (images are not supported)")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise _err(where, f"content must be text, got {type(content).__name__}")
    return {"role": m["role"], "content": content}


def _chat(value: Any, name: str, text: bool) -> list[dict[str, Any]]:
    value = _decode(value, text)
    if not isinstance(value, list) or not value:
        raise _err(name, "must be a non-empty list of messages", "wrong_type" if value else "missing_field")
    return [_content(m, f"{name}[{i}]") for i, m in enumerate(value)]


def _openai(row: dict[str, Any], text: bool) -> PreferenceRecord:
    rest = {k: v for k, v in row.items() if k not in ("messages", "input", "preferred_output", "non_preferred_output")}
    if "input" in row:
        inp = _decode(row["input"], text)
        if not isinstance(inp, dict) or "messages" not in inp:
            raise _err("input", "must be an object with 'messages'", "wrong_type")
        prompt = _chat(inp["messages"], "input.messages", text)
        chosen, rejected = (_chat(row[n], n, text) for n in ("preferred_output", "non_preferred_output"))
        extra = {k: v for k, v in inp.items() if k != "messages"}
        native = {"prompt": prompt, "responses": [chosen, rejected], "ranks": [0, 1], **rest, **extra}
        return _native(native, text, {"responses[0]": "preferred_output", "responses[1]": "non_preferred_output"})
    messages = _chat(row.get("messages"), "messages", text)
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise _err("messages", "must end with an assistant turn that follows the prompt", "no_split")
    native = {"prompt": messages[:-1], "responses": [[messages[-1]]], "labels": [True], **rest}
    return _native(native, text, {"prompt": "messages", "responses": "messages"})


def converter(fmt: str, columns: Mapping[str, str] | None = None,
              score_key: str | None = None) -> Callable[[dict[str, Any], bool], PreferenceRecord]:  # fmt: skip
    """``fn(raw_row, text_cells) -> PreferenceRecord`` for one format (raises `RecordError`)."""
    if fmt not in FORMATS[1:]:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    mapping = check_columns(columns)
    if fmt == "oasst":
        raise ConfigError("oasst is read tree by tree by `read_converted`, not row by row")
    if fmt in _LAYOUTS_OF:
        return _layout_converter(fmt, mapping)
    fns = {"hh": _hh, "openai": _openai, "ultrafeedback": lambda r, t: _ultrafeedback(r, t, score_key)}
    return lambda row, text: fns[fmt](rename(row, mapping), text)


# ---------------------------------------------------------------------------------------- read
def read_converted(source: str | os.PathLike, fmt: str = "auto", *, columns: Mapping[str, str] | None = None,
                   score_key: str | None = None, on_bad_row: str = "error", on_empty: str = "keep",
                   rejects_path: str | os.PathLike | None = None, split: str = "train",
                   show_progress: bool = False) -> ConvertResult:  # fmt: skip
    """Read ``source`` in format ``fmt`` into records; bad rows as in `alignkit.data.read_records`.

    ``on_empty``: ``"keep"`` records with an empty reply (counted in ``empty_kept``) or ``"skip"`` them
    (to the rejects file as ``empty_reply``, counted in ``read.skipped``, whatever ``on_bad_row`` says).
    """
    if on_bad_row not in io.ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {', '.join(io.ON_BAD_ROW)}; got {on_bad_row!r}")
    if on_empty not in ON_EMPTY:
        raise ConfigError(f"on_empty must be one of {', '.join(ON_EMPTY)}; got {on_empty!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    src = io._open(source, split)
    rejects = Path(rejects_path) if rejects_path is not None else src.rejects
    reason = "given explicitly" if fmt != "auto" else ""
    rows = iter(progress(src.rows, show_progress, "convert", unit="row"))
    seen: list = []  # rows up to the first one with data (its columns tell an OASST export), read again below
    for raw in rows if fmt == "auto" else ():
        seen.append(raw)
        if raw.data is not None:
            break
    rows = itertools.chain(seen, rows)
    if fmt == "oasst" or (seen and seen[-1].data is not None and is_oasst(seen[-1].data)):
        read, tree_counts = read_oasst(src, rows, on_bad_row, rejects, reason or detect_format(seen[-1].data)[1])
        return ConvertResult(read.records, "oasst", read.layout_reason, read, notes=oasst_summary(tree_counts))
    fn = None if fmt == "auto" else converter(fmt, columns, score_key)
    records, skipped, bad_rows, n, empty_kept = [], Counter(), [], 0, 0
    for n, raw in enumerate(rows, 1):  # noqa: B007
        err = raw.error
        if err is None and raw.data is not None:
            if fn is None:
                try:
                    fmt, reason = detect_format(rename(raw.data, check_columns(columns)), src.path)
                except LayoutError as e:
                    raise SourceError(f"{src.name}: {e}") from None
                fn = converter(fmt, columns, score_key)
            try:
                record = fn(raw.data, src.text_cells)
            except LayoutError as e:
                raise SourceError(f"{src.name} {src.unit} {raw.row}: {e}") from None
            except RecordError as e:
                err = e
            else:
                empty = _empty_reply(record, fmt)
                if empty is None or on_empty == "keep":
                    empty_kept += empty is not None
                    record.origin = io._where(src, raw)
                    records.append(record)
                    continue
                err = _err(empty, "an empty reply (--on-empty keep keeps it)", "empty_reply")
        if err.reason == "blank_line":
            skipped["blank_line"] += 1
            continue
        bad = io._bad(src, raw, err)
        if on_bad_row == "error" and err.reason != "empty_reply":
            raise bad
        skipped[bad.reason] += 1
        bad_rows.append(bad.to_json())
    if bad_rows:
        io.write_rejects(bad_rows, rejects)
    read = ReadResult(records, fmt, skipped, n, rejects if bad_rows else None, src.name, reason)
    if not records:
        raise SourceError(f"{src.name}: no valid records in {n} rows" + (f" ({read.summary()})" if skipped else ""))
    return ConvertResult(records, fmt, reason, read, empty_kept=empty_kept)


def convert(source: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", **kwargs: Any) -> ConvertResult:
    """`read_converted` then `alignkit.data.write_records` (``.jsonl``, ``.parquet`` or ``.csv`` by suffix).

    Skipped rows go to ``<out stem>.rejects.jsonl`` unless ``rejects_path`` is given.
    """
    out = Path(out)
    if io.SUFFIXES.get(out.suffix.lower()) is None:
        raise DataError(f"{out.name}: unsupported output type '{out.suffix}'; use .jsonl, .parquet or .csv")
    kwargs.setdefault("rejects_path", out.with_suffix(".rejects.jsonl"))
    result = read_converted(source, fmt, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.out = io.write_records(result.records, out)
    return result
