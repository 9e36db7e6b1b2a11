"""The config keys with one line of help each, read from the config dataclass's own source.

`TrainConfig`'s fields carry their documentation as comments (``lr: float = 5e-6  # ...``) under group
comments (``# optimisation``). `config_keys` reads them once with `ast` and `tokenize`, so
``alignkit train --help`` can never drift from the class: a new key shows up with its comment, and
`tests/test_cli_help.py` fails for a key without one.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

from alignkit.config import TrainConfig


@dataclass(frozen=True)
class KeyHelp:
    group: str  # the comment line above the key's group ("optimisation")
    name: str
    default: Any
    help: str  # the key's own comment ("" when it has none)


def config_keys(cls: type | None = None) -> list[KeyHelp]:
    """Every field of ``cls`` (default `TrainConfig`) in source order, with its group and comment."""
    if cls is None:
        cls = TrainConfig
    source = textwrap.dedent(inspect.getsource(cls))
    comments, standalone = {}, {}  # line -> comment text; lines holding nothing but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (standalone if not tok.line[: tok.start[1]].strip() else comments)[tok.start[0]] = text
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    lines = {n.target.id: (n.lineno, n.end_lineno) for n in body
             if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}  # fmt: skip
    out = []
    for f in dataclasses.fields(cls):
        start, end = lines[f.name]
        group = next((standalone[i] for i in range(start - 1, 0, -1) if i in standalone), "")
        text = next((comments[i] for i in range(end, start - 1, -1) if i in comments), "")
        out.append(KeyHelp(group, f.name, _default(f), text))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def shown(value: Any) -> str:
    """A value as written in YAML or ``key=value``: null, true/false, '' for an empty string, [] and {}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return value or "''"
    return "[]" if value == [] else "{}" if value == {} else str(value)


def format_keys(cls: type | None = None) -> str:
    """The keys by group, one line each: ``  name  default  help`` (for ``alignkit train --help``)."""
    try:
        keys = config_keys(cls)
    except (OSError, TypeError):  # no source to read (a build without .py files): names and defaults only

        keys = [KeyHelp("", f.name, _default(f), "") for f in dataclasses.fields(cls or TrainConfig)]
    width = max(len(k.name) for k in keys)
    dwidth = min(max(len(shown(k.default)) for k in keys), 12)
    lines = ["config keys (key=value after the YAML file, or keys of the file; defaults shown; "
             "docs in src/alignkit/config.py):"]  # fmt: skip
    group = None
    for k in keys:
        if k.group != group:
            group = k.group
            lines.append(f"\n{group}:" if group else "")
        lines.append(f"  {k.name:<{width}}  {shown(k.default):<{dwidth}}  {k.help}".rstrip())
    return "\n".join(lines)
