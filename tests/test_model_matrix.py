"""The model-family matrix (`alignkit.model_matrix`, the same checks `scripts/model_matrix.py` writes to
docs/models.md): every family's tiny random model, with its real tokenizer where the vendored tokenizers are
here, through the executor (both layouts, prompts three times longer than the sliding window; under SDPA / eager
and under FlexAttention), gradients, the sampler, one DPO / Bradley-Terry / GRPO step, best-of-N and LoRA's
target search."""

import logging
import math

import pytest
import torch

from alignkit.model_matrix import check_family, train_once, write_data
from alignkit.models.families import FAMILIES, TEST_WINDOW, save_family

MOE = ("mixtral", "qwen3_moe", "deepseek_v3")
# Gemma's 262k-token vocabulary makes each trainer run write ~160 MB (checkpoint, optimizer, final model and
# tokenizer): their trainer runs are in the slow suite, their executor and sampler checks here
HEAVY = ("gemma2", "gemma3")


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_torch_thread):
    return tmp_path_factory.mktemp("matrix")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family(name, root):
    r = check_family(name, root, trainer_runs=name not in HEAVY, lora_run=name in MOE)
    check(name, r)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_heavy_vocabulary_family_trains(name, root):
    check(name, check_family(name, root, lora_run=False))


def check(name, r):
    # log-probs of every response equal the model's own forward on it alone (fp32), in both layouts
    assert r.errors["shared_prompt"] < 1e-5 and r.errors["padded"] < 1e-5, r.errors
    assert r.errors["grad"] < 1e-5, r.errors
    # the same under FlexAttention (block-sparse shared-prompt mask) vs the naive forward under SDPA / eager;
    # GPT-2 is the family transformers gives no flex attention
    if name == "gpt2":
        assert r.flex == "GPT2LMHeadModel does not support FlexAttention in this transformers"
    else:
        assert r.flex["shared_prompt"] < 1e-5 and r.flex["padded"] < 1e-5 and r.flex["grad"] < 1e-5, r.flex
    # the sampler's own log-probs (KV cache, left padding, sliding windows) are the executor's
    assert r.errors["generate"] < 1e-4, r.errors
    # step 1: policy = reference, so DPO's loss is ln 2; GRPO's equal-length samples have advantages summing to
    # zero per prompt and a ratio of 1, so its loss is 0; both with a non-zero gradient
    for run in [run for run in ("dpo", "lora") if run in r.runs]:
        assert r.runs[run]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert r.runs[run]["grad_norm"] > 0 and r.runs[run]["layout"] == "auto"
    if r.runs:
        assert abs(r.runs["grpo"]["loss"]) < 1e-6 and r.runs["grpo"]["grad_norm"] > 0
        assert math.isfinite(r.runs["bt"]["loss"]) and r.runs["bt"]["grad_norm"] > 0
    assert r.bon
    assert r.lora_modules and "lm_head" not in r.lora_modules
    if name in MOE:  # fused experts adapted through target_parameters; routers left alone
        assert r.lora_parameters == ["down_proj", "gate_up_proj"] and "gate" not in r.lora_modules
    if FAMILIES[name].options.get("sliding_window"):
        assert TEST_WINDOW in r.windows.values()


def test_a_family_the_block_mask_misreads_falls_back_to_padded_rows(root, monkeypatch, caplog):
    """Simulate a family whose attention the block mask does not express (here: the window left out of the
    mask): the start-up check finds shared-prompt rows wrong, trains on padded rows and says so once."""
    import alignkit.executor.logprobs as lp

    path = save_family("mistral", root / "fallback" / "model")
    data, prompts = write_data(root / "fallback" / "data")
    monkeypatch.setattr(lp, "attention_windows", lambda config: {"full_attention": None})
    with caplog.at_level(logging.INFO, logger="alignkit"):
        run = train_once(path, data, prompts, root / "fallback" / "dpo", "dpo")
    assert run["layout"] == "padded" and run["loss"] == pytest.approx(math.log(2), abs=1e-6)
    warnings = [m for m in caplog.messages if "does not reproduce" in m]
    assert len(warnings) == 1 and "MistralForCausalLM" in warnings[0] and "padded rows" in warnings[0]


def test_packing_shared_prompt_asked_for_is_refused_when_it_misreads(root, monkeypatch):
    import alignkit.executor.logprobs as lp
    from alignkit.errors import ModelError

    path = save_family("mistral", root / "forced" / "model")
    data, prompts = write_data(root / "forced" / "data")
    monkeypatch.setattr(lp, "attention_windows", lambda config: {"full_attention": None})
    with pytest.raises(ModelError, match="disagrees with this model's own forward"):
        train_once(path, data, prompts, root / "forced" / "dpo", "dpo", packing="shared_prompt")


def test_without_the_window_the_mask_would_be_wrong(root):
    """The test models' window binds: dropping it from the mask changes the log-probs (so the matrix's zero
    errors are the window at work, not a window too long to matter)."""
    import alignkit.executor.logprobs as lp
    from alignkit.model_matrix import logprob_errors
    from alignkit.models.families import build_family_model

    model = build_family_model("mistral", vocab_size=1000)
    right = logprob_errors(model)["shared_prompt"]
    original = lp.attention_windows
    lp.attention_windows = lambda config: {"full_attention": None}
    try:
        wrong = logprob_errors(model)["shared_prompt"]
    finally:
        lp.attention_windows = original
    assert right < 1e-5 < 1e-2 < wrong


def test_reward_is_read_where_transformers_reads_it_when_pad_is_eos(root):
    """A tokenizer without a pad token (as Llama-3's), so alignkit pads with EOS; transformers' sequence-classification
    forward then reads the token before a trailing EOS. alignkit reads the same token, in both layouts, so a
    trained reward model scores the same in plain transformers."""
    from alignkit.data.collate import collate
    from alignkit.data.schema import PreferenceRecord
    from alignkit.data.tokenize import TokenizeConfig, tokenize_records
    from alignkit.executor.reward_model import RewardScorer, load_reward_model
    from alignkit.models.load import load_tokenizer
    from alignkit.models.tiny import build_tokenizer

    no_pad = build_tokenizer(chat_template=False)  # like Llama-3's: no pad token of its own
    no_pad.pad_token = None
    path = save_family("llama", root / "rm" / "model", tokenizer=no_pad)
    tok = load_tokenizer(str(path))
    assert tok.pad_token_id == tok.eos_token_id
    model = load_reward_model(str(path), 1, pad_token_id=tok.pad_token_id).eval()
    recs = [PreferenceRecord(prompt="The film was", responses=[" long and slow.", " good."], ranks=[0, 1]),
            PreferenceRecord(prompt="In short, the plot", responses=[" works.", " is a mess of ideas."], ranks=[1, 0])]
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    assert all(tr.segments[k][-1] == tok.eos_token_id for tr in items for k in range(2))
    seqs = [tr.full_ids(k) for tr in items for k in range(2)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=mask).logits.view(2, 2)
        for layout in ("shared_prompt", "padded"):
            ours, _ = RewardScorer(model)(collate(items, recs, tok.pad_token_id, layout))
            assert torch.allclose(ours.squeeze(-1), theirs, atol=1e-5), layout


def test_dropout_is_off_in_the_trained_model_unless_asked(root):
    """GPT-2 ships with dropout 0.1: left on, the policy's log-probs at step 0 differ from the reference's, so
    DPO starts away from ln 2 (the matrix's GPT-2 row caught it). TRL disables it too."""
    from alignkit.models.families import build_family_model
    from alignkit.models.load import disable_dropout

    model = build_family_model("gpt2", vocab_size=1000).train()
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert disable_dropout(model) == 1 + 2 * 3  # the embeddings', then attention, residual and MLP per layer
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert model.config.resid_pdrop == 0.1  # the saved config keeps the model's own setting
