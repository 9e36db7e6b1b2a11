"""Regenerate docs/reliability.md from the fault-injection suite (tests/faults): case -> outcome, with totals.

    python scripts/reliability_table.py                 # runs pytest tests/faults -m "slow or not slow"
    python scripts/reliability_table.py --out /tmp/r.md tests/faults/test_input_faults.py

How a test in tests/faults becomes a row of the table (the convention every fault test follows):

* **case**: the test's id, ``test_name[param]`` (the file name groups the rows into sections);
* **expected outcome**: ``record_property("expected", "...")`` if the test records one (parametrized tests,
  one text per case); else the first paragraph of the test's docstring, written ``case -> expected outcome``
  or ``case: expected outcome`` (e.g. ``"SIGTERM during the final eval -> resumable checkpoint at the last
  step, exit 130"``);
* **observed outcome**: ``record_property("outcome", "...")`` if the test records one, *before* it asserts, so
  a failing test still says what it saw. Words the totals count: ``clean error`` (one line naming the source),
  ``silent loss`` (data or work lost without a word), ``crash`` (a traceback where a one-line error belongs).
  A test that records no outcome reads ``as expected`` when it passes (``clean error, as expected`` when its
  expected outcome is an error "in one line", which the test asserts); when it fails it is a ``crash`` if the
  failure is not an assertion, else ``wrong result``.

Totals: cases, clean errors, silent losses, crashes, failed tests, and the suite's wall time. The table is
written only when pytest ran to the end (a partial run is refused: nothing is written).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Collect:
    """A pytest plugin that keeps, per test: id, file, docstring's first line, recorded properties, result."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.finished = False

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            doc = (getattr(item, "function", None).__doc__ or "") if hasattr(item, "function") else ""
            self.rows[item.nodeid] = {"file": item.location[0], "case": item.name, "doc": first_paragraph(doc),
                                      "props": {}, "result": "not run", "crash": False, "seconds": 0.0}

    def pytest_runtest_logreport(self, report) -> None:
        row = self.rows.setdefault(report.nodeid, {"file": report.location[0], "case": report.nodeid, "doc": "",
                                                   "props": {}, "result": "not run", "crash": False, "seconds": 0.0})
        row["props"].update(dict(report.user_properties))
        row["seconds"] += report.duration
        if report.when == "call" or report.failed or report.skipped:
            if report.failed or row["result"] in ("not run", "passed"):
                row["result"] = report.outcome
            if report.failed and report.longrepr is not None:
                text = str(report.longrepr)
                row["crash"] = "AssertionError" not in text and "assert " not in text

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.finished = exitstatus in (0, 1)  # all tests ran (some may have failed); not interrupted or broken


def first_paragraph(doc: str) -> str:
    lines = doc.strip().splitlines()
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    return " ".join(line.strip() for line in lines[:end])


def _split(doc: str) -> tuple[str, str]:
    """(case, expected outcome) of a docstring's first paragraph."""
    for sep in (" -> ", ": "):
        if sep in doc:
            case, expected = doc.split(sep, 1)
            return case.strip(), expected.strip()
    return "", doc


def outcome_of(row: dict) -> str:
    observed = row["props"].get("outcome")
    if observed:
        return observed
    if row["result"] == "passed":
        return "clean error, as expected" if "one line" in _expected(row) else "as expected"
    if row["result"] == "skipped":
        return "skipped (not run here)"
    return "crash" if row["crash"] else "wrong result"


def _expected(row: dict) -> str:
    if row["props"].get("expected"):
        return str(row["props"]["expected"])
    return _split(row["doc"])[1]


def render(rows: list[dict], seconds: float, command: str) -> str:
    outcomes = [outcome_of(r) for r in rows]
    ran = [r for r in rows if r["result"] != "skipped"]
    totals = {
        "cases": len(ran),
        "clean errors": sum("clean error" in o for r, o in zip(rows, outcomes) if r["result"] != "skipped"),
        "silent losses": sum("silent loss" in o for o in outcomes),
        "crashes": sum("crash" in o for o in outcomes),
        "failed tests": sum(r["result"] == "failed" for r in rows),
    }
    out = ["# Reliability: the fault-injection suite", "",
           f"Generated by `scripts/reliability_table.py` from `{command}` "
           f"({time.strftime('%Y-%m-%d')}); wall time {seconds:.1f} s.", "",
           "| " + " | ".join(totals) + " | wall time |", "|" + "---|" * (len(totals) + 1),
           "| " + " | ".join(str(v) for v in totals.values()) + f" | {seconds:.1f} s |", ""]
    formats = Counter(r["props"]["format"] for r in rows if r["props"].get("format"))
    if formats:  # the bad-input corpus records each file's format
        out += ["Bad-input files by format: " + ", ".join(f"{k} {n}" for k, n in sorted(formats.items())) + ".", ""]
    for file in dict.fromkeys(r["file"] for r in rows):
        out += [f"## {file}", "", "| case | expected | outcome | result |", "|---|---|---|---|"]
        for r, o in zip(rows, outcomes):
            if r["file"] == file:
                what = _split(r["doc"])[0] if not r["props"].get("expected") else ""
                cells = [r["case"] + (f" ({what})" if what else ""), _expected(r), o, r["result"]]
                out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", default=["tests/faults"])
    p.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    p.add_argument("-k", default=None, help="pytest -k expression (the table then covers only those cases)")
    args = p.parse_args(argv)
    collect = Collect()
    pytest_args = [*args.paths, "-m", "slow or not slow", "-p", "no:cacheprovider", "-q"]
    if args.k:
        pytest_args += ["-k", args.k]
    t0 = time.perf_counter()
    status = pytest.main(list(pytest_args), plugins=[collect])  # a copy: pytest inserts its addopts in place
    seconds = time.perf_counter() - t0
    rows = list(collect.rows.values())
    if not collect.finished or not rows:
        print(f"reliability_table: pytest did not run to the end (exit status {status}); nothing written",
              file=sys.stderr)
        return 2
    command = "pytest " + " ".join(shlex.quote(a) for a in pytest_args if a not in ("-p", "no:cacheprovider", "-q"))
    text = render(rows, seconds, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(rows)} cases, pytest exit status {status}, {seconds:.1f} s")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
