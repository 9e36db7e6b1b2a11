"""`alignkit data convert` on real HH-RLHF rows (tests/data/README.md says which and why): rows whose
transcripts differ before the last assistant turn are bad rows (`no_split`), as docs/data_tools.md says,
never records with several-message responses; empty replies are counted, and kept or skipped."""

import json
from pathlib import Path

import pytest

from alignkit import cli
from alignkit.data import BadRowError
from alignkit.data.tools import convert, read_converted

ROWS = Path(__file__).parent / "data" / "hh_rlhf_harmless_test_rows.jsonl"
DIVERGING = [6, 7, 8, 9, 10]  # lines of ROWS; line 8's rejected side has the two assistant turns
EMPTY = [4, 5]  # lines whose chosen transcript ends with "\n\nAssistant: "
NO_SPLIT = ("chosen and rejected differ before the last assistant turn: after 3 messages in common, chosen "
            "continues with 2 messages (assistant, assistant) and rejected with 1 message (assistant); HH "
            "conversion keeps only pairs whose transcripts differ in the final assistant reply")  # fmt: skip


def rejects(path):
    return [(r["row"], r["field"], r["reason"]) for r in map(json.loads, path.read_text().splitlines())]


def test_rows_diverging_before_the_last_assistant_turn_stop_the_command_by_default():
    with pytest.raises(BadRowError) as e:
        read_converted(ROWS)
    assert (e.value.row, e.value.field, e.value.reason) == (6, "chosen", "no_split")
    assert str(e.value) == f"hh_rlhf_harmless_test_rows.jsonl line 6, field 'chosen': {NO_SPLIT}"


def test_skipped_diverging_rows_are_counted_and_every_record_has_one_assistant_reply(tmp_path):
    result = convert(ROWS, tmp_path / "prefs.jsonl", on_bad_row="skip")
    assert [r.origin for r in result.records] == [f"hh_rlhf_harmless_test_rows.jsonl line {i}" for i in range(1, 6)]
    assert all(len(reply) == 1 and reply[0]["role"] == "assistant" for r in result.records for reply in r.responses)
    assert dict(result.read.skipped) == {"no_split": 5}
    assert rejects(tmp_path / "prefs.rejects.jsonl") == [
        (6, "chosen", "no_split"), (7, "chosen", "no_split"), (8, "rejected", "no_split"),
        (9, "chosen", "no_split"), (10, "chosen", "no_split")]  # fmt: skip
    # the two empty replies are kept (the default) and counted
    assert result.empty_kept == 2
    assert [r.responses[0][0]["content"] for r in result.records[3:]] == ["", ""]
    assert result.summary() == (
        "converted 5 records from hh_rlhf_harmless_test_rows.jsonl (format 'hh': chosen/rejected (or prompt) hold "
        "'Human: ... Assistant: ...' transcripts); 2 records with an empty reply kept (--on-empty skip drops "
        f"them); skipped 5 rows: 5 no_split -> {tmp_path / 'prefs.rejects.jsonl'}; wrote {tmp_path / 'prefs.jsonl'}")


def test_on_empty_skip_moves_empty_replies_to_the_rejects_even_when_bad_rows_stop(tmp_path):
    first5 = tmp_path / "hh.jsonl"
    first5.write_text("".join(ROWS.read_text().splitlines(keepends=True)[:5]))
    result = convert(first5, tmp_path / "prefs.jsonl", on_empty="skip")  # on_bad_row="error"
    assert len(result.records) == 3 and result.empty_kept == 0
    assert dict(result.read.skipped) == {"empty_reply": 2}
    assert rejects(tmp_path / "prefs.rejects.jsonl") == [(4, "chosen", "empty_reply"), (5, "chosen", "empty_reply")]


def test_cli_on_empty_skip_and_on_bad_row_skip(tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    argv = ["data", "convert", str(ROWS), "--out", str(out), "--on-bad-row", "skip", "--on-empty", "skip"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.endswith(f"; skipped 7 rows: 5 no_split, 2 empty_reply -> {out.with_suffix('.rejects.jsonl')}; "
                            f"wrote {out}\n")  # fmt: skip
    assert len(out.read_text().splitlines()) == 3


def test_synthetic_divergence_in_either_hh_form_is_no_split(tmp_path):
    whole = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: knock knock",
             "rejected": "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: joke?\n\nAssistant: no"}  # fmt: skip
    # the prompt-column form: a continuation that carries a further Human turn
    prompt_form = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello\n\nHuman: joke?\n\nAssistant: ok",
                   "rejected": " go away"}  # fmt: skip
    expected = {
        "whole": "after 1 message in common, chosen continues with 3 messages (assistant, user, assistant) and "
                 "rejected with 3 messages (assistant, user, assistant)",
        "prompt_form": "after 1 message in common, chosen continues with 3 messages (assistant, user, assistant) "
                       "and rejected with 1 message (assistant)",
    }  # fmt: skip
    for name, row in (("whole", whole), ("prompt_form", prompt_form)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(BadRowError) as e:
            read_converted(path)
        assert (e.value.field, e.value.reason) == ("chosen", "no_split")
        assert expected[name] in str(e.value)
