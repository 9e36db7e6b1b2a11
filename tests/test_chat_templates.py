"""Real tokenizers and chat templates (../shared/tokenizers, see its README): the completion alignkit trains on
is exactly the template's own ids from the end of the prompt to the end of the assistant turn, for ten
families; the quirks (Qwen3 think blocks, Llama's date, Phi-3's end-of-text, Mistral's system message, BOS
in templates); the clear errors; sampling stops where a turn ends; one DPO step per family.

Expected ids come from the template itself (``apply_chat_template(..., tokenize=True)``), from independent
references (``reference_ids.json``: tiktoken, mistral-common, Qwen3-4B's tokenizer.json), or are written out.
"""

import copy
import json
import logging
import math

import pytest
import torch

from alignkit.data.chat_template import PINNED_DATE, chat_template
from alignkit.data.layouts import parse_row
from alignkit.data.schema import PreferenceRecord, pair
from alignkit.data.tokenize import TokenizeConfig, TokenizedRecord, encode, tokenize_record, tokenize_records
from alignkit.errors import DataError, ModelError
from alignkit.models.families import tokenizer_dir

pytestmark = pytest.mark.skipif(tokenizer_dir() is None, reason="the vendored real tokenizers are not on this machine "
                                "(../shared/tokenizers beside the repository, or set $ALIGNKIT_TOKENIZERS)")

# family folder -> (end-of-turn id, its text, what the template writes after it: not trained on)
TURN_END = {
    "llama-3.2": (128009, "<|eot_id|>", ""),
    "qwen2.5": (151645, "<|im_end|>", "\n"),
    "qwen3": (151645, "<|im_end|>", "\n"),
    "gemma-3": (106, "<end_of_turn>", "\n"),
    "mistral-v3": (2, "</s>", ""),
    "phi-3": (32007, "<|end|>", "<|endoftext|>"),  # its "\n" is eaten: <|end|> strips whitespace on its right
    "deepseek-v3": (1, "<｜end▁of▁sentence｜>", ""),
}
PLAIN_ONLY = {"gpt2": 50256, "gpt-neox-pythia": 0, "olmo-2": 100257}  # no template: plain text ends with EOS
ALL = [*TURN_END, *PLAIN_ONLY]
WITH_BOS = {"llama-3.2": 128000, "gemma-3": 2, "mistral-v3": 1, "deepseek-v3": 0}  # templates that write BOS


@pytest.fixture(scope="module")
def tok():
    """name -> the tokenizer as alignkit loads it (``load_tokenizer``: pad set to EOS where missing), cached."""
    from alignkit.models.load import load_tokenizer

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_tokenizer(str(tokenizer_dir(name)))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def golden():
    return json.loads((tokenizer_dir() / "reference_ids.json").read_text())


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def template_ids(t, messages, generation_prompt=False):
    """The template's own ids (the date pinned for Llama as its reference render does)."""
    return list(t.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                      return_dict=False, date_string="26 Jul 2024"))


def hh(chosen, rejected):
    return parse_row({"chosen": chosen, "rejected": rejected}, "conversation")


CASES = {
    "single_turn": PreferenceRecord(prompt=[user("What is 2+2?")], responses=["It is 4.", "Five."], ranks=[0, 1]),
    "multi_turn": PreferenceRecord(prompt=[user("hi"), assistant("Hello! How can I help?"), user("Name a colour.")],
                                   responses=[" Blue", "I can't."], ranks=[0, 1]),
    "system": PreferenceRecord(prompt=[{"role": "system", "content": "You are terse."}, user("hi"),
                                       assistant("hello"), user("Capital of France?")],
                               responses=["Paris.", "London."], ranks=[0, 1]),
    # HH-RLHF text: the two conversations differ only in the last assistant turn
    "hh_last_turn": hh("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant: Why did the chicken?",
                       "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant: No."),
    # HH-RLHF text differing at the first assistant turn: a response of three turns (assistant, user, assistant)
    "hh_whole_conversation": hh("\n\nHuman: hi\n\nAssistant: hello there\n\nHuman: more?\n\nAssistant: yes, more",
                                "\n\nHuman: hi\n\nAssistant: go away"),
}


@pytest.mark.parametrize("name", list(TURN_END))
def test_probe_finds_the_turn_end_each_template_writes(tok, name):
    t = tok(name)
    end, text, _ = TURN_END[name]
    assert chat_template(t).end_of_turn == end and t.convert_ids_to_tokens(end) == text
    # Gemma-3 and Phi-3 end a turn with a token that is not the tokenizer's EOS (<eos>, <|endoftext|>)
    assert (end != t.eos_token_id) == (name in ("gemma-3", "phi-3"))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(TURN_END))
def test_chat_completion_is_the_templates_own_ids_to_the_turn_end(tok, name, case):
    t, record = tok(name), CASES[case]
    end, _, tail = TURN_END[name]
    tr = tokenize_record(record, t, TokenizeConfig())
    prompt = template_ids(t, record.prompt, generation_prompt=True)
    assert tr.prompt_ids == prompt[: len(tr.prompt_ids)]
    for k, response in enumerate(record.responses):
        full = template_ids(t, record.prompt + (response if isinstance(response, list) else [assistant(response)]))
        assert full[: len(prompt)] == prompt  # the generation prompt is a prefix of the conversation
        stop = len(full) - full[::-1].index(end)  # right after the last end-of-turn token
        assert tr.full_ids(k) == full[:stop]
        assert tr.completion_ids(k) == full[len(prompt):stop]
        assert t.decode(full[stop:]) == tail  # what the template writes after the turn: not trained on


@pytest.mark.parametrize("name", ALL)
def test_plain_text_completion_ends_with_the_tokenizers_eos(tok, name):
    t = tok(name)
    tr = tokenize_record(pair("Question: hi\nAnswer:", " hello", " bye"), t, TokenizeConfig())
    # the tokenizer's own encoding of the whole text (its BOS where it adds one), then EOS
    assert tr.full_ids(0) == t("Question: hi\nAnswer: hello")["input_ids"] + [t.eos_token_id]
    assert tr.completion_ids(0)[-1] == PLAIN_ONLY.get(name, t.eos_token_id)


def test_completions_end_as_written_per_family(tok):
    """The table in docs/chat_templates.md: the single-turn completion "hello" per family."""
    want = {
        "llama-3.2": ([15339, 128009], "hello<|eot_id|>"),
        "qwen2.5": ([14990, 151645], "hello<|im_end|>"),
        "qwen3": ([151667, 271, 151668, 271, 14990, 151645], "<think>\n\n</think>\n\nhello<|im_end|>"),
        "gemma-3": ([23391, 106], "hello<end_of_turn>"),
        "mistral-v3": ([7080, 29477, 2], "hello</s>"),
        "phi-3": ([12199, 32007], "hello<|end|>"),
        "deepseek-v3": ([33310, 1], "hello<｜end▁of▁sentence｜>"),
    }
    for name, (ids, text) in want.items():
        t = tok(name)
        tr = tokenize_record(PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0]), t, TokenizeConfig())
        assert (tr.completion_ids(0), t.decode(tr.completion_ids(0))) == (ids, text), name


def test_golden_ids_from_independent_references(tok, golden):
    for name in ("llama-3.2", "qwen3"):
        for row in golden[name]["texts"]:
            assert encode(tok(name), row["text"], used_template=True) == row["ids"], (name, row["text"])
    # Llama 3.2 (tiktoken + Meta's tokenizer.model): the whole conversation, the date pinned as alignkit pins it
    llama = golden["llama-3.2"]["chat_text"]
    assert llama["render_kwargs"] == {"date_string": PINNED_DATE}
    tr = tokenize_record(PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0]), tok("llama-3.2"),
                         TokenizeConfig())
    assert tr.full_ids(0) == llama["ids"]
    # Qwen3-4B: the reference chat ends "<|im_end|>\n"; the trained completion stops at <|im_end|>
    qwen = golden["qwen3"]["texts"][-1]["ids"]
    tr = tokenize_record(PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0]), tok("qwen3"),
                         TokenizeConfig())
    assert tr.full_ids(0) == qwen[:-1] and qwen[-1] == 198
    # mistral-common's encode_chat_completion: a whole conversation, and prompts ending with a user turn
    from alignkit.generation import prompt_ids

    mistral = tok("mistral-v3")
    for chat in golden["mistral-v3"]["chats"]:
        msgs = chat["messages"]
        if msgs[-1]["role"] == "assistant":
            rec = PreferenceRecord(prompt=msgs[:-1], responses=[msgs[-1:]], ranks=[0])
            assert tokenize_record(rec, mistral, TokenizeConfig()).full_ids(0) == chat["ids"]
        else:
            assert prompt_ids(mistral, msgs) == chat["ids"]


# ---------------------------------------------------------------------------------------------- quirks
def test_qwen3_empty_think_block_belongs_to_the_final_turns_completion(tok):
    t = tok("qwen3")
    rec = PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0])
    tr = tokenize_record(rec, t, TokenizeConfig())
    assert t.decode(tr.prompt_ids).endswith("<|im_start|>assistant\n")
    assert t.decode(tr.completion_ids(0)) == "<think>\n\n</think>\n\nhello<|im_end|>"
    # enable_thinking=False puts the empty block in the generation prompt instead: the completion is the answer
    tr = tokenize_record(rec, t, TokenizeConfig(chat_template_kwargs={"enable_thinking": False}))
    assert t.decode(tr.prompt_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tr.completion_ids(0) == [14990, 151645]


def test_qwen3_drops_earlier_reasoning_in_prompt_and_full_render_alike(tok):
    t = tok("qwen3")
    rec = PreferenceRecord(prompt=[user("u1"), assistant("<think>\nR1\n</think>\n\nA1"), user("u2")],
                           responses=["<think>\nR2\n</think>\n\nA2"], ranks=[0])
    tr = tokenize_record(rec, t, TokenizeConfig())  # no DataError: the prompt render is a prefix of the full one
    assert "R1" not in t.decode(tr.prompt_ids) and "A1<|im_end|>" in t.decode(tr.prompt_ids)
    assert t.decode(tr.completion_ids(0)) == "<think>\nR2\n</think>\n\nA2<|im_end|>"


def test_llama_date_is_pinned_once_and_user_date_wins(tok):
    t = copy.deepcopy(tok("llama-3.2"))  # a tokenizer object alignkit has not probed yet
    recs = [PreferenceRecord(prompt=[user(f"q{i}")], responses=["a"], ranks=[0]) for i in range(3)]
    log, seen, level = logging.getLogger("alignkit"), [], logging.getLogger("alignkit").level
    handler = logging.Handler()
    handler.emit = seen.append
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        items, _ = tokenize_records(recs, t, TokenizeConfig())
        tokenize_records(recs, t, TokenizeConfig())
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert [r.getMessage() for r in seen] == [
        "the chat template writes today's date: renders use date_string='26 Jul 2024' so that token ids are the "
        "same every day (chat_template_kwargs={date_string: ...} chooses another)"]
    assert all("Today Date: 26 Jul 2024\n" in t.decode(tr.prompt_ids) for tr in items)
    mine, _ = tokenize_records(recs, t, TokenizeConfig(chat_template_kwargs={"date_string": "01 Jan 2025"}))
    assert "Today Date: 01 Jan 2025\n" in t.decode(mine[0].prompt_ids)
    assert mine[0].completion_ids(0) == items[0].completion_ids(0) == [64, 128009]


def test_phi3_end_of_text_after_the_last_turn_is_not_trained(tok):
    t = tok("phi-3")
    rec = PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0])
    full = template_ids(t, [user("hi"), assistant("hello")])
    assert full[-3:] == [12199, 32007, 32000]  # hello <|end|> <|endoftext|>
    assert tokenize_record(rec, t, TokenizeConfig()).full_ids(0) == full[:-1]


@pytest.mark.parametrize("name", ["gemma-3", "phi-3", "qwen2.5"])
def test_process_reward_steps_end_on_their_own_last_token_not_the_turn_end(tok, name):
    """A process reward model reads each step's label at the step's last token; the last step's is its final
    period, not the template's end of turn (which is not the tokenizer's EOS for Gemma-3 and Phi-3)."""
    from alignkit.data.dataset import TokenizedDataset

    t = tok(name)
    steps = ["2 + 3 = 5.", "5 * 2 = 10."]
    rec = PreferenceRecord(prompt=[user("Add 2 and 3, then double it.")], responses=steps, labels=[True, False])
    item = TokenizedDataset.build([rec], t, TokenizeConfig(), "data", extras=("step_mask",)).items[0]
    comp = item.completion_ids(0)
    assert comp[-1] == TURN_END[name][0] and len(item.steps) == 2 and item.step_labels == [1.0, 0.0]
    first = t.decode(comp[: item.steps[0] + 1])  # Qwen's BPE merges ".\n\n" across the step separator, so
    assert first.endswith(steps[0]) or first.endswith(steps[0][:-1])  # its first step may end one character early
    assert t.decode(comp[: item.steps[1] + 1]).endswith(steps[1])
    assert item.steps[-1] == len(comp) - 2  # the last step ends right before the end-of-turn token


def test_mistral_system_message_goes_to_the_last_user_turn(tok):
    t = tok("mistral-v3")
    rec = CASES["system"]
    tr = tokenize_record(rec, t, TokenizeConfig())
    assert t.decode(tr.prompt_ids) == "<s>[INST] hi[/INST] hello</s>[INST] You are terse.\n\nCapital of France?[/INST]"
    # a response with a user turn of its own moves the system message: the prompt is no longer a prefix
    moved = PreferenceRecord(prompt=[{"role": "system", "content": "Be brief."}, user("hi")], id="r9",
                             responses=[[assistant("hello"), user("more"), assistant("ok")]], ranks=[0])
    with pytest.raises(DataError, match=r"^record r9: the chat template renders the prompt differently") as err:
        tokenize_record(moved, t, TokenizeConfig())
    assert "\n" not in str(err.value)  # one line
    assert "'Be brief.\\n\\nhi[/INST]' alone, 'hi[/INST] hello</s>[INST' with the response" in str(err.value)


@pytest.mark.parametrize("name", list(WITH_BOS))
def test_template_bos_is_not_doubled(tok, name):
    t, bos = tok(name), WITH_BOS[name]
    tr = tokenize_record(CASES["single_turn"], t, TokenizeConfig())
    assert tr.prompt_ids[0] == bos and tr.prompt_ids.count(bos) == 1
    text = t.apply_chat_template([user("hi")], add_generation_prompt=True, tokenize=False)
    doubled = t(text)["input_ids"][:2] == [bos, bos]  # what encoding a render with special tokens would do
    # DeepSeek-V3's encode() adds BOS under transformers 4.57 but not under 5.x (its README): either way alignkit
    # encodes renders with add_special_tokens=False, so its ids do not depend on the version
    assert doubled or name == "deepseek-v3"


def test_template_without_a_turn_end_token_falls_back_to_eos(tok):
    t = copy.deepcopy(tok("gpt2"))
    t.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                       "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    assert chat_template(t).end_of_turn is None  # the template writes no special token after a turn
    tr = tokenize_record(PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0]), t, TokenizeConfig())
    assert tr.full_ids(0) == t("user: hi\nassistant: hello\n")["input_ids"] + [50256]  # its text, then EOS


def test_prompt_guard_refuses_training_records_not_generation_prompts(tok):
    from alignkit.generation import prompt_ids

    t = copy.deepcopy(tok("gpt2"))  # a generation prompt the full render does not repeat (as DeepSeek-R1's <think>)
    t.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                       "{% if add_generation_prompt %}{{ 'assistant: <think>' }}{% endif %}")
    with pytest.raises(DataError, match=r"^record 0: the chat template renders the prompt differently once the "
                                        r"response follows \(from character 20: '<think>' alone, 'hello\\n' with"):
        tokenize_record(PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0]), t, TokenizeConfig())
    assert prompt_ids(t, [user("hi")]) == t("user: hi\nassistant: <think>")["input_ids"]


# ---------------------------------------------------------------------------------------------- errors
def test_chat_data_without_a_template_is_one_error_before_tokenizing(tok, monkeypatch):
    import alignkit.data.tokenize as tokenize

    def never(*a, **k):
        raise AssertionError("tokenized a record before refusing the data")

    monkeypatch.setattr(tokenize, "tokenize_record", never)
    recs = [pair("plain", " a", " b"), CASES["single_turn"], CASES["multi_turn"]]
    with pytest.raises(DataError) as err:
        tokenize.tokenize_records(recs, tok("gpt2"), TokenizeConfig())
    assert str(err.value) == ("2 of 3 records have chat prompts (message lists) but the tokenizer has no chat "
                              "template; set chat_template=never to join message contents as plain text, or use a "
                              "tokenizer with a chat template (e.g. the model's instruct version)")


def test_tokenizer_larger_than_the_embedding_is_a_model_error_before_training(tok, tmp_path, monkeypatch,
                                                                               pairs_path):
    import alignkit.engine.trainer as trainer_module
    from alignkit.models.families import build_family_model

    build_family_model("qwen2", vocab_size=1000).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(trainer_module, "load_tokenizer", lambda path, **kw: tok("qwen2.5"))
    config = dict(model=str(tmp_path / "model"), data=pairs_path, max_steps=1, output_dir=str(tmp_path / "run"),
                  progress=False)
    with pytest.raises(ModelError) as err:
        trainer_module.Trainer(trainer_module.TrainConfig(**config))
    assert str(err.value) == (
        f"model {tmp_path / 'model'}: the tokenizer has 151665 tokens but the model's embedding has 1000 rows; use "
        "the tokenizer saved with this model, or resize the model's embeddings to the tokenizer "
        "(model.resize_token_embeddings(len(tokenizer)), then save both to one folder)")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_data_token_outside_the_embedding_is_a_model_error(tok):
    from transformers import Qwen2Config

    from alignkit.models.checks import check_tokenizer_fits

    t = tok("qwen2.5")
    config = Qwen2Config(vocab_size=len(t))
    check_tokenizer_fits(t, config, "m", [TokenizedRecord([1, 2], [[3, len(t) - 1]], [0])])  # fits
    with pytest.raises(ModelError, match=r"^model m: the data holds token id 151665 but the model's embedding has "
                                         r"151665 rows \(ids 0-151664\); use the tokenizer saved"):
        check_tokenizer_fits(t, config, "m", [TokenizedRecord([1, 2], [[3, len(t)]], [0])])


# ---------------------------------------------------------------------------------------------- sampling
class ScriptedLM(torch.nn.Module):
    """Stands in for a causal LM that answers every prompt with ``script`` and then pads, as ``generate`` does
    once a row has stopped; records the generation config it was given."""

    def __init__(self, script: list[int], pad: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.pad, self.seen = script, pad, None

    def generate(self, input_ids, attention_mask, generation_config, **kwargs):
        self.seen = generation_config
        n = generation_config.num_return_sequences
        tail = torch.tensor(self.script + [self.pad] * 2).repeat(input_ids.shape[0] * n, 1)
        return torch.cat([input_ids.repeat_interleave(n, 0), tail], dim=1)


@pytest.mark.parametrize("name", list(TURN_END))
def test_sampling_stops_at_the_turn_end_and_ends_like_training(tok, name):
    from alignkit.generation import eos_and_pad, generate
    from alignkit.rollout.experience import sample_experience

    t, end = tok(name), TURN_END[name][0]
    record = PreferenceRecord(prompt=[user("hi")], responses=["hello"], ranks=[0])
    trained = tokenize_record(record, t, TokenizeConfig())
    answer = trained.completion_ids(0)[:-1]  # what the model says before it ends its turn
    model = ScriptedLM(answer + [end], t.pad_token_id)
    stops, _ = eos_and_pad(model, t)
    assert end in stops and t.eos_token_id in stops
    gen = generate(model, t, [record.prompt], k=2)
    assert end in model.seen.eos_token_id  # transformers stops the row there
    assert gen.finished == [[True, True]] and gen.stop_ids == [[end, end]] and gen.token_ids[0][0] == answer
    exp = sample_experience(model, t, [record.prompt], [{}], lambda p, c, r: [0.0] * len(c), k=2, seed=0)
    item = exp.data.items[0]
    assert item.prompt_ids == trained.prompt_ids
    assert item.segments == [trained.completion_ids(0)] * 2  # sampled completion == trained completion, token for token


def test_score_logps_scores_the_turn_end_only_for_finished_samples(tok):
    from alignkit.engine.score import score_logps
    from alignkit.generation import prompt_ids
    from alignkit.models.families import build_family_model

    t = tok("phi-3")
    model = build_family_model("phi3", vocab_size=len(t))
    prompt = [user("hi")]
    ids = prompt_ids(t, prompt) + [12199, 32007]  # "hello" <|end|>
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    hello, end = float(logp[len(ids) - 3, 12199]), float(logp[len(ids) - 2, 32007])
    got = score_logps(model, t, [prompt, prompt], [["hello"], ["hello"]], finished=[[True], [False]])
    assert got[:, 0].tolist() == pytest.approx([hello + end, hello], abs=1e-5)


# ---------------------------------------------------------------------------------------------- training
FAMILY_OF = {"llama-3.2": "llama", "qwen2.5": "qwen2", "qwen3": "qwen3", "gemma-3": "gemma3", "mistral-v3": "mistral",
             "phi-3": "phi3", "deepseek-v3": "deepseek_v3", "gpt2": "gpt2", "gpt-neox-pythia": "gpt_neox",
             "olmo-2": "olmo2"}


@pytest.mark.parametrize("name", ALL)
def test_one_dpo_step_per_family_on_its_real_tokenizer(tok, name, tmp_path, monkeypatch):
    import alignkit.engine.trainer as trainer_module
    from alignkit.models.families import build_family_model, special_token_ids

    t = tok(name)
    model = build_family_model(FAMILY_OF[name], vocab_size=len(t), special_tokens=special_token_ids(t))
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # GPT-2's default dropout (0.1): off, so step 1 is log 2
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    model.save_pretrained(tmp_path / "model")
    chat = name in TURN_END
    rows = [{"prompt": [user(f"What is {i} plus {i}?")] if chat else f"Q: what is {i} plus {i}?\nA:",
             "chosen": [assistant(f"{2 * i}.")] if chat else f" {2 * i}.",
             "rejected": [assistant("No idea.")] if chat else " No idea."} for i in range(4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(trainer_module, "load_tokenizer", lambda path, **kw: t)  # the vendored folder, as loaded
    kwargs = {"enable_thinking": False} if name == "qwen3" else {}
    trainer = trainer_module.Trainer(trainer_module.TrainConfig(
        model=str(tmp_path / "model"), data=str(tmp_path / "data.jsonl"), objective="dpo", batch_size=2, max_steps=1,
        max_length=128, output_dir=str(tmp_path / "run"), progress=False, chat_template_kwargs=kwargs))
    end = TURN_END[name][0] if chat else PLAIN_ONLY[name]
    first = trainer.train_data.items[0]
    assert [first.completion_ids(k)[-1] for k in range(2)] == [end, end]
    if name == "qwen3":  # chat_template_kwargs reached the training data: no think block in the completion
        assert t.decode(first.completion_ids(0)) == "0.<|im_end|>"
    record = trainer.step()
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the first step
    assert math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0


def test_chat_template_kwargs_reach_rollouts_logprobs_and_generate(tok, tmp_path):
    """Qwen3 with enable_thinking=false: the rollout's prompt ids, `alignkit logprobs` and `alignkit generate`
    render the prompt as training does (ending with the empty think block), not with the default render."""
    from alignkit import cli
    from alignkit.generation import prompt_ids
    from alignkit.models.families import save_family
    from alignkit.rollout import sample_experience

    t = tok("qwen3")
    kwargs = {"enable_thinking": False}
    chat = [user("Name a colour.")]
    want = list(t.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False,
                                      enable_thinking=False))
    assert want[-4:] == [151667, 271, 151668, 271]  # <think>\n\n</think>\n\n
    assert prompt_ids(t, chat, "auto", kwargs) == want
    path = save_family("qwen3", tmp_path / "m")
    from alignkit.models.load import load_model

    model = load_model(str(path))
    exp = sample_experience(model, t, [chat], [{}], lambda p, c, r: [0.0] * len(c), k=1, seed=0, max_new_tokens=2,
                            chat_template_kwargs=kwargs)
    assert exp.data.items[0].prompt_ids == want
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": chat, "chosen": "Red.", "rejected": "Blue."}) + "\n")
    counts = {}
    for flags in ([], ["--chat-template-kwargs", "{enable_thinking: false}"]):
        out = tmp_path / f"lp-{len(flags)}.jsonl"
        assert cli.main(["logprobs", "--model", str(path), "--data", str(data), "--out", str(out), *flags]) == 0
        counts[len(flags)] = [json.loads(x)["n_tokens"] for x in out.read_text().splitlines()]
    # the template writes the empty think block into a final turn either way; without the flag the prompt does
    # not end with it, so it is part of the completion: 4 tokens more
    assert [a - b for a, b in zip(counts[0], counts[2])] == [4, 4]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": chat}) + "\n")
    out = tmp_path / "gen.jsonl"
    assert cli.main(["generate", "--model", str(path), "--prompts", str(prompts), "--out", str(out), "--k", "1",
                     "--max-new-tokens", "2", "--chat-template-kwargs", "{enable_thinking: false}"]) == 0
