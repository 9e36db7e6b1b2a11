"""Exact prompt/completion boundaries with a byte-level BPE tokenizer."""

import pytest

from alignkit.data.schema import PreferenceRecord, pair
from alignkit.data.tokenize import TokenizeConfig, tokenize_record, tokenize_records


def ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def test_boundary_merge_matches_full_tokenization(tiny):
    _, tok = tiny
    prompt, completion = "Answer: ", "yes"
    # The naive way (tokenize separately, concatenate) differs from the real tokenization here.
    naive = ids(tok, prompt) + ids(tok, completion)
    full = ids(tok, prompt + completion)
    assert naive != full
    tr = tokenize_record(pair(prompt, completion, " no"), tok, TokenizeConfig(add_eos=False))
    for k, resp in enumerate([completion, " no"]):
        assert tr.full_ids(k) == ids(tok, prompt + resp)
    # "yes" merged with the trailing space: its completion starts at the merged token "Ġyes".
    assert tok.convert_ids_to_tokens(tr.completion_ids(0)) == tok.convert_ids_to_tokens(full[len(tr.prompt_ids):])
    assert tok.decode(tr.completion_ids(0)) == " yes"


def test_unscored_prompt_tokens_when_only_some_responses_merge(tiny):
    _, tok = tiny
    # "The mov" + "ie" merges into "Ġmovie" across the boundary; "The mov" + " x" keeps "Ġm ov" as prompt.
    rec = pair("The mov", "ie", " x")
    tr = tokenize_record(rec, tok, TokenizeConfig(add_eos=False))
    assert tr.score_start[0] == 0 and tr.score_start[1] > 0  # shared prefix is shorter than response 1's prompt
    assert tok.decode(tr.prompt_ids + tr.segments[1][: tr.score_start[1]]) == "The mov"
    for k, resp in enumerate(rec.responses):
        assert tr.full_ids(k) == ids(tok, rec.prompt + resp)
        assert tok.decode(tr.segments[k][tr.score_start[k]:]).endswith(resp)


def test_eos_appended_for_plain_text_and_template_tail_dropped(tiny):
    _, tok = tiny
    tr = tokenize_record(pair("Q: one plus two", " three", " four"), tok, TokenizeConfig())
    assert tr.completion_ids(0)[-1] == tok.eos_token_id
    chat = PreferenceRecord(prompt=[{"role": "user", "content": "hello"}], responses=["hi", "bye"], ranks=[0, 1])
    tr = tokenize_record(chat, tok, TokenizeConfig())
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
                                   tokenize=False)
    full = tok(text, add_special_tokens=False)["input_ids"]
    # The template ends with "<|im_end|>\n"; the scored completion stops at <|im_end|> (EOS).
    assert tr.full_ids(0) == full[: full.index(tok.eos_token_id, len(tr.prompt_ids)) + 1]
    assert tok.decode(tr.completion_ids(0)) == "hi<|im_end|>"
    assert tok.decode(tr.prompt_ids).endswith("<|im_start|>assistant\n")


def test_system_prompt_goes_into_template(tiny):
    _, tok = tiny
    rec = PreferenceRecord(prompt=[{"role": "user", "content": "hi"}], responses=["yes"], ranks=[0], system="be nice")
    tr = tokenize_record(rec, tok, TokenizeConfig())
    assert tok.decode(tr.prompt_ids).startswith("<|im_start|>system\nbe nice<|im_end|>")


def test_truncation_keeps_prompt_end_and_cuts_completion_tail_and_counts(tiny):
    _, tok = tiny
    long_prompt = " ".join(["the movie was good"] * 20)
    recs = [pair(long_prompt, " great fun " * 10, " bad"), pair("Short", " ok", " no")]
    cfg = TokenizeConfig(max_length=40, max_prompt_length=20)
    items, report = tokenize_records(recs, tok, cfg)
    tr = items[0]
    full_prompt = ids(tok, long_prompt)
    assert tr.prompt_ids == full_prompt[-20:]  # kept the end of the prompt
    assert all(len(tr.prompt_ids) + len(s) <= 40 for s in tr.segments)
    assert report.truncated == {"prompt": 1, "completion": 1}
    assert items[1].full_ids(0) == ids(tok, "Short ok") + [tok.eos_token_id]
    assert "1 prompts" in report.summary() and "1 completions" in report.summary()


def test_chat_prompt_without_template_is_a_clear_error(tiny_llama_path):
    from alignkit.models.load import load_tokenizer

    tok = load_tokenizer(tiny_llama_path)
    rec = PreferenceRecord(prompt=[{"role": "user", "content": "hi"}], responses=["a", "b"], ranks=[0, 1])
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_record(rec, tok, TokenizeConfig())
    tr = tokenize_record(rec, tok, TokenizeConfig(chat_template="never"))
    assert tok.decode(tr.full_ids(0)).startswith("hia")


def test_system_field_conflicting_with_a_system_message_is_an_error(tiny):
    _, tok = tiny
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    same = PreferenceRecord(prompt=msgs, responses=["yes"], ranks=[0], system="be brief")
    assert tok.decode(tokenize_record(same, tok, TokenizeConfig()).prompt_ids).count("be brief") == 1
    clash = PreferenceRecord(prompt=msgs, responses=["yes"], ranks=[0], system="be nice", id="r7")
    with pytest.raises(ValueError, match="record r7: 'system' is set and the chat prompt starts with a different"):
        tokenize_record(clash, tok, TokenizeConfig())
