"""Issue 18, readers: text the tokenizer cannot encode is a row error (file, line, field) or skipped and counted;
pairs a pairwise loss learns nothing from are counted at start-up, and a run where every pair is one stops;
duplicate ids and identical chosen/rejected are kept with a warning and counts."""

import json
import logging

import pytest

from alignkit.data import read_records
from alignkit.data.dataset import TokenizedDataset, unencodable
from alignkit.data.schema import pair
from alignkit.data.tokenize import TokenizeConfig
from alignkit.engine.prepare import check_pairs
from alignkit.errors import DataError
from alignkit.objectives import build_objective


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer without byte fallback: words outside its vocabulary become [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", "the", "movie", "was", "good", "bad", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_text_the_tokenizer_cannot_encode_names_file_line_and_field(tmp_path, word_tokenizer):
    path = write_pairs(tmp_path / "d.jsonl", [
        {"prompt": "the movie was", "chosen": "good .", "rejected": "bad ."},
        {"prompt": "the movie was", "chosen": "good .", "rejected": "bad ."},
        {"prompt": "the movie was", "chosen": "good .", "rejected": "bad 😀 ."},  # line 3
        {"prompt": "the film was", "chosen": "good .", "rejected": "bad ."},  # line 4: 'film' is unknown
    ])
    records = read_records(path).records
    assert unencodable(records, word_tokenizer) == {
        2: ("'responses[1]' (rejected)", "the tokenizer cannot encode '😀': it would become the unknown token '[UNK]'"),
        3: ("'prompt'", "the tokenizer cannot encode 'film': it would become the unknown token '[UNK]'")}
    with pytest.raises(DataError) as e:
        TokenizedDataset.build(records, word_tokenizer, TokenizeConfig(64), "train data")
    assert str(e.value) == ("d.jsonl line 3, field 'responses[1]' (rejected): the tokenizer cannot encode '😀': it "
                            "would become the unknown token '[UNK]'; fix the text, use a tokenizer that covers it, "
                            "or set on_bad_row=skip")
    data = TokenizedDataset.build(records, word_tokenizer, TokenizeConfig(64), "train data", on_bad_row="skip")
    assert (len(data), len(data.items), dict(data.skipped)) == (2, 2, {"unencodable": 2})  # 4 in = 2 kept + 2 skipped
    assert [tr.index for tr in data.items] == [0, 1]


def test_a_byte_level_tokenizer_encodes_everything(tiny):
    _, tok = tiny  # byte-level BPE without an unknown token: nothing to check, nothing encoded twice
    assert unencodable([pair("p 😀", "a", "b")], tok) == {}


def test_pairs_without_signal_are_counted_at_start_up(caplog):
    dpo = build_objective("dpo")
    records = [pair(f"p{i}", "a", "b") for i in range(6)]
    records[1].ranks = [0.0, 0.0]  # tied
    records[2].ranks = [1.0, 1.0]  # tied
    records[3].responses = ["same", "same"]  # identical
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        found = check_pairs(records, dpo, "train")
    assert dict(found) == {"tied": 2, "identical": 1}
    assert ("train data: 3 of 6 pairs give dpo no preference signal: 2 tied (equal ranks or scores: masked out of "
            "the loss), 1 with the same text as chosen and rejected") in caplog.text
    assert check_pairs(records, build_objective("sft"), "train") == {}  # sft has no pairwise term


def test_a_run_where_every_pair_ties_stops_with_one_line(tmp_path, tiny_path, capfd):
    from alignkit.cli import main

    data = write_pairs(tmp_path / "tied.jsonl",
                       [{"prompt": f"p{i}", "completions": ["a", "b"], "ranks": [0, 0]} for i in range(10)])
    logging.getLogger("alignkit").handlers.clear()  # a fresh console handler on this test's stderr
    rc = main(["train", "objective=dpo", f"model={tiny_path}", f"data={data}", "max_steps=10", "batch_size=2",
               f"output_dir={tmp_path / 'run'}", "progress=false"])
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("alignkit train: error: train data: every one of the 10 pairs gives dpo no "
                                    "preference signal (10 tied (equal ranks or scores: masked out of the loss)); "
                                    "check the ranks/scores of the data")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any step


def test_duplicate_ids_and_identical_pairs_warn_with_counts(tmp_path, caplog):
    path = write_pairs(tmp_path / "d.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b", "id": "x"},
        {"prompt": "q", "chosen": "a", "rejected": "a", "id": "x"},
        {"prompt": "r", "chosen": "a", "rejected": "a", "id": "y"},
    ])
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        result = read_records(path)
    assert len(result) == 3 and dict(result.warnings) == {"duplicate_id": 1, "identical_responses": 2}
    assert result.summary() == ("read 3 records from d.jsonl (layout 'paired'); warning: 1 records repeat an "
                                "earlier record's id, 2 pairs have the same text as chosen and rejected (no "
                                "preference signal)")
    assert result.summary() in caplog.text


def test_a_prompts_file_that_is_not_utf8_names_its_line(tmp_path):
    from alignkit.data.io import SourceError, read_text_lines
    from alignkit.data.prompts import read_prompt_rows

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"first\n\nthe caf\xe9 was\n")
    with pytest.raises(SourceError) as e:
        read_prompt_rows(str(path))
    assert str(e.value) == "prompts.txt line 3: not valid UTF-8 (byte 0xe9)"
    path.write_bytes(b"\xef\xbb\xbffirst\nsecond\n")
    assert read_text_lines(path) == ["first", "second"]
