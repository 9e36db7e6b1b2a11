"""Strict CSV rows with their physical lines, for `alignkit.data.io`.

Python's ``csv`` module, left lenient, lets an unclosed quote swallow the rows after it into one cell (11
rows in, 10 records out, nothing reported). Here the parser runs with ``strict=True``; a row it cannot
read is returned as a problem naming its first physical line, and parsing starts again on the line after
that one, so one bad quote costs one row, which the reader counts (or raises, with ``on_bad_row=error``).

A quoted cell may still span lines (multi-line responses are common); a quote is "unclosed" when the
quoted cell it opens reaches the end of the file, or closes and is followed by more text on a later line.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class CsvRow:
    line: int  # first physical line of the row (1-based, the header included)
    cells: list[str] | None  # None when the row could not be read
    reason: str = ""  # why not: unclosed_quote | bad_quote | bad_csv
    problem: str = ""
    text: str = ""  # the row's first physical line, when it could not be read


class _Lines:
    """Physical lines, counted; the lines of a row that failed after its first one go back in the queue."""

    def __init__(self, lines: Iterable[str]):
        self._lines, self._back = iter(lines), deque()
        self.taken: list[str] = []
        self.count = 0  # lines handed out so far

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._back.popleft() if self._back else next(self._lines)
        self.taken.append(line)
        self.count += 1
        return line

    def retry_after_first(self) -> None:
        rest = self.taken[1:]
        self._back.extendleft(reversed(rest))
        self.count -= len(rest)


def _problem(e: csv.Error, start: int, end: int) -> tuple[str, str]:
    message = str(e)
    if "unexpected end of data" in message:
        return "unclosed_quote", f"unclosed quote: a quoted cell opened on line {start} never closes (the file ends inside it)"
    if "expected after" in message and end > start:
        return "unclosed_quote", (f"unclosed quote: a quoted cell opened on line {start} runs on to line {end}, where "
                                  f"it closes and more text follows (csv: {message})")
    if "expected after" in message:
        return "bad_quote", f"a quote inside a quoted cell must be doubled (\"\") (csv: {message})"
    return "bad_csv", f"not valid CSV: {message}"


def strict_rows(lines: Iterable[str]) -> Iterator[CsvRow]:
    """Every row of a CSV text (header first) with its first physical line; rows that do not parse under
    ``csv.reader(strict=True)`` come back with ``cells=None`` and a reason, and parsing resumes on the next line."""
    csv.field_size_limit(2**31 - 1)  # long responses exceed the 128 KiB default
    src = _Lines(lines)
    reader = csv.reader(src, strict=True)  # the C reader resets its state at every row
    while True:
        start = src.count + 1
        src.taken = []
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            reason, problem = _problem(e, start, src.count)
            first = src.taken[0] if src.taken else ""
            src.retry_after_first()
            yield CsvRow(start, None, reason, problem, first.rstrip("\r\n"))
            continue
        yield CsvRow(start, cells)
