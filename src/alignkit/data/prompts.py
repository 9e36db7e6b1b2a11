"""Prompt files for sampling (online training, generation, evaluation during training)."""

from __future__ import annotations

from pathlib import Path

from alignkit.data.io import iter_rows, read_text_lines
from alignkit.errors import DataError


class PromptRows:
    """Prompt rows (dicts with ``prompt`` and any fields a reward reads, e.g. ``answer``)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.records: list = []

    def __len__(self) -> int:
        return len(self.rows)


def read_prompt_rows(path: str) -> list[dict]:
    """The rows of a prompts file: ``{"prompt": line}`` per non-empty line of a .txt, else the rows of a data
    file (JSONL, Parquet, CSV), each with a non-empty ``prompt``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"prompts file {path} does not exist")
    if p.suffix == ".txt":
        return [{"prompt": line} for line in read_text_lines(p) if line.strip()]
    rows = []
    for n, row in iter_rows(path):
        if not row.get("prompt"):
            raise DataError(f"{path} row {n}: field 'prompt' is missing or empty")
        rows.append(row)
    return rows
