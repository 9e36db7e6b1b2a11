"""The FlexAttention path (`alignkit.executor.flex`): the shared-prompt block mask as a block-sparse `BlockMask`,
exact against the dense mask it replaces and, through whole models, against the naive forward (every family of
the model matrix: tests/test_model_matrix.py asserts `flex_errors`); `auto` picks it on CUDA only."""

import logging
import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from alignkit.data.collate import collate_shared_prompt
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine import flex
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import LogProbModel, decoder_mask
from alignkit.model_matrix import _slot_order, naive_token_logps, random_records
from alignkit.models import attention
from alignkit.models.families import build_family_model
from alignkit.models.load import attention_implementation


def random_items(seed: int, n: int = 6, vocab: int = 50) -> list[TokenizedRecord]:
    """``n`` records with 1-40 prompt tokens and 1-4 responses of 1-60 tokens (some scored from a later token)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = rng.randint(1, 4)
        segs = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 60))] for _ in range(k)]
        items.append(TokenizedRecord([rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))], segs,
                                     [rng.randint(0, len(s) - 1) for s in segs], index=i))
    return items


@pytest.mark.parametrize("seed", range(12))
def test_the_runs_give_back_every_collated_mask(seed):
    """Prompt + own segment per query describes every shared-prompt row collate builds: several records per
    row, K = 1-4, padding at the end of the rows."""
    batch = collate_shared_prompt(random_items(seed), 0, max_row_tokens=random.Random(seed).choice([64, 200, 400]))
    L = batch.input_ids.shape[1]
    start, prefix_end, own_start = flex.runs_of(batch.attention_mask)
    idx = torch.arange(L)
    rebuilt = flex.allowed(idx[:, None], idx[None, :], start[..., None], prefix_end[..., None], own_start[..., None])
    assert torch.equal(rebuilt[:, None], batch.attention_mask)


@pytest.mark.parametrize("window", [None, 3, 8])
def test_block_mask_is_the_additive_mask_it_replaces(window):
    batch = collate_shared_prompt(random_items(1, n=8), 0, max_row_tokens=300)
    R, L = batch.input_ids.shape
    sparse = flex.block_mask(batch, window)
    dense = create_mask(sparse.mask_mod, R, 1, L, L, device="cpu")
    assert torch.equal(dense, batch.additive_mask(torch.float32, window) == 0)
    assert flex.block_mask(batch, window) is sparse  # built once per batch (policy and reference passes)


def test_tiles_no_query_sees_are_skipped():
    """A 100-token prompt and four 300-token responses: the kernel visits exactly the 128 x 128 tiles where some
    query sees some key, skips the mask function on the tiles where every query sees every key, and — as a
    response never sees another — visits fewer tiles than a causal mask would."""
    rng = random.Random(0)
    item = TokenizedRecord([rng.randrange(3, 50) for _ in range(100)],
                           [[rng.randrange(3, 50) for _ in range(300)] for _ in range(4)], [0] * 4, index=0)
    batch = collate_shared_prompt([item], 0, 2048)
    sparse = flex.block_mask(batch)
    L = batch.input_ids.shape[1]
    n = -(-L // 128)
    m = torch.nn.functional.pad(batch.attention_mask[0, 0], (0, n * 128 - L, 0, n * 128 - L))
    tiles = m.view(n, 128, n, 128).permute(0, 2, 1, 3).reshape(n, n, -1)
    assert int(sparse.kv_num_blocks.sum() + sparse.full_kv_num_blocks.sum()) == int(tiles.any(-1).sum())
    assert int(sparse.full_kv_num_blocks.sum()) == int(tiles.all(-1).sum())
    assert int(tiles.any(-1).sum()) < n * (n + 1) // 2 - n  # causal: n (n + 1) / 2


def test_a_mask_of_another_shape_goes_dense(caplog):
    """A row whose queries see three runs of keys (here: the third response also sees the end of the first) is
    not described by the runs: flex attention gets the dense additive mask, and the log says so."""
    item = TokenizedRecord(list(range(3, 13)), [list(range(20, 25)), list(range(30, 36)), list(range(40, 44))],
                           [0, 0, 0], index=0)
    batch = collate_shared_prompt([item], 0)
    batch.attention_mask[0, 0, 10 + 5 + 6:, 12:15] = True
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        assert flex.block_mask(batch) is None
        masks = flex.flex_masks(batch, {"full_attention": None}, torch.float32)
    assert masks["full_attention"] is batch.additive_mask(torch.float32)
    assert any("not block-sparse" in m for m in caplog.messages)


@pytest.mark.parametrize("name", ["qwen2", "gemma2"])
def test_layer_types_get_a_block_mask_each(name):
    """Gemma-2 mixes windowed and global layers: a BlockMask per layer type; Qwen2 (one kind): one BlockMask."""
    from torch.nn.attention.flex_attention import BlockMask

    model = build_family_model(name, vocab_size=100, attn_implementation="flex")
    mask = decoder_mask(collate_shared_prompt(random_items(3, vocab=100), 0), model.config, torch.float32)
    if name == "gemma2":
        assert set(mask) == {"sliding_attention", "full_attention"}
        assert all(isinstance(m, BlockMask) for m in mask.values())
    else:
        assert isinstance(mask, BlockMask)


def test_flex_gradients_on_cpu_equal_the_naive_ones():
    """`flex_attention` refuses a CPU backward; alignkit differentiates torch's unfused computation instead:
    the gradient of every query/key/value equals a plain softmax attention's with the same mask and soft-cap."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 40, 8, generator=g, requires_grad=True) for h in (4, 2, 2))
    batch = collate_shared_prompt([TokenizedRecord(list(range(3, 13)), [list(range(20, 35)), list(range(40, 55))],
                                                   [0, 0], index=0)] * 2, 0, 40)
    bm = flex.block_mask(batch)
    mask = batch.attention_mask

    def softcap(score, b, h, qi, kv):
        return 20 * torch.tanh(score / 20)

    ours = attention.unfused_with_grad(q, k, v, score_mod=softcap, block_mask=bm)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = 20 * torch.tanh(q @ kk.transpose(-1, -2) / 8**0.5 / 20)
    theirs = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vv
    w = torch.randn(theirs.shape, generator=g)
    assert torch.allclose(ours, theirs, atol=1e-6)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), (q, k, v)), torch.autograd.grad((theirs * w).sum(), (q, k, v))):
        assert torch.allclose(a, b, atol=1e-5)


def test_bf16_flex_is_close_to_fp32_naive():
    """bf16 weights through the unfused flex path: within the start-up check's bf16 tolerance of fp32 naive."""
    items = random_records(1000)
    with torch.no_grad():
        naive = naive_token_logps(build_family_model("llama", vocab_size=1000), items)
        model = build_family_model("llama", vocab_size=1000, attn_implementation="flex", dtype=torch.bfloat16)
        batch = collate_shared_prompt(items, 0)
        ours = LogProbModel(model)(batch)[_slot_order(batch)]
    assert float((ours - naive).abs().max()) < 0.1


def test_auto_picks_flex_on_cuda_only(monkeypatch):
    from transformers import Gemma2Config, GPT2Config, LlamaConfig

    assert attention_implementation(LlamaConfig(), "auto") == "sdpa"  # CPU: no block-sparse kernel to gain
    assert attention_implementation(Gemma2Config(), "auto") == "eager"
    assert attention_implementation(LlamaConfig(), "flex") == "flex_attention"
    assert attention_implementation(LlamaConfig(), "sdpa") == "sdpa"
    with pytest.raises(ConfigError, match="GPT2LMHeadModel does not support FlexAttention"):
        attention_implementation(GPT2Config(), "flex_attention")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "flex_available", lambda gpu=False: True)  # as with triton installed
    assert attention_implementation(LlamaConfig(), "auto") == "flex_attention"
    assert attention_implementation(Gemma2Config(), "auto") == "flex_attention"  # soft-capping as a score_mod
    assert attention_implementation(GPT2Config(), "auto") == "sdpa"  # no flex support in transformers
    assert attention_implementation(LlamaConfig(), "sdpa") == "sdpa"
    monkeypatch.setattr(attention, "flex_available", lambda gpu=False: not gpu)  # torch without triton
    assert attention_implementation(LlamaConfig(), "auto") == "sdpa"


def test_scoring_a_saved_model_with_flex_matches_sdpa(tmp_path, caplog):
    """`alignkit logprobs`' loop on a model loaded with attn_implementation=flex: the start-up check keeps
    shared-prompt rows and every log-prob equals the SDPA model's."""
    from alignkit.data.schema import PreferenceRecord
    from alignkit.engine.score import iter_logprobs
    from alignkit.models.families import save_family
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.models.tiny import build_tokenizer

    path = save_family("mistral", tmp_path / "model", tokenizer=build_tokenizer())
    tok = load_tokenizer(str(path))
    prompt = "The film opens on a quiet harbour town where an old keeper tells the story of a storm"
    records = [PreferenceRecord(prompt=prompt, responses=[" It was good.", " It was slow and long.", " Fine."],
                                ranks=[0, 1, 2]),
               PreferenceRecord(prompt=prompt[:30], responses=[" A storm.", " The keeper."], ranks=[1, 0])]
    got = {}
    for attn in ("flex", "sdpa"):
        model = load_model(str(path), attn_implementation=attn)
        with caplog.at_level(logging.INFO, logger="alignkit"):
            got[attn] = [r["logp"] for r in iter_logprobs(model, tok, records, progress=False)]
    assert not [m for m in caplog.messages if "does not reproduce" in m]
    assert got["flex"] == pytest.approx(got["sdpa"], abs=1e-5)
