"""Precomputed judgments (``alignkit eval --judgments FILE``): verdicts someone already has — a human study,
another judge, an arena log — turned into the same report as ``alignkit eval``.

One row per comparison, JSONL / CSV / Parquet (read with `alignkit.data.io`'s machinery: row numbers,
`BadRowError` naming file, row and field, ``on_bad_row="skip"`` counting each reason and writing
``<stem>.rejects.jsonl``)::

    {"prompt": ..., "system_a": "dpo", "system_b": "sft", "output_a": "...", "output_b": "...",
     "outcome": 1 | 0.5 | 0}          # A wins / tie / B wins;  or  "p_a": 0.73  (a soft P(A wins))
    # optional: "subset"

``system_a``'s answer is the one the judge saw first. When a comparison appears in both orders (same
prompt, same two systems and answers, swapped), the two verdicts are averaged from each side, as for
alignkit's own LLM judge, and they give the position-bias figures. Soft outcomes count as their
probability: a win rate is the mean of ``p``.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.io import SourceError, open_source, read_rows, skipped_text
from alignkit.data.schema import RecordError, Text
from alignkit.errors import ConfigError
from alignkit.eval.eval_report import write_eval_report
from alignkit.eval.evaluate import compare_systems, system_row
from alignkit.eval.systems import System, lengths, prompt_key
from alignkit.rewards.judges import Comparison

FIELDS = ("prompt", "system_a", "system_b", "output_a", "output_b")


@dataclass
class Judgment:
    prompt: Text
    system_a: str
    system_b: str
    output_a: str
    output_b: str
    p_a: float  # P(A wins): 1 / ½ / 0 for an outcome, else the soft probability
    subset: str | None = None


@dataclass
class Judgments:
    rows: list[Judgment]
    source: str
    skipped: Counter = field(default_factory=Counter)
    n_rows: int = 0
    rejects_path: Path | None = None

    def summary(self) -> str:
        return f"read {len(self.rows)} judgments from {self.source}" + skipped_text(self.skipped, self.rejects_path)


def _err(name: str, detail: str, reason: str) -> RecordError:
    return RecordError(f"field '{name}': {detail}", name, reason)


def _number(row: dict[str, Any], name: str, text: bool) -> float | None:
    value = row.get(name)
    if value is None or (text and isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _err(name, f"must be a number, got {type(value).__name__}", "wrong_type")
    try:
        number = float(value)
    except ValueError:
        raise _err(name, f"must be a number, got {value!r}", "wrong_type") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _err(name, f"must be finite, got {value!r}", "wrong_value")
    return number


def parse_judgment(row: dict[str, Any], text_cells: bool = False) -> Judgment:
    """One row → `Judgment`; a bad field raises `RecordError` (the reader adds file and row)."""
    values = {}
    for name in FIELDS:
        if name not in row or row[name] is None:
            raise _err(name, f"missing (row has fields {', '.join(sorted(map(str, row))) or 'none'})", "missing_field")
        value = row[name]
        if name == "prompt" and text_cells and isinstance(value, str) and value.lstrip().startswith("["):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if name == "prompt" and isinstance(value, list):
            if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
                raise _err(name, "a message list needs dicts with 'role' and string 'content'", "wrong_type")
        elif not isinstance(value, str):
            raise _err(name, f"must be a string, got {type(value).__name__}", "wrong_type")
        elif name != "output_a" and name != "output_b" and not value.strip():
            raise _err(name, "is an empty string", "empty_field")
        values[name] = value
    if values["system_a"] == values["system_b"]:
        raise _err("system_b", f"names the same system as system_a ({values['system_a']!r}); a judgment compares "
                               "two systems", "wrong_value")
    outcome, p_a = _number(row, "outcome", text_cells), _number(row, "p_a", text_cells)
    if outcome is not None and p_a is not None:
        raise _err("p_a", "give outcome (1 / 0.5 / 0) or p_a (a probability), not both", "wrong_value")
    if outcome is None and p_a is None:
        raise _err("outcome", "missing: give outcome (1 = A wins, 0.5 = tie, 0 = B wins) or p_a (P(A wins))",
                   "missing_field")
    if outcome is not None and outcome not in (0.0, 0.5, 1.0):
        raise _err("outcome", f"must be 1 (A wins), 0.5 (tie) or 0 (B wins), got {row['outcome']!r}; give a "
                              "probability as p_a", "wrong_value")
    if p_a is not None and not 0.0 <= p_a <= 1.0:
        raise _err("p_a", f"must be a probability in [0, 1], got {row['p_a']!r}", "wrong_value")
    subset = row.get("subset")
    return Judgment(**values, p_a=outcome if outcome is not None else p_a,
                    subset=None if subset in (None, "") else str(subset))


def read_judgments(source: str | Path, *, on_bad_row: str = "error", rejects_path: str | Path | None = None,
                   split: str = "train") -> Judgments:
    """Every row of ``source`` as a `Judgment`, with the training data's bad-row rules (module docstring)."""
    src = open_source(source, split)
    got = read_rows(src, lambda raw: parse_judgment(raw.data, src.text_cells), on_bad_row, rejects_path)
    rows, skipped, n = got.items, got.skipped, got.n_rows
    result = Judgments(rows, src.name, skipped, n, got.rejects)
    if not rows:
        raise SourceError(f"{src.name}: no valid judgments in {n} rows" + (f" ({result.summary()})" if skipped else ""))
    return result


class JudgedMatches:
    """The judgments as matches between systems: ``get(a, b)`` gives what `alignkit.eval.evaluate.Matches`
    gives (a's side), with both orders of a comparison merged into one order-averaged outcome."""

    def __init__(self, rows: list[Judgment]):
        self.systems: list[str] = []
        pending: dict[tuple, list[Judgment]] = defaultdict(list)  # one order, waiting for the other
        self.pairs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for j in rows:
            for s in (j.system_a, j.system_b):
                if s not in self.systems:
                    self.systems.append(s)
            key = (prompt_key(j.prompt), j.system_a, j.output_a, j.system_b, j.output_b)
            mirror = (key[0], j.system_b, j.output_b, j.system_a, j.output_a)
            if pending[mirror]:
                first = pending[mirror].pop(0)  # `first` showed j.system_b first
                self._add(first, p_other_first=j.p_a)
            else:
                pending[key].append(j)
        for waiting in pending.values():
            for j in waiting:
                self._add(j, None)
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def _add(self, j: Judgment, p_other_first: float | None) -> None:
        """One comparison of ``j.system_a`` (shown first, ``j.p_a``) with ``j.system_b``; ``p_other_first`` is
        P(first wins) when the two were shown the other way round."""
        p = j.p_a if p_other_first is None else (j.p_a + 1.0 - p_other_first) / 2
        self.pairs[(j.system_a, j.system_b)].append({
            "outcome": p, "prompt": j.prompt, "output_a": j.output_a, "output_b": j.output_b, "subset": j.subset,
            "p_ab": j.p_a if p_other_first is not None else None, "p_ba": p_other_first})

    def met(self, a: str, b: str) -> bool:
        return bool(self.pairs.get((a, b)) or self.pairs.get((b, a)))

    def get(self, a: str, b: str) -> dict[str, Any]:
        """``{"outcomes", "length_diff" (characters), "groups", "subsets", "comparison"}`` of a vs b."""
        if (a, b) not in self.cache:
            rows = [dict(c) for c in self.pairs.get((a, b), [])]
            for c in self.pairs.get((b, a), []):  # seen from a's side
                rows.append({"outcome": 1.0 - c["outcome"], "prompt": c["prompt"], "output_a": c["output_b"],
                             "output_b": c["output_a"], "subset": c["subset"],
                             "p_ab": c["p_ba"], "p_ba": c["p_ab"]})
            both = [c for c in rows if c["p_ab"] is not None]
            comp = Comparison([c["outcome"] for c in rows], p_ab=[c["p_ab"] for c in both] or None,
                              p_ba=[c["p_ba"] for c in both] or None)
            self.cache[(a, b)] = {
                "outcomes": comp.outcomes, "comparison": comp,
                "length_diff": [len(c["output_a"]) - len(c["output_b"]) for c in rows],
                "groups": [prompt_key(c["prompt"]) for c in rows], "subsets": [c["subset"] for c in rows]}
        return self.cache[(a, b)]

    def as_systems(self, source: str) -> dict[str, System]:
        """Each system's answers (one row per prompt, its distinct answers) for the report's tables and files."""
        answers: dict[str, dict[str, tuple[Text, list[str], str | None]]] = {s: {} for s in self.systems}
        for (a, b), comps in self.pairs.items():
            for c in comps:
                for name, out in ((a, c["output_a"]), (b, c["output_b"])):
                    entry = answers[name].setdefault(prompt_key(c["prompt"]), (c["prompt"], [], c["subset"]))
                    if out not in entry[1]:
                        entry[1].append(out)
        return {s: System(s, source, [p for p, _, _ in rows.values()], [o for _, o, _ in rows.values()],
                          [sub for _, _, sub in rows.values()]) for s, rows in answers.items()}


def evaluate_judgments(path: str | Path, *, baseline: str | None = None, tournament: str = "round-robin",
                       on_bad_row: str = "error", rejects_path: str | Path | None = None,
                       lc_anchors: tuple[str, ...] | list[str] = (), seed: int = 0, n_boot: int = 1000,
                       rating_boot: int = 200, out_dir: str | Path | None = None,
                       command: str | None = None) -> dict[str, Any]:
    """The ``alignkit eval`` report from a file of judgments: win rates over ``baseline`` (default: the system
    in most comparisons) with intervals, LC win rates, per subset, position bias where both orders are
    present, and Bradley–Terry / Elo ratings of three or more systems (every pair that met; ``tournament``
    ``"none"`` skips them). Returns the dict written to ``results.json``."""
    import time

    if tournament not in ("round-robin", "none"):
        raise ConfigError(f"judgments are rated as they were played: tournament must be round-robin (every pair that "
                         f"met) or none, got {tournament!r}")
    t0 = time.perf_counter()
    judged = read_judgments(path, on_bad_row=on_bad_row, rejects_path=rejects_path)
    matches = JudgedMatches(judged.rows)
    counts = Counter()
    for (a, b), comps in matches.pairs.items():
        counts[a] += len(comps)
        counts[b] += len(comps)
    default = max(matches.systems, key=lambda s: (counts[s], -matches.systems.index(s)))
    systems = matches.as_systems(str(path))
    both = sum(c["p_ab"] is not None for comps in matches.pairs.values() for c in comps)
    results: dict[str, Any] = {
        "command": command, "settings": {"judgments": str(path), "on_bad_row": on_bad_row, "seed": seed,
                                         "n_boot": n_boot, "rating_boot": rating_boot, "tournament": "given"},
        "judgments": {"source": judged.source, "rows": judged.n_rows, "read": len(judged.rows),
                      "skipped": dict(judged.skipped), "rejects": str(judged.rejects_path) if judged.rejects_path
                      else None, "comparisons": sum(len(c) for c in matches.pairs.values()),
                      "in_both_orders": both,
                      "soft": sum(j.p_a not in (0.0, 0.5, 1.0) for j in judged.rows)},
        "length_unit": "characters", "judge": {"name": f"judgments:{judged.source}", "kind": "precomputed",
                                               "calls": 0, "portia": False},
        "baseline": None, "win_rates": [], "position_bias": None, "tournament": None, "frontier": None,
        "length_control": None,
        "systems": [system_row(s, lengths(s), None, None, None) for s in systems.values()]}
    compare_systems(results, matches.systems, matches, baseline, "none" if tournament == "none" else "given", seed,
                    n_boot, rating_boot, lc_anchors, default_baseline=default)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        write_eval_report(results, systems, {}, {n: lengths(s) for n, s in systems.items()}, Path(out_dir))
    return results
