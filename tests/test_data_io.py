"""Readers/writers: round trips, layout detection from files, bad input, skip mode, Hub offline."""

import json
import logging
import socket

import pytest

from alignkit.data import (
    BadRowError,
    PreferenceRecord,
    SourceError,
    iter_rows,
    pair,
    read_records,
    write_records,
)
from alignkit.errors import DataError


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def mixed_records():
    return [
        pair("What is 2+2?", "4", "5"),
        pair([u("hi")], [a("hello!")], [a("go away")], system="be nice", id="r2", weight=0.5, group="g1"),
        PreferenceRecord(prompt="rate", responses=["a", "b", "c"], scores=[[1.0, 0.5], [0.0, 2.0], [3.0, 1.0]]),
        PreferenceRecord(prompt="tell a joke", responses=["knock knock"], labels=[True], meta={"src": "x", "n": 3}),
        PreferenceRecord(prompt="rank", responses=["x", "y", "z"], ranks=[2, 0, 1], meta={"tags": ["a", "b"]}),
    ]


def write_lines(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})


# ----------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_round_trip(tmp_path, suffix):
    records = mixed_records()
    path = write_records(records, tmp_path / f"prefs{suffix}")
    result = read_records(path)
    assert result.layout == "native"
    assert [r.to_dict() for r in result.records] == [r.to_dict() for r in records]
    assert result.n_rows == 5 and not result.skipped and result.rejects_path is None
    assert result.summary() == f"read 5 records from prefs{suffix} (layout 'native')"


def test_parquet_keeps_native_types_when_uniform(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [pair("p1", "c1", "r1", id="a"), pair("p2", "c2", "r2", weight=2.0)]
    path = write_records(records, tmp_path / "uniform.parquet")
    schema = pq.read_schema(path)
    assert str(schema.field("prompt").type) == "string"
    responses = schema.field("responses").type
    assert pa.types.is_list(responses) and pa.types.is_string(responses.value_type)
    assert json.loads(schema.metadata[b"alignkit.json_columns"]) == []
    assert [r.to_dict() for r in read_records(path).records] == [r.to_dict() for r in records]


def test_round_trip_save_to_disk(tmp_path):
    import datasets

    records = [pair([u("q1")], [a("good")], [a("bad")], id="1"), pair([u("q2")], [a("fine")], [a("meh")])]
    rows = [r.to_dict() for r in records]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    result = read_records(tmp_path / "ds")
    assert [r.to_dict() for r in result.records] == rows and result.layout == "native"

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    test = read_records(tmp_path / "dd", split="test")
    assert [r.to_dict() for r in test.records] == rows[:1]
    assert test.summary() == "read 1 records from dd[test] (layout 'native')"
    with pytest.raises(SourceError, match="no split 'validation'; available splits: train, test"):
        read_records(tmp_path / "dd", split="validation")


def test_save_to_disk_trl_style_paired(tmp_path):
    import datasets

    rows = [{"prompt": [u("q")], "chosen": [a("yes")], "rejected": [a("no")], "score_chosen": 8.0}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "trl"))
    result = read_records(tmp_path / "trl")
    assert result.layout == "paired"
    assert result.records[0].to_dict() == {"prompt": [u("q")], "responses": [[a("yes")], [a("no")]],
                                           "ranks": [0.0, 1.0], "meta": {"score_chosen": 8.0}}  # fmt: skip


# ------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize(
    "row, layout",
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "paired"),
        ({"prompt": "p", "completion": "c", "label": "desirable"}, "unpaired"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 0]}, "ranked"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [0.1, 0.9]}, "scored"),
        ({"chosen": [u("q"), a("x")], "rejected": [u("q"), a("y")]}, "conversation"),
        ({"prompt": "p", "responses": ["a"], "labels": [False]}, "native"),
    ],
)
def test_detects_layout_from_file(tmp_path, row, layout):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(row)] * 2)
    result = read_records(path)
    assert result.layout == layout and len(result) == 2
    assert result.layout_reason.startswith(f"detected layout '{layout}' from columns ")


def test_conversation_file_split(tmp_path):
    row = {"chosen": [u("hi"), a("hello"), u("joke?"), a("a pun")], "rejected": [u("hi"), a("hello"), u("joke?"), a("no")]}
    rec = read_records(write_lines(tmp_path / "hh.jsonl", [json.dumps(row)])).records[0]
    assert rec.prompt == [u("hi"), a("hello"), u("joke?")] and rec.responses == [[a("a pun")], [a("no")]]


def test_messages_only_file_is_rejected(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps({"messages": [u("q"), a("x")]})])
    with pytest.raises(SourceError, match=r"sft.jsonl: .*not preference data"):
        read_records(path)


def test_column_mapping_and_layout_override_on_csv(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text('question,good,bad,kind\nq1,"yes, really",no,x\n"[{""role"": ""user"", ""content"": ""hi""}]",a,b,y\n')
    result = read_records(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert result.layout == "paired" and "after columns=prompt<-question" in result.layout_reason
    assert result.records[0].to_dict() == {"prompt": "q1", "responses": ["yes, really", "no"],
                                           "ranks": [0.0, 1.0], "meta": {"kind": "x"}}  # fmt: skip
    assert result.records[1].prompt == [u("hi")]
    forced = read_records(path, layout="paired", columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert forced.layout_reason == "layout 'paired' given explicitly"
    with pytest.raises(SourceError, match="chosen->'best'"):
        read_records(path, columns={"prompt": "question", "chosen": "best", "rejected": "bad"})


# ------------------------------------------------------------------------------------ bad input
BAD_ROWS = [
    ('{"prompt": "p", "chosen": "c", "rejected": "r"', None, "bad_json", "invalid JSON"),
    ('{"prompt": "p", "chosen": "c"}', "rejected", "missing_field", "missing"),
    ('{"prompt": "p", "chosen": "", "rejected": "r"}', "chosen", "empty_field", "an empty string"),
    ('{"prompt": 7, "chosen": "c", "rejected": "r"}', "prompt", "wrong_type", "must be a string or a list"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r", "weight": "heavy"}', "weight", "wrong_type", "number"),
]


@pytest.mark.parametrize("line, field, reason, detail", BAD_ROWS)
def test_bad_row_error_names_file_line_and_field(tmp_path, line, field, reason, detail):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, "", GOOD, line, GOOD])  # blank line 2 still counts
    with pytest.raises(BadRowError) as e:
        read_records(path)
    err = e.value
    assert (err.path, err.row, err.field, err.reason) == (str(path), 4, field, reason)
    where = f"data.jsonl line 4, field '{field}': " if field else "data.jsonl line 4: "
    assert str(err).startswith(where) and detail in str(err)


@pytest.mark.parametrize(
    "good, bad, field, reason, message",
    [
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
         {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1]}, "ranks", "k_mismatch",
         "data.jsonl line 2, field 'ranks': has 2 entries but there are 3 responses"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [0, 1]},
         {"prompt": "p", "completions": ["a", "b"], "scores": [0, float("nan")]}, "scores[1]", "nan_score",
         "data.jsonl line 2, field 'scores[1]': nan (not finite)"),
        ({"prompt": "p", "responses": ["a"], "labels": [True]},
         {"prompt": "p", "responses": ["a"], "labels": [True], "ranks": [0]}, "labels", "label_kind",
         "data.jsonl line 2, field 'labels': a record needs exactly one of ranks/scores/labels, got ['ranks', 'labels']"),
    ],
)  # fmt: skip
def test_bad_values(tmp_path, good, bad, field, reason, message):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(good), json.dumps(bad)])  # json writes NaN
    with pytest.raises(BadRowError) as e:
        read_records(path)
    assert (e.value.row, e.value.field, e.value.reason, str(e.value)) == (2, field, reason, message)


def test_non_utf8_line_reported_with_its_line_number(tmp_path):
    path = write_lines(tmp_path / "latin.jsonl", [GOOD, GOOD, b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}'])
    with pytest.raises(BadRowError) as e:
        read_records(path)
    assert (e.value.row, e.value.reason) == (3, "bad_encoding")
    assert str(e.value) == "latin.jsonl line 3: not valid UTF-8 (byte 0xe9 at column 16)"


def test_csv_rows_count_data_rows_and_give_the_physical_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b'prompt,chosen,rejected\n"multi\nline",c,r\np,,r\np,c,\xff\n')
    with pytest.raises(BadRowError) as e:
        read_records(path)
    assert (e.value.row, e.value.field) == (2, "chosen")
    assert str(e.value) == "data.csv row 2 (line 4), field 'chosen': an empty string"
    result = read_records(path, on_bad_row="skip")
    assert result.skipped == {"empty_field": 1, "bad_encoding": 1}
    rejects = [json.loads(x) for x in (tmp_path / "data.rejects.jsonl").read_text().splitlines()]
    assert rejects[1]["message"] == "data.csv row 3 (line 5), field 'rejected': not valid UTF-8"
    assert rejects[1]["raw"] == {"prompt": "p", "chosen": "c", "rejected": "\\xff"}


def test_parquet_bad_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "c", "rejected": "r"},
                                         {"prompt": "p", "chosen": "c", "rejected": None}]), tmp_path / "d.parquet")  # fmt: skip
    with pytest.raises(BadRowError, match=r"^d.parquet row 2, field 'rejected': is null$"):
        read_records(tmp_path / "d.parquet")


# ------------------------------------------------------------------------------------ skip mode
def test_skip_mode_writes_rejects_and_counts(tmp_path, caplog):
    lines = [GOOD, '{"prompt": "p", "chosen": "", "rejected": "r"}', "", GOOD, "{oops", b"\xff\xfe", GOOD]
    path = write_lines(tmp_path / "data.jsonl", lines)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        result = read_records(path, on_bad_row="skip")
    assert len(result.records) == 3 and result.n_rows == 7
    assert result.skipped == {"empty_field": 1, "blank_line": 1, "bad_json": 1, "bad_encoding": 1}
    assert result.rejects_path == tmp_path / "data.rejects.jsonl"
    assert result.summary() == (
        f"read 3 records from data.jsonl (layout 'paired'); skipped 4 rows: 1 empty_field, 1 blank_line, "
        f"1 bad_json, 1 bad_encoding -> {tmp_path / 'data.rejects.jsonl'}"
    )
    assert result.summary() in caplog.text
    rejects = [json.loads(x) for x in result.rejects_path.read_text().splitlines()]
    assert [(r["row"], r["field"], r["reason"]) for r in rejects] == [
        (2, "chosen", "empty_field"), (5, None, "bad_json"), (6, None, "bad_encoding")]  # fmt: skip
    assert rejects[0] == {"path": str(path), "row": 2, "field": "chosen", "reason": "empty_field",
                          "message": "data.jsonl line 2, field 'chosen': an empty string",
                          "raw": '{"prompt": "p", "chosen": "", "rejected": "r"}'}  # fmt: skip
    assert rejects[1]["raw"] == "{oops" and rejects[2]["raw"] == "\\xff\\xfe"


def test_skip_mode_explicit_rejects_path_and_blank_lines_only(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD, "", "  ", GOOD])
    result = read_records(path, on_bad_row="skip", rejects_path=tmp_path / "out" / "r.jsonl")
    assert result.skipped == {"blank_line": 2} and result.rejects_path is None  # nothing to write
    assert result.summary() == "read 2 records from d.jsonl (layout 'paired'); skipped 2 rows: 2 blank_line"
    path = write_lines(tmp_path / "e.jsonl", [GOOD, "[1]"])
    (tmp_path / "out").mkdir()
    result = read_records(path, on_bad_row="skip", rejects_path=tmp_path / "out" / "r.jsonl")
    assert result.rejects_path == tmp_path / "out" / "r.jsonl" and result.skipped == {"not_object": 1}
    assert json.loads(result.rejects_path.read_text())["message"] == "e.jsonl line 2: expected a JSON object, got list"


def test_no_valid_records_is_an_error(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "p", "chosen": "", "rejected": "r"}'])
    with pytest.raises(SourceError, match=r"bad.jsonl: no valid records in 1 rows .*1 empty_field"):
        read_records(path, on_bad_row="skip")
    assert (tmp_path / "bad.rejects.jsonl").exists()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SourceError, match="no valid records in 0 rows"):
        read_records(tmp_path / "empty.jsonl")


def test_invalid_arguments(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ValueError, match="on_bad_row must be one of 'error', 'skip'; got 'ignore'"):
        read_records(path, on_bad_row="ignore")
    with pytest.raises(ValueError, match="unknown layout 'pairs'"):
        read_records(path, layout="pairs")
    with pytest.raises(ValueError, match="is the input file itself"):
        read_records(path, on_bad_row="skip", rejects_path=path)
    (tmp_path / "d.txt").write_text(GOOD)
    with pytest.raises(SourceError, match="unsupported file type '.txt'"):
        read_records(tmp_path / "d.txt")
    with pytest.raises(SourceError, match="no such file or folder: .*missing.jsonl"):  # a DataError: one CLI line
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(SourceError, match="not a datasets save_to_disk folder"):
        read_records(tmp_path)


# ------------------------------------------------------------------------------ rows and sources
def test_iter_rows_is_lazy(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD, "", GOOD, "{broken"])
    rows = iter_rows(path)
    assert next(rows) == (1, json.loads(GOOD))
    assert next(rows) == (3, json.loads(GOOD))  # blank line 2 passed over
    with pytest.raises(BadRowError, match=r"^d.jsonl line 4: invalid JSON"):
        next(rows)


def test_json_array_file(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([json.loads(GOOD), {"prompt": "p", "chosen": "c", "rejected": ""}], indent=2))
    with pytest.raises(BadRowError, match=r"^arr.json item 2, field 'rejected'"):
        read_records(path)


def test_hub_name_not_cached_gives_clear_offline_error(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # read_records must force it on itself

    def no_network(*args, **kwargs):
        raise AssertionError("read_records tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DataError) as e:  # HF_DATASETS_OFFLINE=1 (conftest): the cache only (tests/test_hub.py: online)
        read_records("alignkit-tests/not-a-cached-dataset")
    msg = str(e.value)
    assert msg.startswith("dataset 'alignkit-tests/not-a-cached-dataset': no local file or folder ")
    assert msg.endswith(f", not in the datasets cache ({tmp_path / 'hf-cache'}), and the Hub was not asked "
                        "(HF_DATASETS_OFFLINE=1); run once with a network to download it into the cache, or save it "
                        "to a .jsonl/.parquet file (or save_to_disk) and pass the path")
    assert datasets.config.HF_HUB_OFFLINE is False  # restored


def test_hub_name_cached_loads_offline(tmp_path, monkeypatch):
    """Fake a Hub cache entry the way datasets lays it out (<owner>___<name>/<config>/<version>/<hash>)."""
    import shutil

    import datasets
    import datasets.config

    src = write_lines(tmp_path / "src.jsonl", [GOOD])
    datasets.load_dataset("json", data_files={"train": str(src)}, cache_dir=str(tmp_path / "build"))
    built = next((tmp_path / "build").glob("json/*/*/*/json-train.arrow")).parent
    entry = tmp_path / "cache" / "alignkit-tests___tiny-prefs" / "default" / "0.0.0" / "abc"
    shutil.copytree(built, entry)
    (entry / "json-train.arrow").rename(entry / "tiny-prefs-train.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    result = read_records("alignkit-tests/tiny-prefs")
    assert result.summary() == "read 1 records from alignkit-tests/tiny-prefs[train] (layout 'paired')"
    assert result.records[0].to_dict() == {"prompt": "p", "responses": ["c", "r"], "ranks": [0.0, 1.0]}
    with pytest.raises(DataError, match=r"""^dataset 'alignkit-tests/tiny-prefs': Unknown split "test". Should be one """
                                        r"""of \['train'\]; choose the split \(data_split=\.\.\., now 'test'\) or subset"""):
        read_records("alignkit-tests/tiny-prefs", split="test")
