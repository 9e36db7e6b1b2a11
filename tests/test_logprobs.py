"""The executor equals a naive per-sequence forward, never builds [B, L, V] logits, and keeps gradients."""

import pytest
import torch

from alignkit.data.collate import collate
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig, tokenize_records
from alignkit.errors import ModelError
from alignkit.executor.logprobs import LogProbModel, build_stats

PROMPTS = ["The movie was", "Answer: ", "I watched the film and", "Q: what is two plus two"]
RESPONSES = [" great fun!", "yes", " it was boring and dull and the ending was awful", " four", " so", "ie"]


def make_records(k_values, chat=False):
    recs = []
    for i, k in enumerate(k_values):
        prompt = PROMPTS[i % len(PROMPTS)]
        if chat:
            prompt = [{"role": "user", "content": prompt}]
        resps = [RESPONSES[(i + j) % len(RESPONSES)] for j in range(k)]
        recs.append(PreferenceRecord(prompt=prompt, responses=resps, ranks=list(range(k))))
    return recs


def naive_logps(model, items):
    """model(input_ids).logits.log_softmax(-1) gathered, one sequence at a time."""
    out = []
    for tr in items:
        row = []
        for k in range(tr.k):
            ids = torch.tensor([tr.full_ids(k)])
            lp = model(ids).logits.double().log_softmax(-1)[0]
            start = len(tr.prompt_ids) + tr.score_start[k]
            row.append(sum(lp[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))
        out.append(row)
    return out


@pytest.mark.parametrize("layout", ["shared_prompt", "padded"])
@pytest.mark.parametrize("k_values,chat", [([1, 1, 1], False), ([2, 2, 2, 2], False), ([4, 2, 1, 3], False),
                                           ([2, 4, 1], True)])
def test_executor_equals_naive_forward(tiny, layout, k_values, chat):
    model, tok = tiny
    recs = make_records(k_values, chat)
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id, layout=layout, max_row_tokens=64)
    with torch.no_grad():
        stats = build_stats(batch, LogProbModel(model, chunk_size=5)(batch))
        ref = naive_logps(model, items)
    K = max(k_values)
    assert stats.logps.shape == (len(recs), K)
    for b, tr in enumerate(items):
        for k in range(K):
            if k < tr.k:
                assert stats.valid[b, k]
                assert stats.lengths[b, k] == len(tr.completion_ids(k))
                assert abs(stats.logps[b, k].item() - ref[b][k].item()) < 1e-5
            else:
                assert not stats.valid[b, k] and stats.logps[b, k] == 0


def test_shared_prompt_rows_are_packed(tiny):
    model, tok = tiny
    recs = make_records([2, 2, 2, 2])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    packed = collate(items, recs, tok.pad_token_id, layout="shared_prompt", max_row_tokens=4096)
    padded = collate(items, recs, tok.pad_token_id, layout="padded")
    assert packed.input_ids.shape[0] == 1  # all four records in one row
    # The prompt is encoded once per record, not once per response.
    assert packed.num_tokens == sum(len(t.prompt_ids) + sum(map(len, t.segments)) for t in items)
    assert padded.num_tokens == packed.num_tokens + sum(len(t.prompt_ids) for t in items)


def test_no_full_vocabulary_logits_and_gradients_match(tiny_path):
    from alignkit.models.load import load_model, load_tokenizer

    model, tok = load_model(tiny_path), load_tokenizer(tiny_path)
    recs = make_records([2, 3, 1])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id)
    rows_seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape))
    chunk = 4
    stats = build_stats(batch, LogProbModel(model, chunk_size=chunk)(batch))
    stats.logps.sum().backward()
    hook.remove()
    n_scored = int(batch.lengths.sum())
    # Only completion positions reach the head, at most `chunk` rows at a time (forward + recompute).
    assert all(len(s) == 2 and s[0] <= chunk for s in rows_seen)
    assert sum(s[0] for s in rows_seen) == 2 * n_scored
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = sum(x for row in naive_logps(model, items) for x in row)
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_llama_without_template_and_token_logps(tiny_llama_path):
    from alignkit.models.load import load_model, load_tokenizer

    model, tok = load_model(tiny_llama_path), load_tokenizer(tiny_llama_path)
    recs = make_records([2, 1])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id)
    with torch.no_grad():
        tl = LogProbModel(model)(batch)
        stats = build_stats(batch, tl, ref_token_logps=tl, with_token_logps=True)
        ref = naive_logps(model, items)
    assert abs(stats.logps[0, 1].item() - ref[0][1].item()) < 1e-5
    torch.testing.assert_close(stats.token_logps.sum(-1), stats.logps)
    assert stats.token_mask.sum() == stats.lengths.sum()
    torch.testing.assert_close(stats.ref_logps, stats.logps)


def test_bf16_close_to_fp32(tiny_path):
    from alignkit.models.load import load_model, load_tokenizer

    tok = load_tokenizer(tiny_path)
    recs = make_records([2, 2])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id)
    with torch.no_grad():
        lp32 = build_stats(batch, LogProbModel(load_model(tiny_path, dtype="float32"))(batch)).logps
        lp16 = build_stats(batch, LogProbModel(load_model(tiny_path, dtype="bfloat16"))(batch)).logps
    assert lp16.dtype == torch.float32  # softmax in fp32 even for bf16 weights
    torch.testing.assert_close(lp16, lp32, rtol=3e-2, atol=0.3)


def test_a_first_completion_token_without_context_is_a_clear_error(tiny):
    from alignkit.data.tokenize import TokenizedRecord

    _, tok = tiny
    rec = PreferenceRecord(prompt="a", responses=["b", "c"], ranks=[0, 1])
    items = [TokenizedRecord(prompt_ids=[], segments=[[5, 6], [7]], score_start=[0, 1], index=3)]
    for layout in ("shared_prompt", "padded"):
        with pytest.raises(ValueError, match="record 3: the prompt tokenizes into the first completion token"):
            collate(items, [rec], tok.pad_token_id, layout=layout)


def test_logit_scaling_families_match_their_forward(tiny_path):
    """Granite divides logits by `logits_scaling`; the executor reproduces the model's own forward."""
    from transformers import GraniteConfig, GraniteForCausalLM

    from alignkit.executor.logprobs import verify_against_forward
    from alignkit.models.load import load_tokenizer

    tok = load_tokenizer(tiny_path)
    torch.manual_seed(0)
    model = GraniteForCausalLM(GraniteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                             logits_scaling=8.0, attn_implementation="sdpa")).eval()
    recs = make_records([2, 3])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id)
    with torch.no_grad():
        got = build_stats(batch, LogProbModel(model)(batch)).logps
        ref = naive_logps(model, items)
    for b, tr in enumerate(items):
        for k in range(tr.k):
            assert abs(got[b, k].item() - ref[b][k].item()) < 1e-5
    assert verify_against_forward(model, batch, rtol=1e-5) < 1e-4


def test_verify_catches_a_forward_the_executor_does_not_reproduce(tiny):
    from alignkit.executor.logprobs import verify_against_forward

    model, tok = tiny
    recs = make_records([2])
    items, _ = tokenize_records(recs, tok, TokenizeConfig())
    batch = collate(items, recs, tok.pad_token_id)
    assert verify_against_forward(model, batch, rtol=1e-5) < 1e-4
    model.config.logit_scale = 2.0  # Qwen2's forward ignores it; the executor would apply it
    try:
        with pytest.raises(ModelError, match="disagrees with this model's own forward"):
            verify_against_forward(model, batch, rtol=1e-4)
    finally:
        del model.config.logit_scale


def test_auto_layout_packs_short_completions_and_pads_long_ones():
    from alignkit.data.collate import choose_layout, layout_cost
    from alignkit.data.tokenize import TokenizedRecord

    w = 2.0 / (2 * 256 + 2 * 128 + 3 * 688)  # attention_cost_weight of the bench model (H 256, kv 128, I 688)

    def batch(prompt, completion):
        return [TokenizedRecord(list(range(prompt)), [list(range(completion))] * 2, [0, 0], i) for i in range(8)]

    short, long = batch(125, 60), batch(125, 1024)
    # Hand-computed: one record of 245 tokens per row (8 rows) vs 16 padded rows of 185 tokens.
    assert layout_cost(short, "shared_prompt", 256, w) == pytest.approx(8 * 245 + w * 8 * 245**2)
    assert layout_cost(short, "padded", 256, w) == pytest.approx(16 * 185 + w * 16 * 185**2)
    assert choose_layout(short, 256, w) == "shared_prompt"
    # 2173-token packed rows attend over both responses densely: padded rows of 1149 are cheaper.
    assert choose_layout(long, 256, w) == "padded"
    assert choose_layout(long, 256, 0.0) == "shared_prompt"  # without attention cost, packing always wins


def test_attention_cost_weight_from_config(tiny):
    from alignkit.executor.logprobs import attention_cost_weight

    model, _ = tiny  # hidden 64, 4 heads, 2 kv heads (head_dim 16), intermediate 256
    assert attention_cost_weight(model) == pytest.approx(2.0 / (2 * 64 + 2 * 32 + 3 * 256))


def test_auto_chunk_size_is_a_logit_budget_per_device():
    from alignkit.executor.logprobs import CHUNK_ELEMENTS, CHUNK_ELEMENTS_GPU, auto_chunk_size

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert auto_chunk_size(8192, cpu) == CHUNK_ELEMENTS // 8192 == 1024
    assert auto_chunk_size(151_936, cpu) == 55 and auto_chunk_size(151_936, gpu) == 441
    assert auto_chunk_size(10**9, gpu) == 16  # never fewer than 16 rows
    assert CHUNK_ELEMENTS_GPU // CHUNK_ELEMENTS == 8


def test_cudnn_attention_is_switched_off_on_cuda_only():
    from alignkit.executor.logprobs import configure_attention_kernels

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert configure_attention_kernels(torch.device("cpu"), cudnn=False) is False
        assert torch.backends.cuda.cudnn_sdp_enabled()  # CPU: untouched
        assert configure_attention_kernels(torch.device("cuda", 0), cudnn=False) is False
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert configure_attention_kernels(torch.device("cuda", 0), cudnn=True) is True
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
