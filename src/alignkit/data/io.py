"""Read preference data from files, `save_to_disk` folders or Hub datasets (writing: `alignkit.data.writers`).

Sources: ``.jsonl``/``.ndjson``/``.json`` (JSON lines; a ``.json`` file starting with ``[`` is one
JSON array), ``.parquet`` (pyarrow; columns `write_records` JSON-encoded are decoded via the
``alignkit.json_columns`` metadata), ``.csv`` (header first; list/message cells are JSON text,
decoded where the layout needs a list, see `alignkit.data.layouts`), a ``save_to_disk`` folder
(``split`` picks from a DatasetDict), or a Hub dataset ``owner/name`` (`alignkit.models.hub.load_hub_dataset`:
downloaded and cached by datasets when online, from its cache offline).

Row numbers are 1-based: JSONL ``line N`` = physical line N (blank lines count); CSV ``row N`` = N-th
data row after the header (the message adds its first physical line); JSON arrays ``item N``;
Parquet/datasets ``row N`` in table order. Bad rows raise `BadRowError` (file, row, field, reason),
or with ``on_bad_row="skip"`` go to ``<stem>.rejects.jsonl`` and are counted by reason. Blank JSONL
lines are always skipped and counted as ``blank_line``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data import checks
from alignkit.data.csv_reader import CsvRow, strict_rows
from alignkit.data.layouts import check_columns, layout_for_columns, parse_row
from alignkit.data.schema import PreferenceRecord, RecordError
from alignkit.data.writers import CANONICAL, JSON_COLUMNS_KEY, SUFFIXES, write_records  # noqa: F401 (re-exported)
from alignkit.errors import ConfigError, DataError
from alignkit.io_atomic import atomic_write
from alignkit.models.hub import load_hub_dataset

log = logging.getLogger("alignkit")
ON_BAD_ROW = ("error", "skip")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(DataError):
    """A problem with the source as a whole (format, layout, split, availability, no records)."""


class BadRowError(DataError):
    """One invalid row: ``path``, 1-based ``row``, ``field`` (None if the row is unreadable), ``reason``."""

    def __init__(self, message: str, path: str, row: int, field: str | None, reason: str, raw: Any = None):
        super().__init__(message)
        self.path, self.row, self.field, self.reason, self.raw = path, row, field, reason, raw

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "row": self.row, "field": self.field, "reason": self.reason,
                "message": str(self), "raw": self.raw}  # fmt: skip


_WARNINGS = {  # ReadResult.warnings: kept, but worth a second look
    "duplicate_id": "records repeat an earlier record's id",
    "identical_responses": "pairs have the same text as chosen and rejected (no preference signal)",
}


def skipped_text(skipped: Counter, rejects: Path | None) -> str:
    """``"; skipped 3 rows: 2 bad_json, 1 missing_field -> x.rejects.jsonl"`` for a reading summary."""
    out = ""
    if total := sum(skipped.values()):
        counts = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        out += f"; skipped {total} row{'s' if total != 1 else ''}: {counts}"
    return out + (f" -> {rejects}" if rejects is not None else "")


@dataclass
class ReadResult:
    records: list[PreferenceRecord]
    layout: str
    skipped: Counter = field(default_factory=Counter)
    n_rows: int = 0
    rejects_path: Path | None = None
    source: str = ""
    layout_reason: str = ""
    warnings: Counter = field(init=False)  # kept records worth a second look: duplicate_id, identical_responses

    def __post_init__(self) -> None:
        pairs = checks.pair_problems(self.records)
        found = {"duplicate_id": checks.duplicate_ids(self.records), "identical_responses": pairs["identical"]}
        self.warnings = Counter({k: n for k, n in found.items() if n})

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> str:
        out = f"read {len(self.records)} records from {self.source} (layout '{self.layout}')"
        out += skipped_text(self.skipped, self.rejects_path)
        if self.warnings:  # kept, but probably not what the user meant
            out += "; warning: " + ", ".join(f"{n} {_WARNINGS[k]}" for k, n in self.warnings.items())
        return out


@dataclass
class _Raw:
    row: int
    raw: Any
    data: dict[str, Any] | None = None
    error: RecordError | None = None
    line: int | None = None  # first physical line, where it differs from `row` (CSV)


@dataclass
class _Source:
    name: str
    path: str
    unit: str
    rows: Iterator[_Raw]
    columns: list[str] | None = None  # known up front (header/schema), else taken from the first row
    text_cells: bool = False
    rejects: Path | None = None


def _fail(n: int, raw: Any, detail: str, reason: str, field: str | None = None, line: int | None = None) -> _Raw:
    return _Raw(n, raw, error=RecordError(detail, field, reason), line=line)


def _object_row(n: int, raw: Any, data: Any) -> _Raw:
    if not isinstance(data, dict):
        return _fail(n, raw, f"expected a JSON object, got {type(data).__name__}", "not_object")
    if (bad := checks.first_bad_value(data)) is not None:  # 1e999, NaN, a lone surrogate: see data/checks.py
        name, detail, reason = bad
        return _fail(n, raw, f"field '{name}': {detail}", reason, name)
    return _Raw(n, raw, data)


def _jsonl_row(n: int, bline: bytes) -> _Raw:
    bline = bline.rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf" if n == 1 else b"")
    try:
        text = bline.decode("utf-8")
    except UnicodeDecodeError as e:
        detail = f"not valid UTF-8 (byte 0x{bline[e.start]:02x} at column {e.start + 1})"
        return _fail(n, bline.decode("utf-8", "backslashreplace"), detail, "bad_encoding")
    if not text.strip():
        return _fail(n, text, "blank line", "blank_line")
    try:
        return _object_row(n, text, checks.loads(text))
    except ValueError as e:
        return _fail(n, text, f"invalid JSON: {getattr(e, 'msg', e)} (column {getattr(e, 'colno', '?')})", "bad_json")


def _jsonl_rows(path: Path) -> Iterator[_Raw]:
    with open(path, "rb") as f:  # binary: line N is physical line N, and bad bytes stay in their line
        yield from (_jsonl_row(n, bline) for n, bline in enumerate(f, 1))


def _undecodable(v: str) -> bool:  # CSV is read with errors="surrogateescape"
    return not v.isascii() and any("\udc80" <= ch <= "\udcff" for ch in v)


def _csv_row(n: int, start: int, header: list[str], cells: list[str]) -> _Raw:
    if not any(c.strip() for c in cells):
        return _fail(n, "", "blank line", "blank_line", line=start)
    row = dict(zip(header, cells))
    raw = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for k, v in row.items()}
    if (bad := next((k for k, v in row.items() if _undecodable(v)), None)) is not None:
        return _fail(n, raw, f"field '{bad}': not valid UTF-8", "bad_encoding", bad, start)
    if len(cells) != len(header):
        detail = f"has {len(cells)} cells but the header has {len(header)}"
        return _fail(n, raw, detail, "extra_cells" if len(cells) > len(header) else "missing_cells", line=start)
    return _Raw(n, raw, row, line=start)


def _csv_rows(header: list[str], f: Any, rows: Iterator[CsvRow]) -> Iterator[_Raw]:
    with f:
        for n, row in enumerate(rows, 1):
            if row.cells is None:  # unclosed quote...: this row only; the next line starts the next row
                raw = row.text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                yield _fail(n, raw, row.problem, row.reason, line=row.line)
            else:
                yield _csv_row(n, row.line, header, row.cells)


def _open_csv(path: Path) -> _Source:
    f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115 (closed by rows)
    rows = strict_rows(f)
    first = next(rows, None)
    if first is not None and first.cells is None:
        f.close()
        raise SourceError(f"{path.name} line {first.line} (the header): {first.problem}")
    header = first.cells if first is not None else []
    problem = ("empty CSV file (no header)" if not header else "header is not valid UTF-8"
               if any(map(_undecodable, header)) else f"duplicate column names in the header: {header}"
               if len(set(header)) != len(header) else None)  # fmt: skip
    if problem:
        f.close()
        raise SourceError(f"{path.name}: {problem}")
    return _Source(path.name, str(path), "row", _csv_rows(header, f, rows), header, True)


def _parquet_rows(pf: Any, json_cols: list[str]) -> Iterator[_Raw]:
    rows = (row for batch in pf.iter_batches(batch_size=1024) for row in batch.to_pylist())
    for n, row in enumerate(rows, 1):
        try:
            row.update({c: checks.loads(row[c]) for c in json_cols if row.get(c) is not None})
        except ValueError as e:
            yield _fail(n, row, f"bad JSON in a JSON-encoded column: {e}", "bad_json")
            continue
        yield _object_row(n, row, row)


def _open_parquet(path: Path) -> _Source:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise SourceError(f"{path.name}: cannot read as Parquet: {e}") from None
    meta = pf.schema_arrow.metadata or {}
    json_cols = json.loads(meta[JSON_COLUMNS_KEY]) if JSON_COLUMNS_KEY in meta else []
    return _Source(path.name, str(path), "row", _parquet_rows(pf, json_cols), list(pf.schema_arrow.names))


def _dataset_source(ds: Any, name: str, path: str, split: str) -> _Source:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{name} has no split '{split}'; available splits: {', '.join(ds)}")
        ds, name = ds[split], f"{name}[{split}]"
    return _Source(name, path, "row", (_object_row(n, row, row) for n, row in enumerate(ds, 1)), list(ds.column_names))


def _open_hub(name: str, split: str, subset: str | None) -> _Source:
    ds = load_hub_dataset(name, split=split, subset=subset)  # downloaded and cached by datasets (offline: cache)
    src = _dataset_source(ds, f"{name}[{split}]", name, split)
    safe_split = re.sub(r"[^\w.-]+", "_", split)  # train[:1000] -> train_1000_
    src.rejects = Path.cwd() / f"{name.replace('/', '__')}.{safe_split}.rejects.jsonl"
    return src


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _open(source: str | os.PathLike, split: str, subset: str | None = None) -> _Source:
    path = Path(source).expanduser()
    if path.is_dir():
        if not any((path / m).exists() for m in ("dataset_dict.json", "state.json")):
            raise SourceError(f"{path} is a folder but not a datasets save_to_disk folder (no dataset_dict.json "
                              "or state.json); pass a .jsonl/.json/.parquet/.csv file instead")  # fmt: skip
        import datasets

        src = _dataset_source(datasets.load_from_disk(str(path)), path.name, str(path), split)
    elif path.is_file():
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise SourceError(f"{path.name}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
        if kind == "csv":
            src = _open_csv(path)
        elif kind == "parquet":
            src = _open_parquet(path)
        elif kind == "json" and _head(path).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            try:  # one JSON array; rows are its items
                items = checks.loads(path.read_text(encoding="utf-8-sig"))
            except ValueError as e:  # UnicodeDecodeError included
                raise SourceError(f"{path.name}: not a valid JSON array: {e}") from None
            src = _Source(path.name, str(path), "item", (_object_row(n, x, x) for n, x in enumerate(items, 1)))
        else:
            src = _Source(path.name, str(path), "line", _jsonl_rows(path))
    elif (isinstance(source, str) and _HUB_NAME.match(source) and Path(source).suffix.lower() not in SUFFIXES
          and not path.parent.is_dir()):  # owner/name: a Hub dataset (a path when the folder `owner` exists)
        return _open_hub(source, split, subset)
    else:
        raise SourceError(f"no such file or folder: {path}")
    src.rejects = path.with_name(path.name + ".rejects.jsonl") if path.is_dir() else path.with_suffix(".rejects.jsonl")
    return src


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file (prompts, targets); bytes that are not UTF-8 are a `SourceError` naming
    the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SourceError(f"{Path(path).name} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def iter_rows(source: str | os.PathLike, *, split: str = "train") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, raw dict)`` lazily (JSONL streams line by line; CSV cells stay strings).

    Blank lines are passed over; an unreadable row (bad bytes, bad JSON, not an object) raises `BadRowError`.
    """
    src = _open(source, split)
    for raw in src.rows:
        if raw.error is None and raw.data is not None:
            yield raw.row, raw.data
        elif raw.error is not None and raw.error.reason != "blank_line":
            raise _bad(src, raw, raw.error)


def _layout_for(src: _Source, cols: list[str], mapping: dict[str, str]) -> tuple[str, str]:
    try:
        layout, reason = layout_for_columns(cols, mapping, header=src.columns is not None)
    except ValueError as e:
        raise SourceError(f"{src.name}: {e}") from None
    return layout, reason


def _where(src: _Source, raw: _Raw) -> str:  # "data.jsonl line 7", "data.csv row 5 (line 6)"
    return f"{src.name} {src.unit} {raw.row}" + (f" (line {raw.line})" if raw.line is not None else "")


def _bad(src: _Source, raw: _Raw, err: RecordError) -> BadRowError:
    where = _where(src, raw)
    message = f"{where}{', ' if err.field else ': '}{err}"
    return BadRowError(message, src.path, raw.row, err.field, err.reason, raw.raw)


def write_rejects(bad_rows: list[dict[str, Any]], path: Path) -> Path:
    """The skipped rows (`BadRowError.to_json`), one JSON line each, written atomically; text that is not
    Unicode (a lone surrogate) is kept as its ``\\uXXXX`` escape."""
    text = "".join(json.dumps(b, ensure_ascii=False, default=str) + "\n" for b in bad_rows)
    with atomic_write(path, "wb") as f:
        f.write(text.encode("utf-8", "backslashreplace"))
    return path


def open_source(source: str | os.PathLike, split: str = "train", subset: str | None = None) -> _Source:
    """A file, ``save_to_disk`` folder or Hub dataset as a source of raw rows (see the module docstring)."""
    return _open(source, split, subset)


@dataclass
class Rows:
    items: list[Any]
    skipped: Counter
    n_rows: int
    rejects: Path | None


def read_rows(src: _Source, parse: Callable[[_Raw], Any], on_bad_row: str = "error",
              rejects_path: str | os.PathLike | None = None) -> Rows:
    """Every row of ``src`` through ``parse`` (which raises `RecordError` for a bad row), with the bad-row
    rules of the module docstring: ``on_bad_row="error"`` raises `BadRowError` (file, row, field) at the first
    bad row; ``"skip"`` counts it by reason and writes it to the rejects file. Blank lines are counted."""
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {', '.join(map(repr, ON_BAD_ROW))}; got {on_bad_row!r}")
    rejects_file = Path(rejects_path) if rejects_path is not None else src.rejects
    if on_bad_row == "skip" and rejects_file and rejects_file.resolve() == Path(src.path).resolve():
        raise ConfigError(f"rejects_path {rejects_file} is the input file itself")
    items: list[Any] = []
    skipped: Counter = Counter()
    bad_rows, n = [], 0
    for n, raw in enumerate(src.rows, 1):  # noqa: B007 (n is the row count afterwards)
        err = raw.error
        if err is None and raw.data is not None:
            try:
                items.append(parse(raw))
                continue
            except RecordError as e:
                err = e
        assert err is not None
        if err.reason == "blank_line":
            skipped["blank_line"] += 1
            continue
        bad = _bad(src, raw, err)
        if on_bad_row == "error":
            raise bad
        skipped[bad.reason] += 1
        bad_rows.append(bad.to_json())
    return Rows(items, skipped, n, write_rejects(bad_rows, rejects_file) if bad_rows else None)


def read_records(
    source: str | os.PathLike,
    *,
    layout: str | None = None,
    columns: Mapping[str, str] | None = None,
    on_bad_row: str = "error",
    rejects_path: str | os.PathLike | None = None,
    split: str = "train",
    subset: str | None = None,
) -> ReadResult:
    """Read every row of ``source`` into `PreferenceRecord`s (see the module docstring).

    ``layout`` overrides detection (one of `LAYOUTS`); ``columns`` maps alignkit field -> your column
    name; ``on_bad_row`` is ``"error"`` (raise `BadRowError` at the first bad row) or ``"skip"``.
    ``split`` picks from a save_to_disk DatasetDict or a Hub dataset (with slicing there: ``train[:1000]``);
    ``subset``: a Hub dataset's subset (configuration).
    """
    mapping = check_columns(columns, layout)
    src = open_source(source, split, subset)
    reason = f"layout '{layout}' given explicitly" if layout else ""
    if layout is None and src.columns is not None:
        layout, reason = _layout_for(src, src.columns, mapping)

    def parse(raw: _Raw) -> PreferenceRecord:
        nonlocal layout, reason
        if layout is None:
            layout, reason = _layout_for(src, list(raw.data), mapping)
        record = parse_row(raw.data, layout, columns=mapping, text_cells=src.text_cells)
        record.origin = _where(src, raw)
        return record

    rows = read_rows(src, parse, on_bad_row, rejects_path)
    records, skipped, n, rejects = rows.items, rows.skipped, rows.n_rows, rows.rejects
    result = ReadResult(records, layout or "unknown", skipped, n, rejects, src.name, reason)
    if not records:
        raise SourceError(f"{src.name}: no valid records in {n} rows" + (f" ({result.summary()})" if skipped else ""))
    log.info("%s: %s", src.name, reason)  # after the rows: a mistake in the data stays one line on the console
    log.log(logging.WARNING if skipped or result.warnings else logging.INFO, "%s", result.summary())
    return result
