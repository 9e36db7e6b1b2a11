"""Reward transforms (LSC, per-prompt z-score, combine) and ensemble aggregation on hand-made numbers."""

import math

import pytest
import torch

from alignkit.rewards import aggregate, combine, lsc, normalize_per_prompt

LOG2 = math.log(2.0)


def logsig(x: float) -> float:  # independent reference: log σ(x) = −log(1 + e^−x)
    return -math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------------- lsc
def test_lsc_values_against_closed_form():
    r = torch.tensor([-3.0, 0.0, 1.0, 2.0, 40.0], dtype=torch.float64)
    u = lsc(r, 1.0)
    expected = [logsig(-4.0), logsig(-1.0), -LOG2, logsig(1.0), logsig(39.0)]
    assert u.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(u[2]) == pytest.approx(-LOG2, abs=1e-15)  # r = r_ref → −log 2
    assert abs(float(u[4])) < 1e-16  # r ≫ r_ref → 0 (e^−39 ≈ 1.2e-17)


def test_lsc_is_negative_and_strictly_monotone():
    r = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    u = lsc(r, 0.5)
    assert (u < 0).all()
    assert (u.diff() > 0).all()
    # slope σ(−(r − r_ref)): ≈1 far below the reference (linear penalty), ≈0 far above (saturation)
    assert float(u[1] - u[0]) / 0.01 == pytest.approx(1.0, abs=1e-6)
    assert float(u[-1] - u[-2]) / 0.01 < 1e-8


def test_lsc_broadcasts_a_per_prompt_reference():
    r = torch.tensor([[1.0, 2.0], [0.0, 5.0]], dtype=torch.float64)  # [N=2 prompts, K=2 responses]
    u = lsc(r, torch.tensor([[1.0], [5.0]], dtype=torch.float64))
    assert u.flatten().tolist() == pytest.approx([-LOG2, logsig(1.0), logsig(-5.0), -LOG2], rel=1e-12)


# ----------------------------------------------------------------------------- normalize_per_prompt
def test_normalize_per_prompt_exact_zscores():
    r = torch.tensor([1.0, 10.0, 3.0, 5.0, 7.0, 20.0], dtype=torch.float64)
    groups = ["a", "b", "a", "single", "b", "b2"]
    # groups: a = {1, 3}, b = {10, 7}, and two single-response groups (→ 0)
    z = normalize_per_prompt(r, groups)
    # two-element group: population std = |x − y| / 2, so the z-scores are exactly ∓1
    assert z.tolist() == pytest.approx([-1.0, 1.0, 1.0, 0.0, -1.0, 0.0], abs=1e-12)


def test_normalize_per_prompt_mean_zero_std_one_per_group():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(30, generator=gen, dtype=torch.float64) * 5 + 3
    groups = torch.arange(30) % 4  # int ids work too
    z = normalize_per_prompt(r, groups)
    for g in range(4):
        zg = z[groups == g]
        assert float(zg.mean()) == pytest.approx(0.0, abs=1e-12)
        assert float(zg.std(unbiased=False)) == pytest.approx(1.0, abs=1e-12)
    # invariant to a per-group affine map with positive scale
    r2 = r * 3.0 + groups.double() * 100
    assert normalize_per_prompt(r2, groups).tolist() == pytest.approx(z.tolist(), abs=1e-10)


def test_normalize_per_prompt_constant_group_is_zero_and_errors():
    z = normalize_per_prompt([2.0, 2.0, 2.0], [0, 0, 0])
    assert z.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one id per response"):
        normalize_per_prompt([1.0, 2.0], [0])
    with pytest.raises(ValueError, match="1-D"):
        normalize_per_prompt(torch.zeros(2, 2), [0, 0])


# ---------------------------------------------------------------------------------------- combine
def test_combine_sum_is_weighted_sum():
    rewards = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    assert combine(rewards).tolist() == [3.0, 2.0]
    assert combine(rewards, weights=[0.5, 2.0]).tolist() == [4.5, -0.5]


def test_lsc_sum_is_a_soft_and_where_plain_sum_is_not():
    # A is good on both rewards (helpful 1, harmless 1); B is excellent on one (5) and bad on the other (−2).
    rewards = torch.tensor([[1.0, 1.0], [5.0, -2.0]], dtype=torch.float64)
    plain = combine(rewards, mode="sum")
    assert plain.tolist() == [2.0, 3.0]  # the plain sum prefers B: 3 > 2
    soft_and = combine(rewards, mode="lsc_sum", r_ref=[0.0, 0.0])
    # A: 2·logσ(1) = −0.6265; B: logσ(5) + logσ(−2) = −0.0067 − 2.1269 = −2.1336
    assert soft_and.tolist() == pytest.approx([2 * logsig(1.0), logsig(5.0) + logsig(-2.0)], rel=1e-12)
    assert soft_and[0] > soft_and[1]  # lsc_sum prefers A
    assert float(soft_and[0]) == pytest.approx(-0.62652, abs=1e-5)
    assert float(soft_and[1]) == pytest.approx(-2.13364, abs=1e-5)


def test_lsc_sum_per_prompt_reference_and_weights():
    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    r_ref = torch.tensor([[1.0, 2.0], [1.0, -1.0]], dtype=torch.float64)  # [N, n_rewards]
    out = combine(rewards, weights=[2.0, 1.0], mode="lsc_sum", r_ref=r_ref)
    assert out.tolist() == pytest.approx([-3 * LOG2, 2 * logsig(-1.0) + logsig(1.0)], rel=1e-12)


def test_combine_errors_name_the_argument():
    rewards = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="needs r_ref"):
        combine(rewards, mode="lsc_sum")
    with pytest.raises(ValueError, match="mode must be one of"):
        combine(rewards, mode="product")
    with pytest.raises(ValueError, match=r"weights must have shape \[2\]"):
        combine(rewards, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="does not broadcast"):
        combine(rewards, mode="lsc_sum", r_ref=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="2-D"):
        combine(torch.zeros(3))


# --------------------------------------------------------------------------------------- ensemble
SCORES = torch.tensor(
    [
        [1.0, 4.0, 0.0],  # member 0
        [3.0, 4.0, 2.0],  # member 1
        [2.0, 4.0, 10.0],  # member 2
    ],
    dtype=torch.float64,
)


def test_aggregate_hand_numbers():
    mean, std = aggregate(SCORES, "mean")
    assert mean.tolist() == pytest.approx([2.0, 4.0, 4.0])
    # population std: column 0 deviations (−1, 1, 0) → sqrt(2/3); column 2 (−4, −2, 6) → sqrt(56/3)
    assert std.tolist() == pytest.approx([math.sqrt(2 / 3), 0.0, math.sqrt(56 / 3)])
    lo, std_min = aggregate(SCORES, "min")
    assert lo.tolist() == [1.0, 4.0, 0.0]
    assert torch.equal(std_min, std)  # the uncertainty does not depend on the mode
    pess, _ = aggregate(SCORES, "mean_minus_std", lam=0.5)
    assert pess.tolist() == pytest.approx([2 - 0.5 * math.sqrt(2 / 3), 4.0, 4 - 0.5 * math.sqrt(56 / 3)])
    # the pessimistic aggregate reorders responses 1 and 2, which tie on the mean
    assert pess[1] > pess[2]


def test_aggregate_properties():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(5, 50, generator=gen, dtype=torch.float64)
    mean, _ = aggregate(s, "mean")
    lo, _ = aggregate(s, "min")
    assert (lo <= mean).all()
    prev = None
    for lam in (0.0, 0.5, 1.0, 2.0):
        cur, _ = aggregate(s, "mean_minus_std", lam=lam)
        if lam == 0.0:
            assert torch.equal(cur, mean)
        else:
            assert (cur <= prev).all()  # non-increasing in λ
        prev = cur


def test_aggregate_one_member_and_errors():
    score, std = aggregate([[1.0, 2.0]], "mean_minus_std")
    assert score.tolist() == [1.0, 2.0] and std.tolist() == [0.0, 0.0]  # unbiased=False: no NaN
    with pytest.raises(ValueError, match="mode must be one of"):
        aggregate(SCORES, "median")
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        aggregate(torch.zeros(3))
