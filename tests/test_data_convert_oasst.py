"""`alignkit data convert --from oasst`: OpenAssistant trees -> ranked lists, on a hand-written tree in the trees
export layout (tests/data/oasst_trees.jsonl) and the same messages as the flat messages export."""

import json
from pathlib import Path

import pytest

from alignkit import cli
from alignkit.data.io import BadRowError, read_records
from alignkit.data.tools.converters import read_converted
from alignkit.data.tools.oasst import flatten_tree, tree_records

TREES = Path(__file__).parent / "data" / "oasst_trees.jsonl"
# what the file holds (tests/data/README.md): 14 messages in two trees
EXPECTED_COUNTS = {"messages": 14, "records": 2, "deleted": 2, "below_deleted": 2, "failed_review": 1,
                   "unranked_replies": 1, "prompts_without_ranking": 1}


def _messages() -> list[dict]:
    return [m for line in TREES.read_text().splitlines() for m in flatten_tree(json.loads(line))]


def _check(records):
    first, second = records
    assert first.prompt == [{"role": "user", "content": "What is 2 + 2?"}]
    assert [r[0]["content"] for r in first.responses] == ["Four: two and two more make four.", "2 + 2 = 4."]
    assert first.ranks == [0, 1] and first.id == "p1"
    assert first.meta == {"message_tree_id": "t1", "message_ids": ["a2", "a1"], "lang": "en"}
    # the second turn's prompt is the path through the conversation: the root prompt, the answer it continues
    assert second.prompt == [{"role": "user", "content": "What is 2 + 2?"},
                             {"role": "assistant", "content": "Four: two and two more make four."},
                             {"role": "user", "content": "And 3 + 3?"}]
    assert [r[0]["content"] for r in second.responses] == ["Six.", "3 + 3 = 6, the double of 3."]
    assert all(len(r) == 1 and r[0]["role"] == "assistant" for rec in records for r in rec.responses)


def test_trees_export_to_ranked_lists_with_everything_left_out_counted():
    result = read_converted(TREES)
    assert result.format == "oasst" and "trees export" in result.reason
    _check(result.records)
    assert result.notes == ("2 ranked lists from 14 messages; left out: 2 deleted (+2 below them), 1 failed review, "
                            "1 unranked answers, 1 prompts with < 2 ranked answers")
    records, counts = tree_records(_messages())
    assert {k: v for k, v in counts.items() if v} == EXPECTED_COUNTS


def test_messages_export_in_any_order_gives_the_same_records(tmp_path):
    flat = tmp_path / "oasst.messages.jsonl"
    flat.write_text("".join(json.dumps(m) + "\n" for m in reversed(_messages())))
    result = read_converted(flat)
    assert result.format == "oasst" and "messages export" in result.reason
    _check(result.records)
    # an answer whose parent is not in the file, with one below it: counted, not guessed at
    rows = _messages() + [{"message_id": "x1", "parent_id": "gone", "role": "assistant", "text": "?", "rank": 0},
                          {"message_id": "x2", "parent_id": "x1", "role": "prompter", "text": "?"}]
    _, counts = tree_records(rows)
    assert (counts["orphans"], counts["below_orphans"], counts["records"]) == (1, 1, 2)


def test_bad_messages_name_row_and_field_or_are_skipped(tmp_path):
    rows = _messages()
    assert [rows[10]["message_id"], rows[13]["message_id"]] == ["a3", "b1"]  # leaves: the two lists stay whole
    rows[10] = {**rows[10], "text": None}
    rows[13] = {**rows[13], "rank": "first"}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in rows))
    with pytest.raises(BadRowError, match=r"bad.jsonl line 11, field 'text': must be a string"):
        read_converted(path, "oasst")
    result = read_converted(path, "oasst", on_bad_row="skip")
    assert dict(result.read.skipped) == {"missing_field": 1, "wrong_value": 1}
    assert len(result.read.rejects_path.read_text().splitlines()) == 2 and len(result.records) == 2
    # a nested tree names the path to the bad message
    tree = json.loads(TREES.read_text().splitlines()[0])
    tree["prompt"]["replies"][1]["role"] = "moderator"
    (tmp_path / "tree.jsonl").write_text(json.dumps(tree) + "\n")
    with pytest.raises(BadRowError, match=r"line 1, field 'prompt.replies\[1\].role': must be 'prompter' or"):
        read_converted(tmp_path / "tree.jsonl")


def test_cli_convert_from_oasst(tmp_path, capsys):
    out = tmp_path / "oasst.jsonl"
    assert cli.main(["data", "convert", str(TREES), "--from", "oasst", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "converted 2 records" in printed and "2 deleted (+2 below them)" in printed
    records = read_records(out).records
    _check(records)
    assert records[0].label_kind == "ranks"
