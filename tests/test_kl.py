"""Sampled KL estimators (METHODS.md section 6) against the exact KL of small categorical distributions."""

import math

import pytest
import torch

from alignkit.eval.kl import kl_estimates, kl_k1, kl_k2, kl_k3, mean_ci

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)  # the policy π
Q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)  # the reference π_ref


def exact_kl(p, q) -> float:
    return float((p * (p / q).log()).sum())


@pytest.mark.parametrize(("p", "q"), [(P, Q), (Q, P), (P, P.flip(0))])
def test_k1_and_k3_match_exact_kl_within_sampling_error(p, q):
    gen = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True, generator=gen)  # y ~ π
    policy_logps, ref_logps = p.log()[y], q.log()[y]
    est = kl_estimates(policy_logps, ref_logps)
    kl = exact_kl(p, q)
    assert est["n"] == 200_000
    for name in ("k1", "k3"):
        # the 95% CI half-width is 1.96 standard errors: 2 half-widths is ~4 standard errors
        assert abs(est[name] - kl) < 2 * est[f"{name}_ci"], (name, est[name], kl)
        assert est[f"{name}_ci"] < 0.1 * kl  # and the check is tight
    # the exact expectations of the estimators under p: k1 and k3 unbiased
    logr = (p / q).log()
    assert float((p * kl_k1(logr)).sum()) == pytest.approx(kl, abs=1e-12)
    assert float((p * kl_k3(logr)).sum()) == pytest.approx(kl, abs=1e-12)


def test_k3_is_non_negative_and_zero_only_at_zero():
    logr = torch.linspace(-30, 30, 10_001, dtype=torch.float64)
    k3 = kl_k3(logr)
    assert (k3 >= 0).all()
    assert float(kl_k3(torch.tensor([0.0]))) == 0.0
    assert float(kl_k3(torch.tensor([1e-8], dtype=torch.float64))) == pytest.approx(0.5e-16, rel=1e-6)  # ~ logr²/2
    assert float(kl_k3(torch.tensor([2.0]))) == pytest.approx(math.exp(-2) - 1 + 2, rel=1e-6)
    assert torch.equal(kl_k1(logr), logr)
    assert torch.allclose(kl_k2(logr), 0.5 * logr**2)


def test_mean_ci_normal_approximation():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    # std (ddof=1) = sqrt(5/3) = 1.290994; z_0.975 = 1.959964; half-width = z * std / sqrt(4)
    assert mean == 2.5
    assert half == pytest.approx(1.959964 * 1.290994 / 2, rel=1e-6)
    _, half90 = mean_ci([1.0, 2.0, 3.0, 4.0], level=0.9)
    assert half90 == pytest.approx(1.644854 * 1.290994 / 2, rel=1e-6)
    assert mean_ci([3.0, float("nan"), 5.0])[0] == 4.0  # NaN (missing slots) dropped
    m, h = mean_ci([7.0])
    assert m == 7.0 and math.isnan(h)
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=1.5)


def test_kl_estimates_takes_batches_of_summed_logps():
    policy = torch.tensor([[-1.0, -2.0], [-3.0, float("nan")]])
    ref = torch.tensor([[-1.5, -1.0], [-3.0, float("nan")]])
    est = kl_estimates(policy, ref)
    assert est["n"] == 3
    assert est["k1"] == pytest.approx((0.5 - 1.0 + 0.0) / 3)
    assert est["k3"] == pytest.approx(((math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0) + 0.0) / 3)
