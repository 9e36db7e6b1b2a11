"""Preference data: the `PreferenceRecord` schema, row layouts, and readers/writers.

    from alignkit.data import read_records
    result = read_records("prefs.jsonl", on_bad_row="skip")   # layout detected from the columns
    print(result.summary()); records = result.records
"""

from alignkit.data.io import BadRowError, ReadResult, SourceError, iter_rows, read_records, write_records
from alignkit.data.layouts import LAYOUTS, LayoutError, detect_layout, explain_layout, parse_row
from alignkit.data.schema import PreferenceRecord, RecordError, pair

__all__ = [
    "LAYOUTS",
    "BadRowError",
    "LayoutError",
    "PreferenceRecord",
    "ReadResult",
    "RecordError",
    "SourceError",
    "detect_layout",
    "explain_layout",
    "iter_rows",
    "pair",
    "parse_row",
    "read_records",
    "write_records",
]
