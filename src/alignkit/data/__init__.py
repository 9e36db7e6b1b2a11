"""Preference data: the `PreferenceRecord` schema, row layouts, and readers/writers.

    from alignkit.data import read_records
    result = read_records("prefs.jsonl", on_bad_row="skip")   # layout detected from the columns
    print(result.summary()); records = result.records

    from alignkit.data import apply_transforms   # pairs, curriculum, rso, ... (docs/data_transforms.md)
    records, reports = apply_transforms(records, [{"name": "pairs", "strategy": "best_vs_worst"}])
"""

from alignkit.data.io import BadRowError, ReadResult, SourceError, iter_rows, read_records, write_records
from alignkit.data.layouts import LAYOUTS, LayoutError, detect_layout, explain_layout, parse_row
from alignkit.data.schema import PreferenceRecord, RecordError, pair
from alignkit.data.transforms import apply_transforms, conditioned_prompt

__all__ = [
    "LAYOUTS",
    "BadRowError",
    "LayoutError",
    "PreferenceRecord",
    "ReadResult",
    "RecordError",
    "SourceError",
    "apply_transforms",
    "conditioned_prompt",
    "detect_layout",
    "explain_layout",
    "iter_rows",
    "pair",
    "parse_row",
    "read_records",
    "write_records",
]
