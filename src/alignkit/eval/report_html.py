"""Self-contained HTML reports: tables, text and PNG figures embedded as base64 data URIs.

The page has its CSS inline and loads nothing: it opens from disk with no server and no internet.
Every piece of text is HTML-escaped. ``write_results`` writes the numbers as JSON (NaN and infinities
become ``null`` / ``"inf"``, so strict JSON readers accept the file).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.io_atomic import atomic_write_text

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: .6em 0; }
.note { color: #555; font-size: .9em; } code, pre { background: #f6f6f6; padding: .1em .3em; }
pre { padding: .6em; white-space: pre-wrap; word-break: break-word; }
"""


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, None/NaN as an en dash, ``[lo, hi]`` as an interval."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "✓" if x else ""
    if isinstance(x, float):
        return ("inf" if x > 0 else "-inf") if math.isinf(x) else f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x):
        return f"[{fmt(x[0], digits)}, {fmt(x[1], digits)}]"
    return str(x)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v, digits))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def para(text: str, cls: str = "") -> str:
    return f'<p{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{html.escape(text)}</p>'


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def page(title: str, sections: Sequence[tuple[str, Sequence[str]]], subtitle: str = "") -> str:
    """A complete HTML document: ``sections`` are ``(heading, [html fragments])`` (fragments from the helpers)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(para(subtitle, "note"))
    for heading, fragments in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(fragments)
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def clean_json(x: Any) -> Any:
    """JSON-safe copy: NaN → None, ±inf → "inf"/"-inf", tuples → lists, other objects → str."""
    if isinstance(x, float):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(clean_json(results), indent=2, allow_nan=False) + "\n")
