"""Reward-guided speculative decoding (``rsd`` / ``rps``, `alignkit.inference.speculative`).

Known answers: δ = −inf is the draft model and δ = +inf the target model, token for token against
`prefill.sample_shared` with the same seed; with one-token steps the output's first-token frequencies fit
the exact mixture ω(r(v))·P_m(v) + ν·P_M(v) (binary and smooth ω); greedy runs equal an independent
re-implementation with full (uncached) forwards, so the draft's rewound cache and the target's catch-up
passes are exact; the acceptance rate is the share of kept steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignkit import cli
from alignkit.generation import eos_ids, prompt_ids
from alignkit.generation.prefill import sample_shared
from alignkit.inference import InferenceSettings, run_method
from alignkit.inference.speculative import acceptance_weight
from alignkit.worlds import reviews

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = reviews.prompts(6, seed=3) + ["Review:"]


def gold(prompts, completions, rows):
    return [reviews.reward(c) for c in completions]


@pytest.fixture(scope="module")
def pair(review_world):
    """(draft = the pretrained review model, target = a copy moved by 0.1·N(0, 1), tokenizer)."""
    from alignkit.models.load import load_model, load_tokenizer

    draft, tok = load_model(review_world).eval(), load_tokenizer(review_world)
    target = copy.deepcopy(draft)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return draft, target, tok


def test_threshold_minus_inf_is_the_draft_and_plus_inf_the_target(pair):
    draft, target, tok = pair
    s = InferenceSettings(max_new_tokens=20, seed=4)
    for threshold, model in ((-math.inf, draft), (math.inf, target)):
        outs = run_method("rsd", target, tok, PROMPTS, settings=s, options={"threshold": threshold, "step": 3},
                          reward_fn=gold, helper=draft)
        ref = sample_shared(model, tok, PROMPTS, 1, max_new_tokens=20, seed=4, batch_size=1)
        assert [o.token_ids for o in outs] == [ids[0] for ids in ref.generation.token_ids]
        assert [o.finished for o in outs] == [f[0] for f in ref.generation.finished]
        for o, calls in zip(outs, ref.calls):
            assert o.extra["acceptance"] == (1.0 if threshold < 0 else 0.0)
            assert o.extra["steps"] == -(-(len(o.token_ids) + o.finished) // 3)  # ceil(drawn tokens / step)
            assert o.reward == reviews.reward(o.text) and o.kl is None
            if threshold > 0:  # the draft never runs: the target's own passes, no reward call counted
                assert o.calls == o.extra["target_calls"] == calls
            else:  # the target never runs: the draft's passes + one reward call per step
                assert o.calls == calls + o.extra["steps"] and o.extra["target_calls"] == 0
    with pytest.raises(ValueError, match="needs a helper"):
        run_method("rsd", target, tok, PROMPTS[:1], options={"threshold": 0.0}, reward_fn=gold)


def _first_token_probs(model, tok, prompt):
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt_ids(tok, prompt)])).logits[0, -1].float().softmax(-1)


@pytest.mark.parametrize("threshold, tau", [(0.5, 0.0), (0.0, 0.5)])
def test_one_token_steps_follow_the_rsd_mixture(pair, threshold, tau):
    """400 one-token outputs: counts of the 4 likeliest tokens under P_RSD and of the rest fit
    P_RSD(v) = ω(r(v))·P_m(v) + (1 − Σ_u ω(r(u))·P_m(u))·P_M(v) (chi-square, 4 d.o.f., 18.47 at p = 0.001)."""
    draft, target, tok = pair
    prompt, n = "Review: The plot was", 400
    outs = run_method("rsd", target, tok, [prompt] * n, settings=InferenceSettings(max_new_tokens=1, seed=2),
                      options={"threshold": threshold, "step": 1, "tau": tau}, reward_fn=gold, helper=draft)
    p_m, p_big = _first_token_probs(draft, tok, prompt), _first_token_probs(target, tok, prompt)
    eos = eos_ids(draft, tok)
    omega = torch.tensor([acceptance_weight(reviews.reward(tok.decode([v], skip_special_tokens=True)), threshold, tau)
                          for v in range(p_m.shape[0])])
    mix = omega * p_m + (1 - float((omega * p_m).sum())) * p_big
    assert 0.2 < float((omega * p_m).sum()) < 0.9  # both the draft and the target contribute
    top = mix.topk(4).indices.tolist()
    first = [o.token_ids[0] if o.token_ids else eos[0] for o in outs]
    observed = [sum(f == t for f in first) for t in top] + [sum(f not in top for f in first)]
    probs = [float(mix[t]) for t in top] + [1 - float(mix[top].sum())]
    chi2 = sum((o - n * q) ** 2 / (n * q) for o, q in zip(observed, probs))
    assert chi2 < 18.47, (observed, [n * q for q in probs])
    kept = sum(o.extra["acceptance"] for o in outs) / n  # the acceptance rate estimates Σ ω·P_m
    assert kept == pytest.approx(float((omega * p_m).sum()), abs=0.075)  # 3 sd at n = 400


def _reference(draft, target, tok, prompt, reward, threshold, step, delimiter, max_new):
    """Greedy RSD with full forwards of the whole sequence at every token (no cache)."""
    eos = eos_ids(draft, tok)
    ids, out, accepted, done = prompt_ids(tok, prompt), [], [], False

    def greedy_step(model):
        z = []
        while len(z) < min(step, max_new - len(out)):
            with torch.no_grad():
                t = int(model(input_ids=torch.tensor([ids + out + z])).logits[0, -1].argmax())
            if t in eos:
                return z, True
            z.append(t)
            if delimiter and delimiter in tok.decode(z, skip_special_tokens=True):
                break
        return z, False

    while not done and len(out) < max_new:
        z, stop = greedy_step(draft)
        keep = reward(tok.decode(out + z, skip_special_tokens=True)) >= threshold
        if not keep:
            z, stop = greedy_step(target)
        accepted.append(keep)
        out, done = out + z, stop
    return out, accepted


@pytest.mark.parametrize("step, delimiter", [(3, ""), (8, " the")])
def test_greedy_rsd_equals_an_uncached_reference(pair, step, delimiter):
    """Reward −gold with δ = −0.5: draft steps that turn positive are rejected and rewritten by the target."""
    draft, target, tok = pair
    s = InferenceSettings(max_new_tokens=24, temperature=0.0)
    neg = lambda p, c, r: [-reviews.reward(x) for x in c]  # noqa: E731
    outs = run_method("rps", target, tok, PROMPTS, settings=s, reward_fn=neg, helper=draft,
                      options={"threshold": -0.5, "step": step, "delimiter": delimiter})
    for o in outs:
        ids, accepted = _reference(draft, target, tok, o.prompt, lambda t: -reviews.reward(t), -0.5, step, delimiter, 24)
        assert (o.token_ids, o.extra["accepted"]) == (ids, accepted)
        assert o.extra["acceptance"] == sum(accepted) / len(accepted) and o.extra["steps"] == len(accepted)
    every = [a for o in outs for a in o.extra["accepted"]]
    assert any(every) and not all(every)  # both branches ran
    if delimiter:  # some step ended at the delimiter before 8 tokens
        assert any(" the" in tok.decode(o.token_ids) for o in outs)


def test_acceptance_weight():
    assert acceptance_weight(0.3, 0.3, 0.0) == 1.0 and acceptance_weight(0.29, 0.3, 0.0) == 0.0
    assert acceptance_weight(-1e9, -math.inf, 0.5) == 1.0 and acceptance_weight(1e9, math.inf, 0.5) == 0.0
    assert acceptance_weight(1.0, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_bad_options(pair):
    draft, target, tok = pair
    for options, match in (({"step": 0}, "step >= 1"), ({"tau": -1.0}, "tau >= 0"),
                           ({"threshold": math.nan}, "threshold")):
        with pytest.raises(ValueError, match=match):
            run_method("rsd", target, tok, PROMPTS[:1], options=options, reward_fn=gold, helper=draft)


def test_cli_rps_alias_writes_rows_and_the_acceptance_rate(review_world, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(reviews.prompts(4, seed=21)) + "\n")
    out = tmp_path / "rsd.jsonl"
    assert cli.main(["generate", "--model", review_world, "--helper", review_world, "--prompts", str(prompts),
                     "--method", "rps", "--set", "threshold=0.5", "step=4", "--reward", "alignkit.worlds.reviews:reward",
                     "--max-new-tokens", "16", "--out", str(out)]) == 0
    import json

    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 4 and all(r["acceptance"] == sum(r["accepted"]) / r["steps"] for r in rows)
    rate = sum(r["acceptance"] for r in rows) / 4
    captured = capsys.readouterr()
    assert f"acceptance {rate:.3f}" in captured.out + captured.err
