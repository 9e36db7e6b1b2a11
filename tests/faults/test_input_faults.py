"""The bad-input corpus: one table of cases, each a small file generated here (JSONL, JSON, CSV, Parquet), each
read twice:

* ``on_bad_row="error"``: the first bad row is one `DataError` line naming the file, the row (CSV: and the
  physical line) and the field, with the expected reason — or, for a problem with the source as a whole, one
  `SourceError` line;
* ``on_bad_row="skip"``: the expected records are kept and the rest are counted by reason; nothing is dropped
  silently: rows in = records + skipped, for the rows a person counts in the file.

Each test records ``expected`` and ``outcome`` (clean error / kept / skipped and counted / silent loss /
crash) for ``scripts/reliability_table.py``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from alignkit.data.io import BadRowError, SourceError, read_records
from alignkit.errors import DataError


def row(i: int, **kw: Any) -> dict[str, Any]:
    return {"prompt": f"Review {i}: the movie was", "chosen": " great.", "rejected": " awful.", **kw}


def lines(*items: Any) -> list[str | bytes]:
    """JSONL lines: dicts are dumped, str/bytes are written as they are."""
    return [json.dumps(x) if isinstance(x, dict) else x for x in items]


def goods(n: int, start: int = 0) -> list[str]:
    return [json.dumps(row(i)) for i in range(start, start + n)]


def listed(i: int, **kw: Any) -> dict[str, Any]:
    return {"prompt": f"Rate {i}", "completions": ["a good one", "a bad one"], "scores": [1.0, 0.0], **kw}


@dataclass
class Case:
    name: str
    fmt: str  # jsonl | json | csv | parquet
    content: Any  # jsonl: lines; json/csv: text or bytes; parquet: list of row dicts, or bytes
    rows: int  # rows in, as a person counts them in the file (blank lines included)
    error: tuple[int, str | None, str] | None = None  # (row, field, reason) of the first bad row
    skipped: dict[str, int] = field(default_factory=dict)  # with on_bad_row=skip: reason -> count
    source_error: str | None = None  # the source as a whole is refused (both modes): part of the message
    line: int | None = None  # CSV: the physical line the message names
    warnings: dict[str, int] = field(default_factory=dict)
    json_columns: tuple[str, ...] = ()  # parquet: columns stored as JSON text (alignkit.json_columns)

    @property
    def kept(self) -> int:
        return self.rows - sum(self.skipped.values())


NAN, INF = float("nan"), float("inf")
J = "jsonl"
CASES = [
    # ------------------------------------------------------------------ JSONL: unreadable lines
    Case("jsonl_truncated_json", J, goods(2) + ['{"prompt": "p", "chosen": "c"'] + goods(1, 3), 4,
         (3, None, "bad_json"), {"bad_json": 1}),
    Case("jsonl_array_line", J, goods(1) + ["[1, 2]"] + goods(2, 2), 4, (2, None, "not_object"), {"not_object": 1}),
    Case("jsonl_string_line", J, goods(1) + ['"just text"'] + goods(1, 2), 3, (2, None, "not_object"),
         {"not_object": 1}),
    Case("jsonl_blank_lines", J, goods(1) + ["", "   "] + goods(2, 3), 5, None, {"blank_line": 2}),
    Case("jsonl_latin1_byte", J, goods(2) + [b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}'], 3,
         (3, None, "bad_encoding"), {"bad_encoding": 1}),
    Case("jsonl_bom_first_line", J, [b"\xef\xbb\xbf" + goods(1)[0].encode()] + goods(2, 1), 3),
    Case("jsonl_crlf", J, [g + "\r" for g in goods(3)], 3),
    Case("jsonl_all_lines_bad", J, ["{", "{", "nope"], 3, (1, None, "bad_json"), {"bad_json": 3}),
    Case("jsonl_empty_file", J, [], 0, source_error="no valid records in 0 rows"),
    # ------------------------------------------------------------------ JSONL: fields
    Case("jsonl_missing_rejected", J, lines(row(0), {"prompt": "p", "chosen": "c"}, row(2)), 3,
         (2, "rejected", "missing_field"), {"missing_field": 1}),
    Case("jsonl_null_rejected", J, lines(row(0), row(1, rejected=None), row(2)), 3, (2, "rejected", "missing_field"),
         {"missing_field": 1}),
    Case("jsonl_empty_chosen", J, lines(row(0), row(1, chosen=""), row(2)), 3, (2, "chosen", "empty_field"),
         {"empty_field": 1}),
    Case("jsonl_blank_prompt", J, lines(row(0), row(1, prompt=" \n\t"), row(2)), 3, (2, "prompt", "empty_field"),
         {"empty_field": 1}),
    Case("jsonl_prompt_is_number", J, lines(row(0), row(1, prompt=7), row(2)), 3, (2, "prompt", "wrong_type"),
         {"wrong_type": 1}),
    Case("jsonl_weight_is_text", J, lines(row(0), row(1, weight="heavy")), 2, (2, "weight", "wrong_type"),
         {"wrong_type": 1}),
    Case("jsonl_weight_negative", J, lines(row(0), row(1, weight=-1)), 2, (2, "weight", "wrong_value"),
         {"wrong_value": 1}),
    Case("jsonl_id_is_list", J, lines(row(0), row(1, id=[1, 2])), 2, (2, "id", "wrong_type"), {"wrong_type": 1}),
    Case("jsonl_chat_message_without_role", J, lines(row(0), row(1, prompt=[{"content": "hi"}])), 2,
         (2, "prompt", "wrong_type"), {"wrong_type": 1}),
    Case("jsonl_same_conversation", J, lines(
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]},
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}), 2,
         (2, "chosen", "no_split"), {"no_split": 1}),
    Case("jsonl_unpaired_label_word", J, lines({"prompt": "p", "completion": "c", "label": True},
                                              {"prompt": "p", "completion": "c", "label": "maybe"}), 2,
         (2, "label", "wrong_value"), {"wrong_value": 1}),
    Case("jsonl_ranks_too_few", J, lines({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
                                        {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1]}), 2,
         (2, "ranks", "k_mismatch"), {"k_mismatch": 1}),
    Case("jsonl_rank_negative", J, lines({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
                                        {"prompt": "p", "completions": ["a", "b"], "ranks": [-1, 0]}), 2,
         (2, "ranks", "wrong_value"), {"wrong_value": 1}),
    Case("jsonl_two_label_kinds", J, lines({"prompt": "p", "responses": ["a"], "labels": [True]},
                                          {"prompt": "p", "responses": ["a"], "labels": [True], "ranks": [0]}), 2,
         (2, "labels", "label_kind"), {"label_kind": 1}),
    # ------------------------------------------------------------------ JSONL: numbers out of range, NaN
    Case("jsonl_score_1e999", J, lines(listed(0)) + ['{"prompt": "p", "completions": ["a", "b"], "scores": [1e999, 0]}'],
         2, (2, "scores[0]", "out_of_range"), {"out_of_range": 1}),
    Case("jsonl_score_minus_1e999", J, lines(listed(0)) + ['{"prompt": "p", "completions": ["a", "b"], '
                                                           '"scores": [0, -1e999]}'],
         2, (2, "scores[1]", "out_of_range"), {"out_of_range": 1}),
    Case("jsonl_score_NaN_literal", J, lines(listed(0)) + ['{"prompt": "p", "completions": ["a", "b"], '
                                                           '"scores": [0, NaN]}'],
         2, (2, "scores[1]", "nan_score"), {"nan_score": 1}),
    Case("jsonl_score_Infinity_literal", J, lines(listed(0), listed(1)) + [
        '{"prompt": "p", "completions": ["a", "b"], "scores": [Infinity, 0]}'], 3, (3, "scores[0]", "nan_score"),
         {"nan_score": 1}),
    Case("jsonl_score_400_digit_integer", J, lines(listed(0)) + [
        '{"prompt": "p", "completions": ["a", "b"], "scores": [1' + "0" * 400 + ', 0]}'], 2,
         (2, "scores[0]", "out_of_range"), {"out_of_range": 1}),
    Case("jsonl_weight_1e999", J, goods(1) + ['{"prompt": "p", "chosen": "c", "rejected": "r", "weight": 1e999}'], 2,
         (2, "weight", "out_of_range"), {"out_of_range": 1}),
    Case("jsonl_margin_NaN", J, goods(1) + ['{"prompt": "p", "chosen": "c", "rejected": "r", "margin": NaN}'], 2,
         (2, "margin", "nan_score"), {"nan_score": 1}),
    Case("jsonl_extra_column_1e999", J, goods(1) + ['{"prompt": "p", "chosen": "c", "rejected": "r", "x": 1e999}'],
         2, (2, "x", "out_of_range"), {"out_of_range": 1}),
    Case("jsonl_nested_meta_NaN", J, goods(1) + ['{"prompt": "p", "chosen": "c", "rejected": "r", '
                                                 '"meta": {"judge": {"score": NaN}}}'], 2,
         (2, "meta.judge.score", "nan_score"), {"nan_score": 1}),
    Case("jsonl_ultrafeedback_rating_NaN", J, lines(listed(0)) + [
        '{"prompt": "p", "completions": ["a", "b"], "scores": [1, 2], "ratings": [{"overall": NaN}]}'], 2,
         (2, "ratings[0].overall", "nan_score"), {"nan_score": 1}),
    # ------------------------------------------------------------------ JSONL: text that is not Unicode
    Case("jsonl_lone_high_surrogate_prompt", J, goods(1) + ['{"prompt": "hi \\ud800", "chosen": "c", "rejected": "r"}'],
         2, (2, "prompt", "bad_encoding"), {"bad_encoding": 1}),
    Case("jsonl_lone_low_surrogate_rejected", J, goods(2) + [
        '{"prompt": "p", "chosen": "c", "rejected": "\\udfff bye"}'], 3, (3, "rejected", "bad_encoding"),
         {"bad_encoding": 1}),
    Case("jsonl_surrogate_in_chat_message", J, goods(1) + [
        '{"prompt": [{"role": "user", "content": "\\udc80"}], "chosen": "c", "rejected": "r"}'], 2,
         (2, "prompt[0].content", "bad_encoding"), {"bad_encoding": 1}),
    Case("jsonl_surrogate_in_extra_column", J, goods(1) + [
        '{"prompt": "p", "chosen": "c", "rejected": "r", "note": "\\ud83d"}'], 2, (2, "note", "bad_encoding"),
         {"bad_encoding": 1}),
    Case("jsonl_surrogate_pair_is_fine", J, goods(1) + [
        '{"prompt": "p \\ud83d\\ude00", "chosen": "c", "rejected": "r"}'], 2),
    # ------------------------------------------------------------------ JSONL: kept, with a warning
    Case("jsonl_duplicate_ids", J, lines(row(0, id="a"), row(1, id="a"), row(2, id="b"), row(3, id="a")), 4,
         warnings={"duplicate_id": 2}),
    Case("jsonl_identical_chosen_rejected", J, lines(row(0), row(1, rejected=" great."), row(2)), 3,
         warnings={"identical_responses": 1}),
    # ------------------------------------------------------------------ JSON arrays
    Case("json_array_item_not_object", "json", json.dumps([row(0), 5, row(2)]), 3, (2, None, "not_object"),
         {"not_object": 1}),
    Case("json_array_truncated", "json", json.dumps([row(0), row(1)])[:-5], 2,
         source_error="not a valid JSON array"),
    Case("json_array_lone_surrogate", "json", "[" + json.dumps(row(0)) + ', {"prompt": "\\udfff", "chosen": "c", '
         '"rejected": "r"}]', 2, (2, "prompt", "bad_encoding"), {"bad_encoding": 1}),
    Case("json_array_1e999", "json", "[" + json.dumps(row(0)) + ', {"prompt": "p", "chosen": "c", "rejected": "r", '
         '"weight": 1e999}]', 2, (2, "weight", "out_of_range"), {"out_of_range": 1}),
]

H = "prompt,chosen,rejected\n"
C = "csv"


def csv_rows(n: int, start: int = 0) -> str:
    return "".join(f"q{i},c{i},r{i}\n" for i in range(start, start + n))


CASES += [
    Case("csv_unclosed_quote_swallows_next_row", C, H + csv_rows(4) + '"q4 oops,c4,r4\n' + csv_rows(1, 5)
         + '"q6",c6,r6\n' + csv_rows(4, 7), 11, (5, None, "unclosed_quote"), {"unclosed_quote": 1}, line=6),
    Case("csv_unclosed_quote_at_end", C, H + csv_rows(3) + 'q3,"c3 never closed,r3\n' + csv_rows(2, 4), 6,
         (4, None, "unclosed_quote"), {"unclosed_quote": 1}, line=5),
    Case("csv_stray_quote_in_quoted_cell", C, H + csv_rows(1) + 'q1,"say "hi" twice",r1\n' + csv_rows(1, 2), 3,
         (2, None, "bad_quote"), {"bad_quote": 1}, line=3),
    Case("csv_multiline_cell_is_fine", C, H + 'q0,"line one\nline two",r0\n' + csv_rows(2, 1), 3),
    Case("csv_doubled_quotes_are_fine", C, H + 'q0,"say ""hi""",r0\n' + csv_rows(1, 1), 2),
    Case("csv_extra_cell", C, H + csv_rows(1) + "q1,c1,r1,surprise\n" + csv_rows(1, 2), 3, (2, None, "extra_cells"),
         {"extra_cells": 1}, line=3),
    Case("csv_missing_cell", C, H + csv_rows(2) + "q2,c2\n", 3, (3, None, "missing_cells"), {"missing_cells": 1},
         line=4),
    Case("csv_blank_line", C, H + csv_rows(1) + "\n" + csv_rows(1, 2), 3, None, {"blank_line": 1}),
    Case("csv_latin1_byte", C, (H + csv_rows(1)).encode() + b"caf\xe9,c1,r1\n", 2, (2, "prompt", "bad_encoding"),
         {"bad_encoding": 1}, line=3),
    Case("csv_bom_header", C, b"\xef\xbb\xbf" + (H + csv_rows(2)).encode(), 2),
    Case("csv_crlf", C, (H + csv_rows(3)).replace("\n", "\r\n"), 3),
    Case("csv_empty_prompt", C, H + csv_rows(1) + ",c1,r1\n", 2, (2, "prompt", "empty_field"), {"empty_field": 1},
         line=3),
    Case("csv_weight_is_text", C, "prompt,chosen,rejected,weight\nq0,c0,r0,1\nq1,c1,r1,heavy\n", 2,
         (2, "weight", "wrong_type"), {"wrong_type": 1}, line=3),
    Case("csv_weight_inf", C, "prompt,chosen,rejected,weight\nq0,c0,r0,1\nq1,c1,r1,inf\n", 2,
         (2, "weight", "nan_score"), {"nan_score": 1}, line=3),
    Case("csv_weight_1e999", C, "prompt,chosen,rejected,weight\nq0,c0,r0,1\nq1,c1,r1,1e999\n", 2,
         (2, "weight", "nan_score"), {"nan_score": 1}, line=3),
    Case("csv_margin_nan", C, "prompt,chosen,rejected,margin\nq0,c0,r0,0.5\nq1,c1,r1,nan\n", 2,
         (2, "margin", "nan_score"), {"nan_score": 1}, line=3),
    Case("csv_unpaired_label_word", C, "prompt,completion,label\nq0,c0,true\nq1,c1,maybe\n", 2,
         (2, "label", "wrong_value"), {"wrong_value": 1}, line=3),
    Case("csv_scores_cell_NaN", C, 'prompt,completions,scores\nq0,"[""a"", ""b""]","[1, 0]"\n'
         'q1,"[""a"", ""b""]","[NaN, 0]"\n', 2, (2, "scores[0]", "nan_score"), {"nan_score": 1}, line=3),
    Case("csv_surrogate_in_json_cell", C, 'prompt,completions,scores\nq0,"[""a"", ""b""]","[1, 0]"\n'
         'q1,"[""\\ud800"", ""b""]","[1, 0]"\n', 2, (2, "completions[0]", "bad_encoding"), {"bad_encoding": 1},
         line=3),
    Case("csv_header_only", C, H, 0, source_error="no valid records in 0 rows"),
    Case("csv_empty_file", C, "", 0, source_error="empty CSV file (no header)"),
    Case("csv_duplicate_header", C, "prompt,chosen,chosen\nq,c,r\n", 1, source_error="duplicate column names"),
    Case("csv_unclosed_quote_in_header", C, 'prompt,"chosen,rejected\nq0,c0,r0\n', 1,
         source_error="line 1 (the header): unclosed quote"),
    Case("csv_duplicate_ids", C, "prompt,chosen,rejected,id\nq0,c0,r0,7\nq1,c1,r1,7\n", 2,
         warnings={"duplicate_id": 1}),
]

P = "parquet"
CASES += [
    Case("parquet_score_nan", P, [listed(0), listed(1, scores=[NAN, 0.0])], 2, (2, "scores[0]", "nan_score"),
         {"nan_score": 1}),
    Case("parquet_weight_inf", P, [row(0, weight=1.0), row(1, weight=INF)], 2, (2, "weight", "nan_score"),
         {"nan_score": 1}),
    Case("parquet_extra_float_nan", P, [row(0, judge_score=0.5), row(1, judge_score=NAN)], 2,
         (2, "judge_score", "nan_score"), {"nan_score": 1}),
    Case("parquet_null_rejected", P, [row(0), row(1, rejected=None), row(2)], 3, (2, "rejected", "missing_field"),
         {"missing_field": 1}),
    Case("parquet_empty_chosen", P, [row(0), row(1, chosen="")], 2, (2, "chosen", "empty_field"),
         {"empty_field": 1}),
    Case("parquet_ranks_mismatch", P, [{"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
                                       {"prompt": "p", "completions": ["a", "b"], "ranks": [0]}], 2,
         (2, "ranks", "k_mismatch"), {"k_mismatch": 1}),
    Case("parquet_label_two", P, [{"prompt": "p", "completion": "c", "label": 1},
                                  {"prompt": "p", "completion": "c", "label": 2}], 2, (2, "label", "wrong_type"),
         {"wrong_type": 1}),
    Case("parquet_json_column_bad_json", P, [row(0, meta='{"a": 1}'), row(1, meta='{"a": ')], 2,
         (2, None, "bad_json"), {"bad_json": 1}, json_columns=("meta",)),
    Case("parquet_json_column_1e999", P, [row(0, meta='{"a": 1}'), row(1, meta='{"a": 1e999}')], 2,
         (2, "meta.a", "out_of_range"), {"out_of_range": 1}, json_columns=("meta",)),
    Case("parquet_integer_ids_are_fine", P, [row(0, id=1), row(1, id=2)], 2),
    Case("parquet_duplicate_ids", P, [row(0, id="x"), row(1, id="x")], 2, warnings={"duplicate_id": 1}),
    Case("parquet_identical_responses", P, [row(0, rejected=" great."), row(1)], 2,
         warnings={"identical_responses": 1}),
    Case("parquet_truncated_file", P, b"truncated", 0, source_error="cannot read as Parquet"),
    Case("parquet_no_rows", P, [], 0, source_error="no valid records in 0 rows"),
]


def write_case(case: Case, folder) -> Any:
    path = folder / f"{case.name}.{case.fmt}"
    if case.fmt == "jsonl":
        path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in case.content))
    elif case.fmt in ("json", "csv"):
        data = case.content
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    elif isinstance(case.content, bytes):  # a broken parquet file
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([row(0), row(1)]), path)
        path.write_bytes(path.read_bytes()[: len(case.content) * 20])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(case.content) if case.content else pa.table({"prompt": pa.array([], pa.string()),
                                                                                   "chosen": pa.array([], pa.string()),
                                                                                   "rejected": pa.array([], pa.string())})
        if case.json_columns:
            table = table.replace_schema_metadata({b"alignkit.json_columns": json.dumps(case.json_columns).encode()})
        pq.write_table(table, path)
    return path


def _expected(case: Case) -> str:
    if case.source_error:
        return f"source refused: {case.source_error}"
    first = "no error" if case.error is None else f"error at row {case.error[0]}" + (
        f", field '{case.error[1]}'" if case.error[1] else "") + f" ({case.error[2]})"
    counts = ", ".join(f"{n} {k}" for k, n in case.skipped.items())
    warn = f"; warning {', '.join(f'{n} {k}' for k, n in case.warnings.items())}" if case.warnings else ""
    return f"{first}; skip: {case.kept} kept" + (f", {counts}" if counts else "") + warn


def _check_error(case: Case, path, err: DataError) -> None:
    message = str(err)
    assert "\n" not in message, "one line"
    if case.source_error:
        assert isinstance(err, SourceError) and case.source_error in message and path.name in message
        return
    n, name, reason = case.error
    assert isinstance(err, BadRowError)
    assert (err.path, err.row, err.field, err.reason) == (str(path), n, name, reason)
    unit = {"jsonl": "line", "json": "item", "csv": "row", "parquet": "row"}[case.fmt]
    where = f"{path.name} {unit} {n}" + (f" (line {case.line})" if case.line else "")
    assert message.startswith(where + (f", field '{name}': " if name else ": ")), message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, tmp_path, record_property):
    """bad input file: one clean error naming file/row/field (on_bad_row=error); records + skipped = rows in (skip)"""
    path = write_case(case, tmp_path)
    record_property("expected", _expected(case))
    record_property("format", case.fmt)
    outcome = []
    try:
        try:  # ---- on_bad_row=error
            result = read_records(path)
        except DataError as e:
            _check_error(case, path, e)
            outcome.append("clean error")
        else:
            assert case.error is None and case.source_error is None, "a bad row read without an error"
            outcome.append("kept")
        try:  # ---- on_bad_row=skip
            result = read_records(path, on_bad_row="skip")
        except SourceError as e:
            assert case.source_error or case.kept == 0, str(e)
            assert "\n" not in str(e) and (case.source_error or f"no valid records in {case.rows} rows") in str(e)
            outcome.append("source refused" if case.source_error else "all rows skipped, refused")
        else:
            records, skipped = len(result.records), sum(result.skipped.values())
            if records + skipped != case.rows or records != case.kept:
                outcome.append(f"silent loss ({case.rows} rows in, {records} records, {skipped} skipped)")
            elif skipped:
                outcome.append("skipped and counted")
            assert result.n_rows == records + skipped
            assert (records, dict(result.skipped)) == (case.kept, case.skipped)
            assert dict(result.warnings) == case.warnings
            written = {k: n for k, n in case.skipped.items() if k != "blank_line"}  # blank lines are only counted
            if written:
                rejects = [json.loads(x) for x in result.rejects_path.read_text().splitlines()]
                assert Counter(r["reason"] for r in rejects) == Counter(written)
    except AssertionError:
        if not any(o.startswith("silent loss") for o in outcome):
            outcome.append("wrong result")
        raise
    except Exception as e:
        outcome.append(f"crash ({type(e).__name__})")
        raise
    finally:
        record_property("outcome", "; ".join(outcome))


def test_corpus_covers_every_format():
    """corpus size: at least 60 files over JSONL, CSV and Parquet"""
    counts = Counter(c.fmt for c in CASES)
    assert len(CASES) >= 60 and min(counts["jsonl"], counts["csv"], counts["parquet"]) >= 10, counts
    assert len({c.name for c in CASES}) == len(CASES)
    assert math.isnan(NAN)
