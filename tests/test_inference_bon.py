"""Best-of-N family (`alignkit.inference.bon`) and the shared-prefill sampler (`alignkit.generation.prefill`).

Pure selection / KL functions are checked against hand-computed values; the sampler against
`alignkit.generation` (greedy, log-probs) and the model's own softmax (first-token frequencies); the
methods on the review world, whose gold reward is known. The gold reward is discrete, so where a test
needs a tie-free reward it adds ``1e-3 · u`` with ``u ~ U(0, 1)`` drawn fresh for every scored sample (a
randomized reward: (text, u) is continuous, so ties have probability 0; 1e-3 is below every gap between
distinct gold values, so the order of different gold rewards is unchanged).
"""

import math
import zlib

import numpy as np
import pytest
import torch

from alignkit.engine.score import score_logps
from alignkit.generation import generate
from alignkit.generation.prefill import next_token_probs, sample_shared
from alignkit.inference import InferenceSettings, run_method
from alignkit.inference.bon import (
    bon_index,
    bon_kl,
    bon_kl_bound,
    midrank_quantiles,
    selection_kl,
    softmax_weights,
)
from alignkit.worlds import reviews

PROMPTS = ["Hello world", "The movie was really very", "I think the plot is"]


def tie_free_reward(seed: int):
    rng = np.random.default_rng(seed)
    return lambda prompts, completions, rows: [reviews.reward(c) + 1e-3 * rng.random() for c in completions]


def gold(prompts, completions, rows):
    return [reviews.reward(c) for c in completions]


@pytest.fixture(scope="module")
def world(review_world):
    from alignkit.models.load import load_model, load_tokenizer

    return load_model(review_world), load_tokenizer(review_world)


# ---- pure functions, hand-computed values ----

def test_bon_kl_closed_forms():
    assert bon_kl_bound(1) == 0.0 and bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl([0.3, -1.0, 2.0]) == pytest.approx(math.log(3) - 2 / 3)  # distinct: exactly the bound
    assert bon_kl([0.5] * 5) == 0.0  # a constant reward: BoN is π
    # two atoms of mass 1/2, N = 4: BoN takes the top atom with prob 1 − (1/2)^4 = 15/16
    assert bon_kl([0, 1, 0, 1]) == pytest.approx(1 / 16 * math.log(1 / 8) + 15 / 16 * math.log(15 / 8))


def test_bon_kl_mixed_atom_and_continuous_matches_numeric_integral():
    # N = 3, rewards [0, 0, 1]: atom of mass 2/3 at 0 (q = (2/3)^3), the single 1 continuous on [2/3, 1]
    u = np.linspace(2 / 3, 1, 200001)
    h = 3 * u**2
    integral = float(np.sum((h * np.log(h))[1:] + (h * np.log(h))[:-1]) / 2 * (u[1] - u[0]))
    q = (2 / 3) ** 3
    assert bon_kl([0, 1, 0]) == pytest.approx(q * math.log(q / (2 / 3)) + integral, abs=1e-8)


def test_bon_kl_never_exceeds_the_bound():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 20))
        r = rng.integers(0, int(rng.integers(1, 6)), size=n)
        assert 0 <= bon_kl(r) <= bon_kl_bound(n) + 1e-12


def test_selection_functions():
    assert bon_index([1.0, 3.0, 3.0]) == 1
    np.testing.assert_allclose(softmax_weights([0.0, math.log(2)], 1.0), [1 / 3, 2 / 3])
    np.testing.assert_allclose(softmax_weights([0.2, -1.0, 0.9], 1e9), [1 / 3] * 3)
    np.testing.assert_array_equal(softmax_weights([0.2, -1.0, 0.9], 1e-9), [0, 0, 1])
    assert selection_kl([0.25] * 4) == 0.0
    assert selection_kl([0, 0, 1, 0]) == pytest.approx(bon_kl_bound(4))  # log 4 clipped to the bound
    h = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert selection_kl([1 / 3, 2 / 3]) == pytest.approx(math.log(2) - h)
    with pytest.raises(ValueError, match="temperature"):
        softmax_weights([1.0], 0.0)


def test_midrank_quantiles():
    np.testing.assert_allclose(midrank_quantiles([3, 1, 2, 2], [3, 1, 2, 2]), [0.875, 0.125, 0.5, 0.5])
    np.testing.assert_allclose(midrank_quantiles([0.5, 5, -1, 2], [1, 2, 3, 4]), [0, 1, 0, 0.375])


# ---- the shared-prefill sampler ----

def test_greedy_matches_generate_token_for_token(tiny):
    model, tok = tiny
    ref = generate(model, tok, PROMPTS, k=1, max_new_tokens=12, temperature=0)
    got = sample_shared(model, tok, PROMPTS, 3, max_new_tokens=12, temperature=0, batch_size=2)
    for b in range(len(PROMPTS)):
        assert got.generation.token_ids[b] == [ref.token_ids[b][0]] * 3
        assert got.generation.finished[b] == [ref.finished[b][0]] * 3


def _chi_square_ok(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    total = counts.sum()
    big = probs * total >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(probs[big], probs[~big].sum()) * total
    keep = exp > 0
    chi2 = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    df = int(keep.sum()) - 1
    return chi2, df + 5 * math.sqrt(2 * df)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_first_token_frequencies_match_the_model(world, temperature, top_p):
    model, tok = world
    prompt = "Review: The acting was"
    n = 4000
    got = sample_shared(model, tok, [prompt], n, max_new_tokens=1, temperature=temperature, top_p=top_p, seed=5)
    with torch.no_grad():
        logits = model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
    probs = next_token_probs(logits[None], temperature, top_p)[0].double().numpy()
    first = [ids[0] if ids else s for ids, s in zip(got.generation.token_ids[0], got.generation.stop_ids[0])]
    counts = np.bincount(first, minlength=len(probs)).astype(float)
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus
    chi2, limit = _chi_square_ok(counts, probs)
    assert chi2 < limit, (chi2, limit)


def test_sample_logps_match_score_logps_and_costs(world):
    model, tok = world
    prompts = reviews.prompts(4, seed=3)
    got = sample_shared(model, tok, prompts, 5, max_new_tokens=24, seed=1, batch_size=3)
    g = got.generation
    scored = score_logps(model, tok, prompts, g.texts, g.finished)
    assert torch.isfinite(got.logps).all()
    checked = 0
    for b, p in enumerate(prompts):
        for j, ids in enumerate(g.token_ids[b]):
            if tok(g.texts[b][j], add_special_tokens=False)["input_ids"] == ids:  # round-trips: same tokens
                assert float(got.logps[b, j]) == pytest.approx(float(scored[b, j]), abs=1e-4)
                checked += 1
        drawn = [len(ids) + f for ids, f in zip(g.token_ids[b], g.finished[b])]
        assert got.calls[b] == 1 + max(drawn) - 1
        assert got.tokens[b] == len(tok(p)["input_ids"]) + sum(d - 1 for d in drawn)
    assert checked >= 15


def test_sampler_is_seeded_and_leaves_global_rng_alone(world):
    model, tok = world
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    a = sample_shared(model, tok, PROMPTS[:2], 3, max_new_tokens=8, seed=4).generation.texts
    assert torch.equal(torch.rand(2), expected)
    assert a == sample_shared(model, tok, PROMPTS[:2], 3, max_new_tokens=8, seed=4).generation.texts
    assert a != sample_shared(model, tok, PROMPTS[:2], 3, max_new_tokens=8, seed=5).generation.texts


# ---- the methods on the review world ----

SETTINGS = InferenceSettings(max_new_tokens=24, seed=0, batch_size=150)


@pytest.mark.parametrize("n", [2, 4])
def test_bon_win_rate_over_a_single_sample_is_n_over_n_plus_1(world, n):
    model, tok = world
    prompts = reviews.prompts(300, seed=n)
    reward = tie_free_reward(n)
    outs = run_method("bon", model, tok, prompts, settings=SETTINGS, options={"n": n}, reward_fn=reward)
    singles = generate(model, tok, prompts, k=1, max_new_tokens=24, seed=99, batch_size=150).texts
    single_r = reward(prompts, [s[0] for s in singles], [{}] * len(prompts))
    wins = np.mean([o.reward > r for o, r in zip(outs, single_r)])
    se = math.sqrt(n / (n + 1) ** 2 / len(prompts))
    assert abs(wins - n / (n + 1)) < 3.5 * se, (wins, n / (n + 1))
    for o in outs:  # tie-free rewards: the estimate is the bound itself
        assert o.reward == max(o.rewards) and o.kl == pytest.approx(bon_kl_bound(n))
        assert len(o.candidates) == n and o.calls >= 1 + n and o.tokens > 0


def test_bon_kl_with_the_gold_reward_accounts_for_ties(world):
    model, tok = world
    outs = run_method("bon", model, tok, reviews.prompts(30, seed=7), settings=SETTINGS, options={"n": 8},
                      reward_fn=gold)
    assert all(o.kl == pytest.approx(bon_kl(o.rewards)) and o.kl <= bon_kl_bound(8) for o in outs)
    assert any(o.kl < bon_kl_bound(8) - 1e-6 for o in outs)  # the gold reward ties, so the bound is not reached


def test_soft_bon_limits(world):
    model, tok = world
    prompts = reviews.prompts(40, seed=8)
    reward = lambda p, c, r: [reviews.reward(x) + 1e-4 * (zlib.crc32(x.encode()) % 1000) / 1000 for x in c]  # noqa: E731
    bon = run_method("bon", model, tok, prompts, settings=SETTINGS, options={"n": 4}, reward_fn=reward)
    cold = run_method("soft_bon", model, tok, prompts, settings=SETTINGS, options={"n": 4, "tau": 1e-9},
                      reward_fn=reward)
    hot = run_method("soft_bon", model, tok, prompts, settings=SETTINGS, options={"n": 4, "tau": 1e9},
                     reward_fn=reward)
    assert [o.text for o in cold] == [o.text for o in bon]
    for o in hot:
        np.testing.assert_allclose(o.extra["probs"], [0.25] * 4, atol=1e-8)
        assert o.kl == pytest.approx(0.0, abs=1e-8) and o.text in o.candidates


def test_calibrated_quantiles_are_uniform_under_the_policy(world):
    model, tok = world
    m = 8
    outs = run_method("calibrated_bon", model, tok, reviews.prompts(150, seed=9), settings=SETTINGS,
                      options={"n": 2, "m": m}, reward_fn=tie_free_reward(9))
    q = np.array([x for o in outs for x in o.extra["quantiles"]])
    counts = np.bincount(np.rint(q * m).astype(int), minlength=m + 1).astype(float)
    assert np.allclose(q * m, np.rint(q * m))  # tie-free: q = k/M exactly
    chi2, limit = _chi_square_ok(counts, np.full(m + 1, 1 / (m + 1)))
    assert chi2 < limit and abs(q.mean() - 0.5) < 0.05, (counts, q.mean())


def test_calibrated_bon_at_infinite_tilt_is_bon(world):
    model, tok = world
    prompts = reviews.prompts(20, seed=10)
    bon = run_method("bon", model, tok, prompts, settings=SETTINGS, options={"n": 6}, reward_fn=gold)
    cal = run_method("calibrated_bon", model, tok, prompts, settings=SETTINGS, options={"n": 6, "t": "inf"},
                     reward_fn=gold)
    assert [o.text for o in cal] == [o.text for o in bon] and [o.kl for o in cal] == [o.kl for o in bon]


def test_rejection_stops_early_and_respects_the_budget(world):
    model, tok = world
    prompts = reviews.prompts(20, seed=11)
    easy = run_method("rejection", model, tok, prompts, settings=SETTINGS,
                      options={"threshold": -1.0, "budget": 16, "batch": 4}, reward_fn=gold)
    assert all(o.extra == {"accepted": True, "samples": 4} and o.text == o.candidates[0] and o.kl == 0
               for o in easy)
    never = run_method("rejection", model, tok, prompts, settings=SETTINGS,
                       options={"threshold": 2.0, "budget": 10, "batch": 4}, reward_fn=gold)
    for o in never:
        assert o.extra == {"accepted": False, "samples": 10} and o.reward == max(o.rewards)
        assert o.kl == pytest.approx(bon_kl(o.rewards))
    some = run_method("rejection", model, tok, prompts, settings=SETTINGS,
                      options={"threshold": 1.0, "budget": 5, "batch": 2}, reward_fn=gold)
    for o in some:
        first_hit = next((i for i, r in enumerate(o.rewards) if r >= 1.0), None)
        assert o.extra["accepted"] == (first_hit is not None) and len(o.rewards) == o.extra["samples"] <= 5
        if first_hit is not None:  # the first accepted sample, and no round after the one that found it
            assert o.reward >= 1.0 and o.text == o.candidates[first_hit]
            assert o.extra["samples"] == min(2 * (first_hit // 2 + 1), 5)
            assert o.kl == pytest.approx(math.log(len(o.rewards) / sum(r >= 1.0 for r in o.rewards)))
    assert {o.extra["accepted"] for o in some} == {True, False}


def test_bad_inputs_are_named(world):
    model, tok = world
    with pytest.raises(ValueError, match="needs a reward"):
        run_method("bon", model, tok, ["Review: The plot was"])
    with pytest.raises(ValueError, match="unknown key 'tua'"):
        run_method("soft_bon", model, tok, ["Review: The plot was"], options={"tua": 1.0}, reward_fn=gold)
    with pytest.raises(ValueError, match="option n must be >= 1"):
        run_method("bon", model, tok, ["Review: The plot was"], options={"n": 0}, reward_fn=gold)
    with pytest.raises(ValueError, match="scalar reward"):
        run_method("bon", model, tok, ["Review: The plot was"], options={"n": 2},
                   reward_fn=lambda p, c, r: [[1.0, 2.0]] * len(c))
