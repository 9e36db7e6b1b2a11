"""OpenAssistant conversation trees -> ranked-list records (`alignkit data convert --from oasst`).

OpenAssistant (Köpf et al. 2023, "OpenAssistant Conversations", https://arxiv.org/abs/2304.07327) publishes
message trees in two exports, both read here:

* **trees** (``*.trees.jsonl``): one row per tree, ``{"message_tree_id", "prompt": MESSAGE}``, each message
  holding its answers in ``replies`` (nested);
* **messages** (``*.messages.jsonl``, the ``oasst1`` / ``oasst2`` datasets on the Hub): one row per message with
  ``message_id`` and ``parent_id`` (null for a tree's first prompt).

A message has ``message_id``, ``text``, ``role`` (``prompter`` or ``assistant``), and optionally ``rank``
(the crowd's ranking of an answer among its siblings, 0 = best; null when unranked), ``deleted``,
``review_result`` (false: failed review), ``lang``, ``message_tree_id``.

Every prompter message with at least two ranked, live assistant answers becomes one record: prompt = the
conversation from the tree's root to that message as chat messages (``prompter`` -> ``user``), responses =
those answers (one assistant message each), ranks = their order by ``rank`` (0, 1, ...; OASST ranks are
distinct). ``meta``: ``message_tree_id``, ``lang``, ``message_ids`` of the responses; ``id`` = the prompt's
``message_id``. Counted and reported, never silently dropped: ``deleted`` messages and the messages below them,
messages that failed review (``review_result`` false) and those below them, live answers without a rank, prompts
with fewer than two ranked answers, and messages whose parent is not in the file (``orphans``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from alignkit.data import io
from alignkit.data.io import ReadResult, SourceError
from alignkit.data.schema import PreferenceRecord, RecordError

ROLES = {"prompter": "user", "assistant": "assistant"}


def is_oasst(row: dict[str, Any]) -> str | None:
    """``"trees"`` or ``"messages"`` if ``row`` is from an OASST export, else None."""
    if isinstance(row.get("prompt"), dict) and "message_tree_id" in row:
        return "trees"
    if {"message_id", "parent_id", "role", "text"} <= set(row):
        return "messages"
    return None


def _err(field: str, detail: str, reason: str = "wrong_type") -> RecordError:
    return RecordError(f"field '{field}': {detail}", field, reason)


def check_message(m: Any, where: str = "") -> dict[str, Any]:
    """``m`` if it is a valid OASST message (``message_id``, ``text``, ``role``, ``rank`` types), else a
    `RecordError` naming the field (``where`` is its path inside a tree row, e.g. ``prompt.replies[1]``)."""
    p = f"{where}." if where else ""
    if not isinstance(m, dict):
        raise _err(where or "message", f"must be an object, got {type(m).__name__}")
    if not isinstance(m.get("message_id"), str) or not m["message_id"]:
        raise _err(f"{p}message_id", "must be a non-empty string", "missing_field")
    if not isinstance(m.get("text"), str):
        raise _err(f"{p}text", "must be a string", "missing_field" if m.get("text") is None else "wrong_type")
    if m.get("role") not in ROLES:
        raise _err(f"{p}role", f"must be 'prompter' or 'assistant', got {m.get('role')!r}", "wrong_value")
    rank = m.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != rank):
        raise _err(f"{p}rank", f"must be a number or null, got {rank!r}", "wrong_value")
    return m


def flatten_tree(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of one trees-export row, each with ``parent_id`` set from the nesting (checked)."""
    out = []
    stack: list[tuple[dict[str, Any], str | None, str]] = [(row["prompt"], None, "prompt")]
    while stack:
        m, parent, where = stack.pop()
        check_message(m, where)
        replies = m.get("replies") or []
        if not isinstance(replies, list):
            raise _err(f"{where}.replies", "must be a list of messages")
        out.append({**{k: v for k, v in m.items() if k != "replies"}, "parent_id": parent,
                    "message_tree_id": m.get("message_tree_id", row.get("message_tree_id"))})
        stack.extend((r, m["message_id"], f"{where}.replies[{i}]") for i, r in reversed(list(enumerate(replies))))
    return out


def _dropped(m: dict[str, Any]) -> str | None:
    if m.get("deleted"):
        return "deleted"
    if m.get("review_result") is False:
        return "failed_review"
    return None


def _below(children: dict[str | None, list[dict[str, Any]]], root: dict[str, Any]) -> int:
    n, stack = 0, list(children.get(root["message_id"], []))
    while stack:
        m = stack.pop()
        n += 1
        stack.extend(children.get(m["message_id"], []))
    return n


def tree_records(messages: Iterable[dict[str, Any]]) -> tuple[list[PreferenceRecord], Counter]:
    """Records from checked messages (any order, any number of trees) and the counts of what was left out."""
    messages = list(messages)
    counts: Counter = Counter(messages=len(messages))
    ids = {m["message_id"] for m in messages}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    orphans = [m for m in messages if m.get("parent_id") is not None and m["parent_id"] not in ids]
    for m in messages:
        if m.get("parent_id") is None or m["parent_id"] in ids:
            children[m.get("parent_id")].append(m)
    for m in orphans:
        counts["orphans"] += 1
        counts["below_orphans"] += _below(children, m)
    records = []
    stack = [(m, []) for m in reversed(children[None])]  # (message, the conversation before it)
    while stack:
        m, history = stack.pop()
        if reason := _dropped(m):
            counts[reason] += 1
            counts[f"below_{reason}"] += _below(children, m)
            continue
        turn = history + [{"role": ROLES[m["role"]], "content": m["text"]}]
        kids = children.get(m["message_id"], [])
        if m["role"] == "prompter":
            records.extend(_ranked(m, turn, kids, counts))
        stack.extend((k, turn) for k in reversed(kids))
    counts["records"] = len(records)
    return records, counts


def _ranked(prompt: dict[str, Any], turn: list[dict[str, str]], kids: list[dict[str, Any]],
            counts: Counter) -> Iterator[PreferenceRecord]:
    live = [k for k in kids if k["role"] == "assistant" and _dropped(k) is None]
    ranked = sorted((k for k in live if k.get("rank") is not None), key=lambda k: k["rank"])
    counts["unranked_replies"] += len(live) - len(ranked)
    if len(ranked) < 2:
        counts["prompts_without_ranking"] += 1
        return
    meta = {"message_tree_id": prompt.get("message_tree_id"), "message_ids": [k["message_id"] for k in ranked]}
    if prompt.get("lang") is not None:
        meta["lang"] = prompt["lang"]
    yield PreferenceRecord(prompt=turn, responses=[[{"role": "assistant", "content": k["text"]}] for k in ranked],
                           ranks=list(range(len(ranked))), id=prompt["message_id"], meta=meta)


def summary(counts: Counter) -> str:
    """``"1 record from 14 messages; left out: 2 deleted (+2 below them), ..."``."""
    n = counts["records"]
    parts = [f"{counts[k]} {label}" + (f" (+{counts['below_' + k]} below them)" if counts.get("below_" + k) else "")
             for k, label in (("deleted", "deleted"), ("failed_review", "failed review"))
             if counts.get(k)]
    parts += [f"{counts[k]} {label}" for k, label in (
        ("unranked_replies", "unranked answers"), ("prompts_without_ranking", "prompts with < 2 ranked answers"),
        ("orphans", "orphans (parent not in the file)"), ("below_orphans", "below orphans")) if counts.get(k)]
    return (f"{n} ranked list{'s' if n != 1 else ''} from {counts['messages']} messages"
            + (f"; left out: {', '.join(parts)}" if parts else ""))


def read_oasst(src, rows: Iterable, on_bad_row: str, rejects, reason: str) -> tuple[ReadResult, Counter]:
    """Read an OASST export from `alignkit.data.io` raw rows: (the records as a `ReadResult`, the counts)."""
    messages, skipped, bad_rows, n, kind = [], Counter(), [], 0, None
    for n, raw in enumerate(rows, 1):  # noqa: B007
        err = raw.error
        if err is None and raw.data is not None:
            kind = kind or is_oasst(raw.data) or "messages"
            try:
                messages += flatten_tree(raw.data) if kind == "trees" else [check_message(raw.data)]
                continue
            except RecordError as e:
                err = e
        if err.reason == "blank_line":
            skipped["blank_line"] += 1
            continue
        bad = io._bad(src, raw, err)
        if on_bad_row == "error":
            raise bad
        skipped[bad.reason] += 1
        bad_rows.append(bad.to_json())
    if bad_rows:
        io.write_rejects(bad_rows, rejects)
    records, counts = tree_records(messages)
    for r in records:
        r.origin = f"{src.name} message {r.id}"
    read = ReadResult(records, "oasst", skipped, n, rejects if bad_rows else None, src.name, reason)
    if not records:
        raise SourceError(f"{src.name}: no prompt with two or more ranked answers ({summary(counts)})")
    return read, counts
