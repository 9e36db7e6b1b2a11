"""Row layouts: turn one raw row (a dict) into a `PreferenceRecord`.

Layouts and how `detect_layout` recognises them from the column names (first match wins):

* ``paired``       — ``prompt, chosen, rejected`` -> K=2, ranks ``[0, 1]``; ``margin``,
  ``score_chosen``, ``score_rejected`` (checked finite) are kept in ``meta``. If chosen and rejected
  are whole conversations starting with a non-assistant turn (UltraFeedback-binarized style, the
  prompt repeated inside), they are split like ``conversation`` and the prefix is the prompt.
* ``conversation`` — ``chosen, rejected`` and no ``prompt``: whole conversations (message lists,
  or HH-RLHF text with ``"\\n\\nHuman:"``/``"\\n\\nAssistant:"`` turns) split at their shared prefix.
* ``unpaired``     — ``prompt, completion, label`` -> K=1 labels record (KTO style).
* ``native``       — ``prompt, responses`` and ranks/scores/labels: `PreferenceRecord.to_dict()`.
* ``ranked`` / ``scored`` — ``prompt, completions`` plus ``ranks`` / ``scores`` (``completions`` with
  ``labels`` reads as ``native``; all three share one parser, ``completions`` = ``responses``).
* ``messages`` alone is chat (SFT) data, not preference data -> `LayoutError`.

Every layout carries ``system``, ``id``, ``weight``, ``group`` into the record, merges a ``meta``
dict column into ``meta`` and puts every other non-null column into ``meta`` too (integer ``id`` and
``group`` values become strings; null optional columns count as absent). A ``p`` column (or ``meta.p``),
the soft label P(chosen ≻ rejected) of ``soft_dpo``, must be a number in [0, 1]. A ``user`` column
(or ``meta.user``), who labelled the record (personalised reward models, ``pal``), must be a non-empty
string (an integer becomes one).

``text_cells=True`` (CSV): cells are strings, so a cell where a list is needed (responses, ranks,
scores, labels, conversations) is JSON-decoded when it parses as a JSON list; a prompt/response
cell is decoded only when it parses as a non-empty JSON list of objects (a message list); ``meta``
is decoded when it parses as a JSON object; ``weight`` and the paired score columns are parsed as
floats; an empty cell in an optional column counts as absent. Other columns stay strings.

Errors are `RecordError` whose ``field`` is the user's column name (``chosen``, ``completions[2]``,
or the mapped name when ``columns=`` renamed it) and whose message reads ``field 'x': detail``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from alignkit.data.schema import LABEL_KINDS, PreferenceRecord, RecordError
from alignkit.errors import DataError

LAYOUTS = ("paired", "unpaired", "ranked", "scored", "conversation", "native")
COMMON = ("system", "id", "weight", "group", "meta")
PAIR_NUMBERS = ("margin", "score_chosen", "score_rejected")
FIELDS = (
    "prompt", "chosen", "rejected", "completion", "label", "responses", "completions",
    *LABEL_KINDS, *COMMON, *PAIR_NUMBERS,
)  # fmt: skip
_LABEL_WORDS = {"true": True, "false": False, "desirable": True, "undesirable": False, "1": True, "0": False}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


class LayoutError(DataError):
    """The columns fit no layout (or a mapping/override is invalid)."""


# ----------------------------------------------------------------------------------- detection
def _detect(columns: Iterable[str]) -> tuple[str, str]:
    cols = [str(c) for c in columns]
    have = set(cols)

    def why(name: str, used: Iterable[str], extra: str = "") -> tuple[str, str]:
        return name, f"detected layout '{name}' from columns {', '.join(used)}{extra}"

    if {"chosen", "rejected"} <= have:
        if "prompt" in have:
            return why("paired", ["prompt", "chosen", "rejected"])
        return why("conversation", ["chosen", "rejected"], " (no 'prompt' column: prompt = shared leading turns)")
    if {"completion", "label"} <= have:
        return why("unpaired", [c for c in ("prompt", "completion", "label") if c in have])
    resp = next((c for c in ("responses", "completions") if c in have), None)
    kinds = [k for k in LABEL_KINDS if k in have]
    if resp and kinds:
        used = [c for c in ("prompt", resp, *kinds) if c in have]
        if resp == "completions" and kinds[0] in ("ranks", "scores"):
            return why("ranked" if kinds[0] == "ranks" else "scored", used)
        return why("native", used)
    shown = ", ".join(cols) or "(none)"
    if resp:
        raise LayoutError(f"column '{resp}' needs a 'ranks', 'scores' or 'labels' column; columns are: {shown}")
    if "messages" in have:
        raise LayoutError(
            f"columns {shown}: a 'messages' column alone is a chat transcript (SFT data), not preference "
            "data; alignkit needs prompt+chosen+rejected, chosen+rejected conversations, "
            "prompt+completion+label, or prompt+completions with ranks/scores"
        )
    raise LayoutError(
        f"cannot tell the layout from columns {shown}; expected prompt+chosen+rejected (paired), "
        "chosen+rejected (conversation), prompt+completion+label (unpaired), prompt+completions+"
        "ranks|scores (ranked/scored) or prompt+responses+ranks|scores|labels (native); pass "
        "layout=... and/or columns={'prompt': 'your_column', ...}"
    )


def detect_layout(columns: Iterable[str]) -> str:
    """The layout name for these column names (alignkit names, after any mapping)."""
    return _detect(columns)[0]


def explain_layout(columns: Iterable[str]) -> str:
    """Why: e.g. ``"detected layout 'paired' from columns prompt, chosen, rejected"``."""
    return _detect(columns)[1]


# ------------------------------------------------------------------------------------- mapping
def check_columns(columns: Mapping[str, str] | None, layout: str | None = None) -> dict[str, str]:
    """Validate a ``{alignkit field: user column}`` mapping (and a layout name); returns a plain dict."""
    if layout is not None and layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if not columns:
        return {}
    if not isinstance(columns, Mapping):
        raise LayoutError("columns= must be a dict mapping alignkit field -> your column name")
    bad = [k for k in columns if k not in FIELDS]
    if bad:
        raise LayoutError(f"columns= has unknown alignkit field(s) {bad}; allowed: {', '.join(FIELDS)}")
    users = list(columns.values())
    if len(set(users)) != len(users):
        raise LayoutError(f"columns= maps two fields to the same column: {columns}")
    return {k: str(v) for k, v in columns.items()}


def rename(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Row keyed by alignkit names: mapped user columns renamed, everything else unchanged."""
    if not columns:
        return dict(row)
    back = {user: ours for ours, user in columns.items()}
    taken = set(columns)
    out = {k: v for k, v in row.items() if k not in back and k not in taken}
    out.update({back[k]: v for k, v in row.items() if k in back})
    return out


def renamed_columns(cols: Iterable[str], columns: Mapping[str, str]) -> list[str]:
    back = {user: ours for ours, user in (columns or {}).items()}
    return [back.get(c, c) for c in cols if c in back or c not in (columns or {})]


def layout_for_columns(cols: Iterable[str], columns: Mapping[str, str] | None = None, *, header: bool = True):
    """(layout, reason) for data with these user column names, after the ``columns=`` mapping.

    ``header=True`` means ``cols`` is the full column list, so every mapped column must be in it.
    """
    cols, mapping = list(cols), columns or {}
    missing = [f"{ours}->'{user}'" for ours, user in mapping.items() if user not in cols]
    if missing and header:
        raise LayoutError(f"columns= names column(s) not in the data: {', '.join(missing)}; "
                          f"columns are: {', '.join(map(str, cols))}")  # fmt: skip
    layout, reason = _detect(renamed_columns(cols, mapping))
    if mapping:
        reason += " (after columns=" + ", ".join(f"{k}<-{v}" for k, v in mapping.items()) + ")"
    return layout, reason


# ------------------------------------------------------------------------------ value helpers
def _err(field: str, detail: str, reason: str) -> RecordError:
    return RecordError(f"field '{field}': {detail}", field, reason)


def _json(value: Any, text: bool, want: type) -> Any:
    if text and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, want) else value
    return value


def _opt(r: Mapping[str, Any], name: str, text: bool) -> Any:
    value = r.get(name)
    return None if text and value == "" else value


def _need(r: Mapping[str, Any], name: str) -> Any:
    if name not in r:
        raise _err(name, f"missing (row has columns {', '.join(map(str, r)) or 'none'})", "missing_field")
    if r[name] is None:
        raise _err(name, "is null", "missing_field")
    return r[name]


def _text(r: Mapping[str, Any], name: str, text: bool) -> Any:
    value = _need(r, name)
    decoded = _json(value, text, list)
    if decoded is not value and decoded and all(isinstance(m, dict) for m in decoded):
        return decoded
    return value


def _number(value: Any, name: str, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _err(name, f"must be a number, got {value!r}", "wrong_type") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(name, f"must be a number, got {type(value).__name__}", "wrong_type")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer with hundreds of digits
        raise _err(name, f"is outside the float range ({len(str(value))} digits)", "out_of_range") from None
    if not finite:
        raise _err(name, f"is {value} (not finite)", "nan_score")
    return value


def _extras(r: Mapping[str, Any], used: Iterable[str], text: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for name in ("system", "id", "group"):
        value = _opt(r, name, text)
        if isinstance(value, int) and not isinstance(value, bool) and name != "system":
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise _err(name, f"must be a string, got {type(value).__name__}", "wrong_type")
        if value is not None:
            kw[name] = value
    weight = _opt(r, "weight", text)
    if weight is not None:
        kw["weight"] = _number(weight, "weight", text)
    meta = _json(_opt(r, "meta", text), text, dict)
    if meta is not None and not isinstance(meta, dict):
        raise _err("meta", f"must be an object, got {type(meta).__name__}", "wrong_type")
    meta = dict(meta or {})
    skip = set(used) | set(COMMON)
    meta.update({k: v for k, v in r.items() if k not in skip and v is not None})
    if meta.get("p") is not None:  # a soft label P(chosen ≻ rejected) (objective soft_dpo)
        meta["p"] = _number(meta["p"], "p", text)
        if not 0 <= meta["p"] <= 1:
            raise _err("p", f"must be a probability in [0, 1] (P(chosen ≻ rejected)), got {meta['p']!r}",
                       "wrong_value")
    if meta.get("user") is not None:  # who labelled the record (objective pal)
        meta["user"] = _user(meta["user"])
    if meta:
        kw["meta"] = meta
    return kw


def _user(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        got = repr(value) if isinstance(value, str) else type(value).__name__
        raise _err("user", f"must be a non-empty string (a user id), got {got}", "wrong_type")
    return value


# ------------------------------------------------------------------------------------- layouts
def _paired(r: dict[str, Any], text: bool, layout: str) -> PreferenceRecord:
    prompt, chosen, rejected = (_text(r, n, text) for n in ("prompt", "chosen", "rejected"))
    if all(isinstance(x, list) and x and isinstance(x[0], dict) and x[0].get("role") != "assistant"
           for x in (chosen, rejected)):  # fmt: skip
        # whole conversations that repeat the prompt (UltraFeedback-binarized style): split them;
        # the shared leading turns become the prompt and the `prompt` column is not used
        chosen, rejected = _messages(chosen, "chosen", text), _messages(rejected, "rejected", text)
        prompt, chosen, rejected = split_conversation(chosen, rejected)
    for name in PAIR_NUMBERS:
        value = _opt(r, name, text)
        if value is not None:
            r[name] = _number(value, name, text)
    extras = _extras(r, ("prompt", "chosen", "rejected"), text)
    return PreferenceRecord(prompt=prompt, responses=[chosen, rejected], ranks=[0, 1], **extras)


def _unpaired(r: dict[str, Any], text: bool, layout: str) -> PreferenceRecord:
    prompt, completion = _text(r, "prompt", text), _text(r, "completion", text)
    label = _need(r, "label")
    if isinstance(label, str) and label.strip().lower() in _LABEL_WORDS:
        label = _LABEL_WORDS[label.strip().lower()]
    elif isinstance(label, str):
        raise _err("label", f"{label!r} is not one of {', '.join(_LABEL_WORDS)}", "wrong_value")
    elif isinstance(label, bool) or (isinstance(label, (int, float)) and label in (0, 1)):
        label = bool(label)
    else:
        raise _err("label", f"must be true/false, 1/0 or desirable/undesirable, got {label!r}", "wrong_type")
    extras = _extras(r, ("prompt", "completion", "label"), text)
    return PreferenceRecord(prompt=prompt, responses=[completion], labels=[label], **extras)


def _listed(r: dict[str, Any], text: bool, layout: str) -> PreferenceRecord:
    resp = "responses" if "responses" in r else "completions"
    prompt = _text(r, "prompt", text)
    responses = _json(_need(r, resp), text, list)
    if not isinstance(responses, list):
        raise _err(resp, f"must be a list of responses, got {type(responses).__name__}", "wrong_type")
    if text:
        responses = [_text({resp: x}, resp, True) for x in responses]
    need = {"ranked": "ranks", "scored": "scores"}.get(layout)
    if need:
        _need(r, need)
    labels = {k: _json(_opt(r, k, text), text, list) for k in LABEL_KINDS if _opt(r, k, text) is not None}
    extras = _extras(r, ("prompt", resp, *LABEL_KINDS), text)
    return PreferenceRecord(prompt=prompt, responses=responses, **labels, **extras)


def _messages(value: Any, name: str, text: bool) -> list[dict[str, Any]]:
    value = _json(value, text, list)
    if isinstance(value, str):
        s = "\n\n" + value if value.startswith(("Human:", "Assistant:")) else value
        parts = _HH_TURN.split(s)
        if len(parts) < 3 or parts[0].strip():
            raise _err(name, "must be a list of messages (or HH-RLHF 'Human:/Assistant:' text)", "wrong_type")
        roles = {"Human": "user", "Assistant": "assistant"}
        value = [{"role": roles[role], "content": c} for role, c in zip(parts[1::2], parts[2::2])]
    if not isinstance(value, list) or not value:
        raise _err(name, "must be a non-empty list of messages", "wrong_type" if value else "empty_field")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _err(name, f"message {i} must be an object with string 'role' and 'content'", "wrong_type")
    return value


def split_conversation(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> tuple[list, list, list]:
    """Split two conversations into (prompt, chosen_tail, rejected_tail) at their shared prefix.

    The prompt is the longest common prefix of messages; if it ends with an assistant turn it backs
    off to the last user turn. Both tails must then start with an assistant turn.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) and n == len(rejected):
        raise _err("chosen", "chosen and rejected are the same conversation", "no_split")
    end = n
    if end and chosen[end - 1]["role"] == "assistant":
        users = [i for i in range(end) if chosen[i]["role"] == "user"]
        end = users[-1] + 1 if users else 0
    if end == 0:
        raise _err("chosen", "chosen and rejected share no prompt (they differ at the first turn)", "no_split")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if end >= len(conv):
            raise _err(name, f"has no reply after the shared prompt ({end} messages)", "no_split")
        if conv[end]["role"] != "assistant":
            raise _err(name, f"message {end} after the shared prompt is a '{conv[end]['role']}' turn, "
                       "expected 'assistant' (chosen and rejected have different prompts)", "no_split")  # fmt: skip
    return chosen[:end], chosen[end:], rejected[end:]


def _conversation(r: dict[str, Any], text: bool, layout: str) -> PreferenceRecord:
    chosen = _messages(_need(r, "chosen"), "chosen", text)
    rejected = _messages(_need(r, "rejected"), "rejected", text)
    prompt, c, rj = split_conversation(chosen, rejected)
    extras = _extras(r, ("chosen", "rejected", "prompt"), text)
    return PreferenceRecord(prompt=prompt, responses=[c, rj], ranks=[0, 1], **extras)


_PARSERS = {"paired": _paired, "unpaired": _unpaired, "ranked": _listed, "scored": _listed,
            "native": _listed, "conversation": _conversation}  # fmt: skip
# record field -> layout column (exact names first, then the part before '[')
_FIELD_MAP = {
    "paired": {"responses[0]": "chosen", "responses[1]": "rejected"},
    "conversation": {"responses[0]": "chosen", "responses[1]": "rejected", "prompt": "chosen"},
    "unpaired": {"responses[0]": "completion", "responses": "completion", "labels": "label", "labels[0]": "label"},
}


def _user_field(field: str, layout: str, row: Mapping[str, Any], columns: Mapping[str, str]) -> str:
    table = dict(_FIELD_MAP.get(layout, {}))
    if layout in ("ranked", "scored", "native") and "responses" not in row:
        table["responses"] = "completions"
    base, sep, rest = field.partition("[")
    name = table.get(field) or (table.get(base, base) + sep + rest)
    base, sep, rest = name.partition("[")
    return (columns or {}).get(base, base) + sep + rest


def parse_row(
    row: Mapping[str, Any], layout: str, *, columns: Mapping[str, str] | None = None, text_cells: bool = False
) -> PreferenceRecord:
    """One raw row -> `PreferenceRecord`; raises `RecordError` naming the user's column."""
    columns = check_columns(columns, layout)
    r = rename(row, columns)
    try:
        return _PARSERS[layout](r, text_cells, layout)
    except RecordError as e:
        msg, field = str(e), e.field
        quoted = re.match(r"field '([^']*)'(?:: | is | )(.*)", msg, re.S)
        if quoted:
            if field is None or quoted.group(1).startswith(field):
                field = quoted.group(1)
            msg = quoted.group(2)
        if field is None:
            raise
        user = _user_field(field, layout, r, columns)
        raise RecordError(f"field '{user}': {msg}", user, e.reason) from None
