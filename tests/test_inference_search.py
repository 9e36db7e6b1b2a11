"""DeAL-style search (``search``, `alignkit.inference.search`).

Known answers: with a constant heuristic (no reward, or a reward that ignores the text, with or without
lookahead) the returned sequence is exactly transformers' beam search, ``generate(num_beams=K,
do_sample=False, length_penalty=..., early_stopping=True)``; ``extra["logp"]`` is the returned path's
log-probability from an independent forward pass. On the review world with the gold reward search's mean
reward is ≥ greedy's (both 1.0 on 8 prompts: the pretrained model's greedy reviews are already positive),
and steered by the negated gold reward search reaches mean −gold ≥ 0.75 where greedy has −1.0.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from alignkit.generation import eos_ids, generate, prompt_ids
from alignkit.inference import InferenceSettings, run_method
from alignkit.worlds import reviews

PROMPTS = ["Review: The plot was", "Review: The music felt really", "Review: The cast"]


@pytest.fixture(scope="module")
def world(review_world):
    from alignkit.models.load import load_model, load_tokenizer

    return load_model(review_world), load_tokenizer(review_world)


def hf_beam(model, tok, prompt, beams, length_penalty, max_new_tokens):
    ids = torch.tensor([prompt_ids(tok, prompt)])
    eos = eos_ids(model, tok)
    cfg = GenerationConfig(num_beams=beams, do_sample=False, length_penalty=length_penalty, early_stopping=True,
                           max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                           bos_token_id=None)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[0, ids.shape[1]:]
    out = out.tolist()
    end = next((i for i, t in enumerate(out) if t in eos), len(out))
    return out[:end], end < len(out)


@pytest.mark.parametrize("beams,length_penalty,max_new_tokens,guided", [
    (2, 1.0, 12, False), (3, 0.0, 8, True), (4, 2.0, 16, True)])
def test_search_with_a_constant_heuristic_is_transformers_beam_search(world, beams, length_penalty,
                                                                      max_new_tokens, guided):
    model, tok = world
    const = (lambda p, c, r: [0.5] * len(c)) if guided else None  # noqa: E731
    outs = run_method("search", model, tok, PROMPTS, settings=InferenceSettings(max_new_tokens=max_new_tokens),
                      options={"beams": beams, "length_penalty": length_penalty, "lookahead": 2 if guided else 0},
                      reward_fn=const)
    finished = 0
    for prompt, o in zip(PROMPTS, outs):
        ids, ended = hf_beam(model, tok, prompt, beams, length_penalty, max_new_tokens)
        assert o.token_ids == ids and o.finished == ended, prompt
        finished += ended
    assert finished > 0  # the stop-token branch of the search was exercised


def test_search_logp_is_the_returned_paths_log_probability(world):
    model, tok = world
    (o,) = run_method("search", model, tok, PROMPTS[:1], settings=InferenceSettings(max_new_tokens=16),
                      options={"beams": 3})
    ids = prompt_ids(tok, PROMPTS[0])
    seq = o.token_ids + ([eos_ids(model, tok)[0]] if o.finished else [])
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([ids + seq])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
    assert o.extra["logp"] == pytest.approx(float(lp.gather(-1, torch.tensor(seq)[:, None]).sum()), abs=1e-4)
    assert o.kl is None and o.reward is None


def test_search_reward_is_at_least_greedys_on_the_review_world(world):
    """8 held-out prompts, 24 tokens, 4 beams, lookahead 2. Gold: greedy 1.0, search 1.0 (≥). Negated gold
    (steer to negative reviews): greedy −1.0, search ≥ 0.75 (measured 1.0)."""
    model, tok = world
    prompts = reviews.prompts(8, seed=1)
    s = InferenceSettings(max_new_tokens=24)
    greedy = [reviews.reward(t[0]) for t in generate(model, tok, prompts, temperature=0, max_new_tokens=24).texts]
    for sign in (1.0, -1.0):
        fn = lambda p, c, r, sign=sign: [sign * reviews.reward(x) for x in c]  # noqa: E731
        outs = run_method("search", model, tok, prompts, settings=s, options={"beams": 4, "lookahead": 2},
                          reward_fn=fn)
        assert all(o.reward == sign * reviews.reward(o.text) for o in outs)
        mean_search, mean_greedy = sum(o.reward for o in outs) / 8, sum(sign * g for g in greedy) / 8
        assert mean_search >= mean_greedy, (sign, mean_search, mean_greedy)
        if sign < 0:
            assert mean_greedy == -1.0 and mean_search >= 0.75, mean_search


def test_search_rejects_bad_options(world):
    model, tok = world
    with pytest.raises(ValueError, match="beams >= 1"):
        run_method("search", model, tok, ["hi"], options={"beams": 0})
    with pytest.raises(ValueError, match="finite w"):
        run_method("search", model, tok, ["hi"], options={"w": float("nan")})


def test_one_beam_without_lookahead_is_args_greedy(world):
    """K = 1, lookahead 0: each step ranks π's top-k tokens v by ``s(y) + log π(v | y) + w·r(y ⊕ v)`` with s(y)
    shared, i.e. by ARGS's ``log π(v | y) + w·r(y ⊕ v)`` — the independent ``args`` implementation, token for token."""
    model, tok = world
    prompts = reviews.prompts(6, seed=2)
    fn = lambda p, c, r: [-reviews.reward(x) for x in c]  # noqa: E731  (steer away from π's positive reviews)
    s = InferenceSettings(max_new_tokens=20)
    ours = run_method("search", model, tok, prompts, settings=s, options={"beams": 1, "topk": 5, "w": 2.0},
                      reward_fn=fn)
    ref = run_method("args", model, tok, prompts, settings=s, options={"topk": 5, "w": 2.0, "greedy": True},
                     reward_fn=fn)
    assert [o.token_ids for o in ours] == [o.token_ids for o in ref]
    assert [o.finished for o in ours] == [o.finished for o in ref]
    assert any(o.reward > 0 for o in ours)  # the heuristic changed the outputs: π's greedy reviews score −1


def test_reporting_reward_is_not_counted_in_the_cost(world):
    """With w = 0 the reward only reports the returned text's score (as in genarm / nudging): the search and
    its cost are exactly those of the unguided run."""
    model, tok = world
    s = InferenceSettings(max_new_tokens=10)
    plain = run_method("search", model, tok, PROMPTS, settings=s, options={"beams": 2})
    scored = run_method("search", model, tok, PROMPTS, settings=s, options={"beams": 2, "w": 0.0},
                        reward_fn=lambda p, c, r: [reviews.reward(x) for x in c])
    for a, b in zip(plain, scored):
        assert a.token_ids == b.token_ids and a.reward is None and b.reward == reviews.reward(b.text)
        assert (a.calls, a.tokens) == (b.calls, b.tokens)
