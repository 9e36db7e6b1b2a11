"""`alignkit data` convert / inspect / pairs / split on small hand-made files with known outputs."""

import json

import pytest

from alignkit import cli
from alignkit.data import BadRowError, PreferenceRecord, SourceError, pair, read_records
from alignkit.data.dataset import prompt_key
from alignkit.data.tools import convert, detect_format, format_table, inspect_data, read_converted, split


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


HH = {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: Sure?\n\nAssistant: Yes, 4.",
      "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: Sure?\n\nAssistant: No, 5."}  # fmt: skip


# ---------------------------------------------------------------------------------------- convert
def test_hh_pair_converts_to_exact_prompt_chosen_rejected(tmp_path):
    src = write_jsonl(tmp_path / "hh.jsonl", [HH])
    result = convert(src, tmp_path / "out.jsonl")
    assert result.format == "hh"
    # the shared turns become the chat prompt; each response is the final assistant turn
    assert read_jsonl(tmp_path / "out.jsonl") == [{
        "prompt": [u("What is 2+2?"), a("4"), u("Sure?")],
        "responses": [[a("Yes, 4.")], [a("No, 5.")]],
        "ranks": [0.0, 1.0],
    }]  # fmt: skip


def test_hh_prompt_column_form_gives_the_same_record(tmp_path):
    row = {"prompt": "\n\nHuman: Hi there\n\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}
    rec = read_converted(write_jsonl(tmp_path / "hh.jsonl", [row])).records[0]
    assert rec.to_dict() == {"prompt": [u("Hi there")], "responses": [[a("Hello!")], [a("Go away.")]],
                             "ranks": [0.0, 1.0]}  # fmt: skip


def test_ultrafeedback_scalar_and_aspect_scores(tmp_path):
    rows = [
        {"instruction": "Say hi", "source": "s1", "completions": [
            {"response": "hi", "overall_score": 7.5, "model": "m1"}, {"response": "bye", "overall_score": 3, "model": "m2"}]},
        {"instruction": "Say yo", "completions": [
            {"text": "yo", "ratings": {"honesty": 5, "helpfulness": 4}},
            {"text": "no", "ratings": {"honesty": 2, "helpfulness": 1}}]},
        {"prompt": "Count", "completions": [
            {"response": "1 2", "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "3"}}},
            {"response": "2 1", "annotations": {"helpfulness": {"Rating": "2"}, "honesty": {"Rating": "4"}}}]},
    ]  # fmt: skip
    got = [r.to_dict() for r in read_converted(write_jsonl(tmp_path / "uf.jsonl", rows)).records]
    assert got[0] == {"prompt": "Say hi", "responses": ["hi", "bye"], "scores": [7.5, 3.0],
                      "meta": {"models": ["m1", "m2"], "source": "s1"}}  # fmt: skip
    # aspects sorted by name: helpfulness, honesty
    assert got[1] == {"prompt": "Say yo", "responses": ["yo", "no"], "scores": [[4.0, 5.0], [1.0, 2.0]],
                      "meta": {"score_names": ["helpfulness", "honesty"]}}  # fmt: skip
    assert got[2]["scores"] == [[5.0, 3.0], [2.0, 4.0]]


def test_ultrafeedback_bad_rating_names_file_row_and_field(tmp_path):
    rows = [{"instruction": "q", "completions": [{"response": "a", "overall_score": 1},
                                                 {"response": "b", "overall_score": "N/A"}]}]  # fmt: skip
    src = write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(BadRowError) as e:
        read_converted(src)
    assert (e.value.row, e.value.field) == (1, "completions[1].overall_score")
    assert str(e.value) == "uf.jsonl line 1, field 'completions[1].overall_score': must be a number, got 'N/A'"


def test_trl_columns_text_messages_and_unpaired(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"},
            {"prompt": [u("Hi")], "chosen": [a("Hello")], "rejected": [a("Go")]}]  # fmt: skip
    got = [r.to_dict() for r in read_converted(write_jsonl(tmp_path / "trl.jsonl", rows), "trl").records]
    assert got == [{"prompt": "Hi", "responses": ["Hello", "Go"], "ranks": [0.0, 1.0]},
                   {"prompt": [u("Hi")], "responses": [[a("Hello")], [a("Go")]], "ranks": [0.0, 1.0]}]  # fmt: skip
    rows = [{"prompt": "Hi", "completion": "Hello", "label": True}, {"prompt": "Hi", "completion": "Go", "label": 0}]
    got = [r.to_dict() for r in read_converted(write_jsonl(tmp_path / "kto.jsonl", rows)).records]
    assert got == [{"prompt": "Hi", "responses": ["Hello"], "labels": [True]},
                   {"prompt": "Hi", "responses": ["Go"], "labels": [False]}]  # fmt: skip


def test_openai_messages_and_preference_format(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, u("Hi"),
                          {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]},
            {"input": {"messages": [u("Hi")], "tools": []}, "preferred_output": [a("Hello")],
             "non_preferred_output": [a("Go")]}]  # fmt: skip
    got = [r.to_dict() for r in read_converted(write_jsonl(tmp_path / "oa.jsonl", rows)).records]
    assert got[0] == {"prompt": [{"role": "system", "content": "Be brief."}, u("Hi")], "responses": [[a("Hello")]],
                      "labels": [True]}  # fmt: skip
    assert got[1] == {"prompt": [u("Hi")], "responses": [[a("Hello")], [a("Go")]], "ranks": [0.0, 1.0],
                      "meta": {"tools": []}}  # fmt: skip


def test_openai_chat_must_end_with_assistant(tmp_path):
    src = write_jsonl(tmp_path / "oa.jsonl", [{"messages": [u("Hi")]}])
    with pytest.raises(BadRowError, match=r"oa.jsonl line 1, field 'messages': must end with an assistant turn"):
        read_converted(src)


def test_plain_csv_skip_counts_and_rejects(tmp_path):
    src = tmp_path / "plain.csv"
    src.write_text("prompt,chosen,rejected,id\nHi,Hello,Go,7\nYo,,No,8\nHey,Yes,No,9\n", encoding="utf-8")
    result = convert(src, tmp_path / "out.jsonl", "csv", on_bad_row="skip")
    assert [r.to_dict() for r in result.records] == [
        {"prompt": "Hi", "responses": ["Hello", "Go"], "ranks": [0.0, 1.0], "id": "7"},
        {"prompt": "Hey", "responses": ["Yes", "No"], "ranks": [0.0, 1.0], "id": "9"}]  # fmt: skip
    assert dict(result.read.skipped) == {"empty_field": 1}
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert [(r["row"], r["field"], r["reason"]) for r in rejects] == [(2, "chosen", "empty_field")]
    assert "skipped 1 row: 1 empty_field" in result.summary()


def test_convert_writes_parquet_that_reads_back(tmp_path):
    src = write_jsonl(tmp_path / "hh.jsonl", [HH, HH])
    convert(src, tmp_path / "out.parquet")
    back = read_records(tmp_path / "out.parquet").records
    assert [r.to_dict() for r in back] == [r.to_dict() for r in read_converted(src).records]


def test_columns_mapping_then_detection(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"question": "Hi", "good": "Hello", "bad": "Go"}])
    result = read_converted(src, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert result.format == "trl" and result.records[0].responses == ["Hello", "Go"]


@pytest.mark.parametrize("row, fmt", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}, "hh"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "trl"),
    ({"prompt": "a", "completion": "b", "label": True}, "trl"),
    ({"instruction": "a", "completions": [{"response": "b", "overall_score": 1}]}, "ultrafeedback"),
    ({"prompt": "a", "completions": ["b", "c"], "scores": [1, 2]}, "native"),
    ({"prompt": "a", "responses": ["b"], "labels": [True]}, "native"),
    ({"messages": [u("a"), a("b")]}, "openai"),
    ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}, "openai"),
])  # fmt: skip
def test_detect_format(row, fmt):
    assert detect_format(row)[0] == fmt


def test_unknown_columns_are_refused_with_the_formats(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(SourceError, match="cannot tell the format from columns question, answer; pass --from"):
        read_converted(src)


# ---------------------------------------------------------------------------------------- inspect
def known_records():
    return [
        pair("a b c", "x y", "x"),  # the longer response preferred
        pair("a b c", "x", "x y z"),  # the shorter one preferred; prompt repeated
        PreferenceRecord(prompt="d e", responses=["one two three", "one", "two words"], scores=[3.0, 1.0, 2.0]),
        pair("a b c", "x y", "x"),  # a duplicate of the first record
        PreferenceRecord(prompt="f", responses=["good answer here"], labels=[True]),
        PreferenceRecord(prompt="g h", responses=["bad"], labels=[False]),
    ]


def test_inspect_known_numbers_in_words():
    rep = inspect_data(known_records()).report
    assert (rep["records"], rep["responses"], rep["k"]) == (6, 11, {"1": 2, "2": 3, "3": 1})
    assert rep["label_kinds"] == {"ranks": 3, "scalar scores": 1, "labels": 2}
    assert rep["length_unit"] == "whitespace words"
    # prompt words [3, 3, 2, 3, 1, 2]; response words [2, 1, 1, 3, 3, 1, 2, 2, 1, 3, 1]
    assert rep["prompt_length"] == {"count": 6, "min": 1.0, "mean": 2.3333, "p50": 2.5, "p90": 3.0, "p99": 3.0,
                                    "max": 3.0}  # fmt: skip
    assert rep["response_length"]["mean"] == round(20 / 11, 4)
    # ordered pairs: rec0 longer, rec1 shorter, rec2 three pairs all longer (3>2>1 words), rec3 longer
    assert rep["length_bias"] == {"pairs": 6, "longer_preferred": 5, "shorter_preferred": 1, "same_length": 0,
                                  "longer_preferred_rate": round(5 / 6, 4), "mean_length_preferred": round(13 / 6, 4),
                                  "mean_length_dispreferred": 1.5, "mean_length_desirable": 3.0,
                                  "mean_length_undesirable": 1.0}  # fmt: skip
    assert rep["duplicates"] == {"distinct_prompts": 4, "repeated_prompt_records": 2, "repeated_prompt_rate": 0.3333,
                                 "duplicate_records": 1, "duplicate_record_rate": 0.1667}  # fmt: skip
    assert rep["labels"]["ranks"] == {"records": 3, "values": {"0.0": 3, "1.0": 3}, "records_with_ties": 0}
    assert rep["labels"]["scores"]["stats"]["mean"] == 2.0
    assert rep["labels"]["labels"] == {"desirable": 1, "undesirable": 1}
    assert rep["truncation"] is None
    table = format_table(rep)
    assert "length bias: longer_preferred_rate" in table and "0.8333" in table


def test_inspect_token_lengths_and_truncation_match_the_tokenizer(tiny_path):
    from alignkit.models.load import load_tokenizer

    tok = load_tokenizer(tiny_path)
    records = [pair("The movie was", " great.", " bad and boring and dull, really."),
               pair("What did you think of the plot and the ending?", " good", " awful")]
    # independent count: prompt + response tokenized together, plus EOS (plain text, no template)
    fulls = [[len(tok(r.prompt + x)["input_ids"]) + 1 for x in r.responses] for r in records]
    max_length = sorted(n for f in fulls for n in f)[1]
    over = [n for f in fulls for n in f if n > max_length]
    rep = inspect_data(records, tokenizer=tok, max_length=max_length).report
    assert rep["length_unit"].startswith("tokens")
    assert rep["prompt_length"]["max"] == len(tok(records[1].prompt)["input_ids"])
    assert rep["truncation"] == {"max_length": max_length, "sequences": 4, "sequences_over": len(over),
                                 "sequences_over_rate": len(over) / 4,
                                 "records_over": sum(any(n > max_length for n in f) for f in fulls),
                                 "tokens_cut": sum(n - max_length for n in over),
                                 "tokens_cut_rate": round(sum(n - max_length for n in over) / sum(map(sum, fulls)), 4)}  # fmt: skip


def test_inspect_max_length_needs_a_tokenizer():
    with pytest.raises(ValueError, match="--max-length needs --tokenizer"):
        inspect_data(known_records(), max_length=8)


def test_inspect_saves_json_and_png(tmp_path):
    paths = inspect_data(known_records()).save(tmp_path / "insp")
    assert sorted(p.name for p in paths) == ["inspection.json", "prompt_lengths.png", "response_lengths.png",
                                             "scores.png"]  # fmt: skip
    assert json.loads((tmp_path / "insp" / "inspection.json").read_text())["records"] == 6
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths if p.suffix == ".png")


# ---------------------------------------------------------------------------------------- pairs (CLI)
def test_pairs_command_wraps_the_transform_and_counts_ties(tmp_path, capsys):
    rows = [{"prompt": "p1", "completions": ["a", "b", "c"], "scores": [1, 3, 3]},
            {"prompt": "p2", "completions": ["x", "y"], "scores": [2, 2]},
            {"prompt": "p3", "completions": ["u", "v"], "scores": [1.0, 0.8]}]  # fmt: skip
    src = write_jsonl(tmp_path / "scored.jsonl", rows)
    argv = ["data", "pairs", str(src), "--out", str(tmp_path / "pairs.jsonl"), "--min-margin", "0.5"]
    assert cli.main(argv) == 0
    out = read_jsonl(tmp_path / "pairs.jsonl")
    # p1: best = "b" (first of the tied best), worst = "a"; p2 tied (dropped); p3 gap 0.2 < 0.5 (dropped)
    assert [(r["prompt"], r["responses"]) for r in out] == [("p1", ["b", "a"])]
    printed = capsys.readouterr().out
    assert "pairs: 3 records in -> 1 out; dropped: below_min_margin 1, tied 1; records_without_pairs 2" in printed


# ---------------------------------------------------------------------------------------- split
def split_records():
    return [pair(f"prompt {i}", f"good {j}", f"bad {j}") for i in range(10) for j in range(2)]


def test_split_by_prompt_is_seeded_and_disjoint():
    parts = split(split_records(), eval_fraction=0.3, seed=0)
    train_keys, eval_keys = {prompt_key(r) for r in parts.train}, {prompt_key(r) for r in parts.eval}
    assert not train_keys & eval_keys
    assert parts.report == {"records_in": 20, "train_records": 14, "eval_records": 6, "train_prompts": 7,
                            "eval_prompts": 3, "eval_fraction": 0.3, "seed": 0}  # fmt: skip
    again = split(split_records(), eval_fraction=0.3, seed=0)
    assert [r.prompt for r in again.eval] == [r.prompt for r in parts.eval]
    other = [split(split_records(), 0.3, seed=s).eval for s in range(1, 4)]
    assert any({r.prompt for r in o} != {r.prompt for r in parts.eval} for o in other)


def test_split_refuses_an_empty_train_part():
    with pytest.raises(ValueError, match="all 1 distinct prompt"):
        split([pair("same", "a", "b"), pair("same", "c", "d")], eval_fraction=0.5)


def test_split_command_writes_both_files(tmp_path, capsys):
    from alignkit.data import write_records

    src = write_records(split_records(), tmp_path / "prefs.jsonl")
    assert cli.main(["data", "split", str(src), "--eval-fraction", "0.2", "--seed", "1"]) == 0
    train, evals = read_jsonl(tmp_path / "prefs.train.jsonl"), read_jsonl(tmp_path / "prefs.eval.jsonl")
    assert (len(train), len(evals)) == (16, 4)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert "train 16 (8 prompts), eval 4 (2 prompts)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- CLI
def test_convert_then_inspect_commands(tmp_path, capsys):
    src = write_jsonl(tmp_path / "hh.jsonl", [HH, {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "oops"}])
    out = tmp_path / "prefs.jsonl"
    assert cli.main(["data", "convert", str(src), "--out", str(out)]) == 2
    assert "hh.jsonl line 2, field 'rejected'" in capsys.readouterr().err
    assert cli.main(["data", "convert", str(src), "--out", str(out), "--on-bad-row", "skip"]) == 0
    assert "converted 1 records from hh.jsonl (format 'hh'" in capsys.readouterr().out
    assert cli.main(["data", "inspect", str(out), "--out", str(tmp_path / "insp")]) == 0
    printed = capsys.readouterr().out
    assert "records" in printed and "whitespace words" in printed
    assert (tmp_path / "insp" / "inspection.json").exists()
