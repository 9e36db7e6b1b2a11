"""Blockwise controlled decoding (``cd``, `alignkit.inference.blockwise`).

Known answers: B = 1 is plain ancestral sampling — the same tokens, cost and seed behaviour as
`prefill.sample_shared` (n = 1, one prompt at a time), first-token frequencies matching the model's
softmax; the log-ratio value equals an independent full-forward computation; with the gold reward of the
review world, B = 4 raises the mean reward well above B = 1 (measured: 0.03 -> 0.75 on 16 prompts).
"""

from __future__ import annotations

import copy

import pytest
import torch

from alignkit.generation import eos_ids, prompt_ids
from alignkit.generation.prefill import sample_shared
from alignkit.inference import InferenceSettings, run_method
from alignkit.inference.bon import bon_kl_bound
from alignkit.worlds import reviews


def gold(prompts, completions, rows):
    return [reviews.reward(c) for c in completions]


def chars(prompts, completions, rows):  # any reward: B = 1 ignores it
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def world(review_world):
    from alignkit.models.load import load_model, load_tokenizer

    return load_model(review_world), load_tokenizer(review_world)


def test_cd_with_one_candidate_is_plain_sampling(tiny):
    model, tok = tiny
    prompts = ["hello world", "the movie was", "I think"]
    s = InferenceSettings(max_new_tokens=10, seed=5)
    outs = run_method("cd", model, tok, prompts, settings=s, options={"b": 1, "block": 3}, reward_fn=chars)
    ref = sample_shared(model, tok, prompts, 1, max_new_tokens=10, seed=5, batch_size=1)
    assert [o.token_ids for o in outs] == [ids[0] for ids in ref.generation.token_ids]
    assert [o.finished for o in outs] == [f[0] for f in ref.generation.finished]
    for o, calls, tokens in zip(outs, ref.calls, ref.tokens):
        assert o.kl == 0.0  # one candidate per block: no selection, no KL
        assert o.tokens == tokens
        assert o.calls == calls + o.extra["blocks"]  # + one reward call per block
        assert o.extra["blocks"] == -(-(len(o.token_ids) + o.finished) // 3)  # ceil(drawn tokens / L)


def test_cd_with_one_candidate_draws_first_tokens_from_the_softmax(world):
    """400 one-token draws: the counts of the 3 likeliest tokens and of the rest fit the model's softmax
    (chi-square, 3 degrees of freedom, critical value 16.27 at p = 0.001)."""
    model, tok = world
    prompt, n = "Review: The plot was", 400
    outs = run_method("cd", model, tok, [prompt] * n, settings=InferenceSettings(max_new_tokens=1, seed=1),
                      options={"b": 1, "block": 1}, reward_fn=chars)
    with torch.no_grad():
        x = torch.tensor([prompt_ids(tok, prompt)])
        p = model(input_ids=x).logits[0, -1].float().softmax(-1)
    top = p.topk(3).indices.tolist()
    eos = eos_ids(model, tok)
    first = [o.token_ids[0] if o.token_ids else eos[0] for o in outs]
    observed = [sum(f == t for f in first) for t in top] + [sum(f not in top for f in first)]
    probs = [float(p[t]) for t in top] + [1 - float(p[top].sum())]
    chi2 = sum((o - n * q) ** 2 / (n * q) for o, q in zip(observed, probs))
    assert chi2 < 16.27, (observed, [n * q for q in probs])


def test_cd_logratio_value_is_the_helpers_log_ratio(world):
    model, tok = world
    helper = copy.deepcopy(model)
    with torch.no_grad():
        for prm in helper.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(0)))
    prompt = "Review: The acting was"
    (o,) = run_method("cd", model, tok, [prompt], settings=InferenceSettings(max_new_tokens=12, seed=2),
                      options={"b": 3, "block": 4, "value": "logratio"}, helper=helper)

    def logp(m):  # full forward over prompt + sampled ids (+ stop token), no cache
        ids = prompt_ids(tok, prompt)
        seq = o.token_ids + ([eos_ids(model, tok)[0]] if o.finished else [])
        with torch.no_grad():
            lp = m(input_ids=torch.tensor([ids + seq])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
        return float(lp.gather(-1, torch.tensor(seq)[:, None]).sum())

    assert o.reward == pytest.approx(logp(helper) - logp(model), abs=1e-3)
    assert 0 < o.kl <= o.extra["blocks"] * bon_kl_bound(3) + 1e-9


def test_cd_with_four_candidates_raises_the_gold_reward(world):
    """16 held-out review prompts, 24 tokens, blocks of 4: B = 1 gets mean gold 0.03, B = 4 gets 0.75."""
    model, tok = world
    prompts = reviews.prompts(16, seed=1)
    s = InferenceSettings(max_new_tokens=24, seed=0)
    mean = {}
    for b in (1, 4):
        outs = run_method("cd", model, tok, prompts, settings=s, options={"b": b, "block": 4}, reward_fn=gold)
        assert all(o.reward == reviews.reward(o.text) for o in outs)
        mean[b] = sum(o.reward for o in outs) / len(outs)
        # each block's KL is at most that of best-of-B; B = 1 has none
        assert all(0 <= o.kl <= o.extra["blocks"] * bon_kl_bound(b) + 1e-9 for o in outs)
    assert mean[4] > mean[1] + 0.4, mean


def test_cd_rejects_bad_options(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="value=reward needs a reward"):
        run_method("cd", model, tok, ["hi"], options={"b": 2})
    with pytest.raises(ValueError, match="value=logratio needs a helper"):
        run_method("cd", model, tok, ["hi"], options={"value": "logratio"})
    with pytest.raises(ValueError, match="value must be one of"):
        run_method("cd", model, tok, ["hi"], options={"value": "q"}, reward_fn=chars)
    with pytest.raises(ValueError, match="b >= 1"):
        run_method("cd", model, tok, ["hi"], options={"b": 0}, reward_fn=chars)


def test_transfer_q_rollouts_are_each_prefixs_greedy_generate_and_leave_the_cache_alone(tiny):
    """`greedy_rollout` from a block's KV cache = each prefix's own greedy `generate`, cut at its budget; the
    block's cache and logits are untouched (the chosen block continues from them)."""
    from alignkit.generation import eos_and_pad
    from alignkit.inference.blockwise import PrefixLM, greedy_rollout

    model, tok = tiny
    eos, pad = eos_and_pad(model, tok)
    ids = prompt_ids(tok, "the movie was")
    prefixes = [[11, 12], [40, 41], [7, 8]]
    lm = PrefixLM(model, ids)
    lm.expand(3)
    with torch.no_grad():
        lm.feed(torch.tensor(prefixes), 6)
    logits, length = lm.logits.clone(), lm.length
    budgets = [5, 3, 0]
    with torch.no_grad():
        tails, calls, tokens = greedy_rollout(lm, budgets, eos, pad)
    for p, n, w in zip(prefixes, budgets, tails):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids + p]), attention_mask=torch.ones(1, len(ids) + 2,
                                 dtype=torch.long), max_new_tokens=max(n, 1), do_sample=False, eos_token_id=eos,
                                 pad_token_id=pad)[0, len(ids) + 2:].tolist()
        expected = out[:next((i for i, t in enumerate(out) if t in eos), len(out))][:n]
        assert w == expected
    assert 1 <= calls <= 5 and tokens > 0  # one batched step per token (the last token needs no step)
    assert lm.length == length and torch.equal(lm.logits, logits)
    with torch.no_grad():  # the cache still continues the block
        after = lm.feed(torch.tensor([[5], [5], [5]]), 3)[:, -1]
        fresh = model(input_ids=torch.tensor([ids + prefixes[0] + [5]])).logits[0, -1]
    torch.testing.assert_close(after[0], fresh.float(), atol=1e-4, rtol=1e-4)


def test_transfer_q_with_one_block_is_value_reward_and_scores_whole_completions(world):
    model, tok = world
    prompts = reviews.prompts(3, seed=4)
    s = InferenceSettings(max_new_tokens=8, seed=3)
    whole = run_method("cd", model, tok, prompts, settings=s, options={"b": 3, "block": 8, "value": "rollout"},
                       reward_fn=gold)
    plain = run_method("cd", model, tok, prompts, settings=s, options={"b": 3, "block": 8}, reward_fn=gold)
    assert [o.token_ids for o in whole] == [o.token_ids for o in plain]  # nothing left to roll out
    assert [o.reward for o in whole] == [o.reward for o in plain]
    blocks = run_method("cd", model, tok, prompts, settings=InferenceSettings(max_new_tokens=16, seed=3),
                        options={"b": 3, "block": 4, "value": "rollout"}, reward_fn=gold)
    assert all(o.reward == reviews.reward(o.text) for o in blocks)  # the last block's value: the final text's reward


def test_transfer_q_raises_the_gold_reward_with_the_base_as_baseline(world):
    """16 held-out prompts, 24 tokens, blocks of 4, B = 4, π's greedy rollouts as the value: mean gold well above
    plain sampling (B = 1)."""
    model, tok = world
    prompts = reviews.prompts(16, seed=1)
    s = InferenceSettings(max_new_tokens=24, seed=0)
    mean = {}
    for b in (1, 4):
        outs = run_method("cd", model, tok, prompts, settings=s, options={"b": b, "block": 4, "value": "rollout"},
                          reward_fn=gold)
        mean[b] = sum(o.reward for o in outs) / len(outs)
    assert mean[4] > mean[1] + 0.4, mean
