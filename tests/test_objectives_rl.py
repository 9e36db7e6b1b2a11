"""Online-RL helpers (METHODS.md section 6): per-token KL estimators against the exact KL of small
categorical distributions, advantage estimators, whitening, GAE and PPO token rewards against values
computed by hand. Float64."""

import math

import pytest
import torch
from closed_forms import D

from alignkit.algorithms.recipe import RECIPES
from alignkit.objectives.rl import (
    gae,
    grpo_advantages,
    kl_estimate,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)

NAN = math.nan
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=D)  # the policy πθ
Q = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=D)  # the reference π_ref


def T(x):
    return torch.tensor(x, dtype=D)


def B(x):
    return torch.tensor(x, dtype=torch.bool)


def kl(p, q) -> float:
    return float((p * (p / q).log()).sum())


# ---------------------------------------------------------------- KL estimators
def test_kl_estimators_by_hand_and_k3_exact_near_zero():
    # log u = ref − logp = −1: k1 = 1, k2 = ½, k3 = e^−1 − 1 + 1 = e^−1
    lp, ref = T([-1.0]), T([-2.0])
    assert kl_estimate(lp, ref, "k1").item() == 1.0
    assert kl_estimate(lp, ref, "k2").item() == 0.5
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(math.exp(-1), rel=1e-15)
    # |log u| = 1e-9: k3 = x²/2 + x³/6 + ... = 5e-19 to 1e-9 relative (naive exp(x) − 1 − x: ~1e-16)
    x = 1e-9
    k3 = kl_estimate(T([0.0]), T([x]), "k3").item()
    assert k3 == pytest.approx(x * x / 2 + x**3 / 6, rel=1e-8)
    with pytest.raises(ValueError, match="kl must be one of"):
        kl_estimate(lp, ref, "k4")


def test_k3_is_non_negative():
    gen = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(10_000, generator=gen, dtype=D) * 5, torch.randn(10_000, generator=gen, dtype=D) * 5
    assert (kl_estimate(lp, ref, "k3") >= 0).all()
    assert (kl_estimate(lp, ref, "k2") >= 0).all()
    assert kl_estimate(T([-3.0]), T([-3.0]), "k3").item() == 0.0


@pytest.mark.parametrize(("p", "q"), [(P, Q), (Q, P)])
def test_k1_and_k3_monte_carlo_means_match_exact_kl(p, q):
    gen = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True, generator=gen)  # tokens sampled from πθ
    exact = kl(p, q)
    for kind in ("k1", "k3"):
        k = kl_estimate(p.log()[y], q.log()[y], kind)
        se = float(k.std() / math.sqrt(k.numel()))
        assert abs(float(k.mean()) - exact) < 4 * se, (kind, float(k.mean()), exact, se)
        assert se < 0.02 * exact  # the check is tight
        # and the exact expectations under πθ
        assert float((p * kl_estimate(p.log(), q.log(), kind)).sum()) == pytest.approx(exact, rel=1e-12)
    # k2 is biased: its exact expectation differs from the KL by far more than rounding
    assert abs(float((p * kl_estimate(p.log(), q.log(), "k2")).sum()) - exact) > 1e-3


def test_kl_estimator_gradients_in_expectation():
    """Samples held fixed, E_πθ[∇k]: k1 → 0, k2 → ∇KL(πθ ‖ π_ref), k3 → ∇KL(π_ref ‖ πθ) (exact sums)."""
    theta = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=D, requires_grad=True)
    logq = Q.log()

    def expected_grad(kind):
        logp = torch.log_softmax(theta, 0)
        (g,) = torch.autograd.grad((logp.exp().detach() * kl_estimate(logp, logq, kind)).sum(), theta)
        return g

    def grad_of(f):
        (g,) = torch.autograd.grad(f(torch.log_softmax(theta, 0)), theta)
        return g

    reverse = grad_of(lambda logp: (logp.exp() * (logp - logq)).sum())
    forward = grad_of(lambda logp: (logq.exp() * (logq - logp)).sum())
    torch.testing.assert_close(expected_grad("k1"), torch.zeros(5, dtype=D), atol=1e-15, rtol=0)
    torch.testing.assert_close(expected_grad("k2"), reverse, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(expected_grad("k3"), forward, atol=1e-14, rtol=1e-12)
    assert (reverse - forward).abs().max() > 0.03  # genuinely different gradients away from π_ref


# ---------------------------------------------------------------- advantages
R = [[1.0, 2.0, 3.0, NAN], [5.0, 5.0, NAN, NAN], [7.0, NAN, NAN, NAN]]
V = [[True, True, True, False], [True, True, False, False], [True, False, False, False]]


def test_grpo_advantages_by_hand():
    # group 0: mean 2, unbiased std 1; group 1: all equal; group 2: a single sample -> 0
    a = grpo_advantages(T(R), B(V), eps=1e-6)
    e = 1 / (1 + 1e-6)
    torch.testing.assert_close(a, T([[-e, 0, e, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), rtol=1e-15, atol=0)
    torch.testing.assert_close(
        grpo_advantages(T(R), B(V), scale="none"), T([[-1.0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    )
    # 4 samples [0, 0, 0, 1]: mean 1/4, unbiased std sqrt((3/16 + 9/16)/3) = 1/2
    a = grpo_advantages(T([[0.0, 0.0, 0.0, 1.0]]), eps=1e-6)
    torch.testing.assert_close(a, T([[-0.25, -0.25, -0.25, 0.75]]) / (0.5 + 1e-6), rtol=1e-15, atol=0)


def test_rloo_remax_advantages_by_hand():
    # [1, 2, 3]: 1 − (2+3)/2, 2 − (1+3)/2, 3 − (1+2)/2
    torch.testing.assert_close(
        rloo_advantages(T(R), B(V)), T([[-1.5, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    )
    a = remax_advantages(
        T(R), T([2.5, 6.0, NAN]), B([[True] * 3 + [False], [True, True, False, False], [False] * 4])
    )
    torch.testing.assert_close(a, T([[-1.5, -0.5, 0.5, 0.0], [-1.0, -1.0, 0.0, 0.0], [0.0] * 4]))


def test_group_advantages_sum_to_zero_on_ragged_groups():
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(6, 5, generator=gen, dtype=D) * 3
    valid = torch.rand(6, 5, generator=gen) < 0.7
    valid[:, :2] = True
    r = torch.where(valid, r, NAN)
    for fn in (rloo_advantages, lambda r, v: grpo_advantages(r, v, scale="none"), grpo_advantages):
        a = fn(r, valid)
        assert torch.isfinite(a).all() and (a[~valid] == 0).all()
        torch.testing.assert_close(a.sum(1), torch.zeros(6, dtype=D), atol=1e-13, rtol=0)
    # RLOO = n/(n−1)·(r − mean) and GRPO(none) = r − mean
    n = valid.sum(1, keepdim=True).to(D)
    mean = torch.where(valid, r, 0).sum(1, keepdim=True) / n
    torch.testing.assert_close(rloo_advantages(r, valid), torch.where(valid, n / (n - 1) * (r - mean), 0.0))


def test_reinforce_pp_normalises_over_the_batch_not_the_group():
    r = T([[1.0, 2.0, 3.0], [4.0, 6.0, NAN], [10.0, NAN, NAN]])
    v = B([[True] * 3, [True, True, False], [True, False, False]])
    # group-centred: [−1, 0, 1], [−1, 1], and the single sample keeps its reward 10
    a1 = [-1.0, 0.0, 1.0, -1.0, 1.0, 10.0]
    mean = sum(a1) / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in a1) / 5)
    e = [(x - mean) / (std + 1e-6) for x in a1]
    expect = T([[e[0], e[1], e[2]], [e[3], e[4], 0.0], [e[5], 0.0, 0.0]])
    torch.testing.assert_close(reinforce_pp_advantages(r, v), expect, rtol=1e-14, atol=1e-15)
    # scaling one group's rewards changes every group's advantages (global std), unlike GRPO
    r2 = r.clone()
    r2[0] *= 3
    assert not torch.allclose(reinforce_pp_advantages(r2, v)[1], reinforce_pp_advantages(r, v)[1])
    torch.testing.assert_close(grpo_advantages(r2, v)[1], grpo_advantages(r, v)[1])
    # K = 1 everywhere: plain REINFORCE++, the batch-whitened reward
    col = T([[1.0], [2.0], [6.0]])
    torch.testing.assert_close(reinforce_pp_advantages(col), (col - 3.0) / (math.sqrt(7.0) + 1e-6))


def test_advantage_table_and_validation():
    pg = {n for n, r in RECIPES.items() if r.family == "policy_gradient"}  # each declares its estimator
    assert pg == {"grpo", "dr_grpo", "rloo", "remax", "reinforce_pp"}
    assert [n for n in pg if RECIPES[n].greedy_baseline] == ["remax"]
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(T([[1.0, 2.0]]), scale="mean")
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        rloo_advantages(T([1.0, 2.0]))
    with pytest.raises(ValueError, match="valid must"):
        rloo_advantages(T([[1.0, 2.0]]), B([True, True]))
    with pytest.raises(ValueError, match="greedy_reward"):
        remax_advantages(T([[1.0, 2.0]]), T([1.0, 2.0]))
    with pytest.raises(ValueError, match="eps"):
        reinforce_pp_advantages(T([[1.0, 2.0]]), eps=0.0)


# ---------------------------------------------------------------- whitening, GAE, token rewards
def test_whiten_by_hand():
    x, m = T([[1.0, 2.0], [3.0, NAN]]), B([[True, True], [True, False]])
    s = 1 / math.sqrt(1 + 1e-8)  # mean 2, unbiased variance 1
    torch.testing.assert_close(whiten(x, m), T([[-s, 0.0], [s, 0.0]]), rtol=1e-15, atol=0)
    torch.testing.assert_close(
        whiten(x, m, shift_mean=False), T([[2 - s, 2.0], [2 + s, 0.0]]), rtol=1e-15, atol=0
    )
    y = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=D) * 4 + 3
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[:, 5:] = False
    w = whiten(y, mask)[mask]
    assert abs(float(w.mean())) < 1e-14 and float(w.std()) == pytest.approx(1.0, rel=1e-7)


def test_gae_with_gamma_lambda_one_is_monte_carlo_return_minus_value():
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 6, generator=gen, dtype=D), torch.randn(4, 6, generator=gen, dtype=D)
    lengths = torch.tensor([6, 3, 1, 0])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    r, v = torch.where(mask, r, NAN), torch.where(mask, v, NAN)  # padding may hold anything
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    r0 = torch.where(mask, r, 0.0)
    mc = r0.flip(-1).cumsum(-1).flip(-1)  # return from t to the end
    torch.testing.assert_close(adv, torch.where(mask, mc - v, 0.0), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ret, torch.where(mask, mc, 0.0), rtol=1e-13, atol=1e-14)


def test_gae_by_hand_with_padding_and_an_interior_gap():
    # γ = 0.9, λ = 0.8, r = [0, 0, 1], V = [0.5, 0.6, 0.7]:
    # δ2 = 1 − 0.7 = 0.3; δ1 = 0.9·0.7 − 0.6 = 0.03; δ0 = 0.9·0.6 − 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.72·0.3 = 0.246; A0 = 0.04 + 0.72·0.246 = 0.21712
    expect_a, expect_r = [0.21712, 0.246, 0.3], [0.71712, 0.846, 1.0]
    r = T([[0.0, 0.0, 1.0, NAN], [0.0, NAN, 0.0, 1.0]])
    v = T([[0.5, 0.6, 0.7, NAN], [0.5, NAN, 0.6, 0.7]])
    mask = B([[True, True, True, False], [True, False, True, True]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        adv, T([expect_a + [0.0], [expect_a[0], 0.0] + expect_a[1:]]), rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        ret, T([expect_r + [0.0], [expect_r[0], 0.0] + expect_r[1:]]), rtol=1e-14, atol=0
    )
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(r, v, mask, gamma=1.5)
    with pytest.raises(ValueError, match="one shape"):
        gae(r, v[:, :3], mask)


def test_token_rewards_put_the_score_on_the_last_valid_token():
    score = T([2.0, 3.0, NAN])
    kl_t = T([[0.1, 0.2, 0.3, NAN], [0.5, NAN, NAN, NAN], [NAN] * 4])
    mask = B([[True, True, True, False], [True, False, False, False], [False] * 4])
    r = token_rewards(score, kl_t, mask, beta=0.5)
    torch.testing.assert_close(r, T([[-0.05, -0.1, -0.15 + 2.0, 0.0], [-0.25 + 3.0, 0, 0, 0], [0.0] * 4]))
    with pytest.raises(ValueError, match="beta"):
        token_rewards(score, kl_t, mask, beta=-1.0)
    with pytest.raises(ValueError, match="score"):
        token_rewards(score[:2], kl_t, mask, beta=0.1)
