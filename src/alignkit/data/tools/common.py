"""Helpers the data tools share: record text, text normalisation, progress bars, JSON output."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alignkit.data.schema import PreferenceRecord, Text
from alignkit.errors import ConfigError
from alignkit.io_atomic import atomic_write, atomic_write_text

T = TypeVar("T")
TEXT_PARTS = ("all", "prompt", "responses")
_SPACE = re.compile(r"\s+")


def plain(text: Text) -> str:
    """A prompt or response as one string: text as is, a chat's message contents joined by newlines."""
    return text if isinstance(text, str) else "\n".join(m["content"] for m in text)


def prompt_text(rec: PreferenceRecord) -> str:
    """The record's system prompt (if any) and prompt, as one string."""
    return (rec.system + "\n" if rec.system else "") + plain(rec.prompt)


def record_text(rec: PreferenceRecord, part: str = "all") -> str:
    """``prompt`` (with the system prompt), ``responses`` (joined by newlines) or ``all`` (both)."""
    if part not in TEXT_PARTS:
        raise ConfigError(f"text part must be one of {', '.join(TEXT_PARTS)}, got {part!r}")
    responses = "\n".join(plain(r) for r in rec.responses)
    return {"prompt": prompt_text(rec), "responses": responses, "all": prompt_text(rec) + "\n" + responses}[part]


def normalize(text: str) -> str:
    """Unicode NFKC, case-folded, runs of whitespace collapsed to one space, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def record_key(rec: PreferenceRecord) -> str:
    """Identity of a record's content: system, prompt, responses and labels (not id, weight or meta)."""
    kind = rec.label_kind
    return json.dumps([rec.system, rec.prompt, rec.responses, kind, getattr(rec, kind)], sort_keys=True)


def progress(items: Iterable[T], enabled: bool, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when ``enabled`` and stderr is a terminal (logs stay clean)."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=None)  # no bar when stderr is not a terminal


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    with atomic_write(path) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return Path(path)


def counts(counter: dict[str, int]) -> str:
    """``"3 tied, 1 below_min_margin"`` (largest first), or ``"none"``."""
    items = sorted(((k, v) for k, v in counter.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{v} {k}" for k, v in items) or "none"
