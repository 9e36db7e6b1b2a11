"""Write records: JSON lines, Parquet or CSV by the file's suffix, replaced atomically (`alignkit.io_atomic`).

`alignkit.data.io` reads back everything written here: Parquet columns that do not survive Arrow's types
(mixed text/messages, ragged dicts) are stored as JSON text and listed in the ``alignkit.json_columns``
schema metadata; CSV list/dict cells are JSON text.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.errors import DataError
from alignkit.io_atomic import atomic_path, atomic_write

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CANONICAL = ("prompt", "responses", "ranks", "scores", "labels", "system", "id", "weight", "group", "meta")
JSON_COLUMNS_KEY = b"alignkit.json_columns"


def _same(a: Any, b: Any) -> bool:  # equal, with equal types all the way down (1 vs 1.0, dict keys)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _write_parquet(rows: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, encoded = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arr = pa.array(values)
            ok = _same(arr.to_pylist(), values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            ok = False
        if not ok:  # mixed text/messages, ragged dicts...: store JSON text, decoded again on read
            arr = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
            encoded.append(name)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, names=names)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({JSON_COLUMNS_KEY: json.dumps(encoded).encode()}), tmp)


def _csv_cell(value: Any) -> str:
    if value is None or isinstance(value, (str, float)):
        return "" if value is None else value if isinstance(value, str) else repr(value)
    return json.dumps(value, ensure_ascii=False)


def write_records(records: Iterable[PreferenceRecord], path: str | os.PathLike) -> Path:
    """Write records in canonical form (`PreferenceRecord.to_dict`): JSON lines for ``.jsonl``/
    ``.ndjson``/``.json``, Parquet for ``.parquet``, CSV (list/dict cells JSON-encoded) for ``.csv``.
    The file is replaced atomically: a failure part-way leaves any earlier file at ``path`` as it was."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path.name}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferenceRecord):
            raise TypeError(f"write_records: item {i} is a {type(rec).__name__}, not a PreferenceRecord")
        rows.append(rec.to_dict())
    names = [c for c in CANONICAL if any(c in row for row in rows)]
    if kind == "parquet":
        _write_parquet(rows, names, path)
    elif kind == "csv":
        with atomic_write(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows([_csv_cell(row.get(c)) for c in names] for row in rows)
    else:
        with atomic_write(path) as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
