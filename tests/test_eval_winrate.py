"""Win rates (`alignkit.eval.winrate`): Wilson and bootstrap intervals, length control, subsets."""

import math

import pytest
import torch

from alignkit.eval.rm_report import wilson_interval
from alignkit.eval.winrate import bootstrap_ci, length_controlled, outcomes, win_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest


def test_wilson_interval_of_7_out_of_10_is_the_textbook_value():
    # Wilson (1927) score interval, z = 1.96: p̂ = 0.7, n = 10 → (0.3968, 0.8922) (e.g. Agresti & Coull 1998)
    wr = win_rate([1.0] * 7 + [0.0] * 3)
    assert wr["win_rate"] == 0.7 and (wr["wins"], wr["ties"], wr["losses"]) == (7, 0, 3)
    assert wr["wilson"] == pytest.approx([0.3968, 0.8922], abs=5e-5)


def test_ties_count_half():
    assert outcomes([1.0, 0.5, 0.2], [0.0, 0.5, 0.9]) == [1.0, 0.5, 0.0]
    wr = win_rate([1.0, 0.5, 0.5, 0.0])
    assert wr["win_rate"] == 0.5 and wr["ties"] == 2 and wr["soft"] == 0
    with pytest.raises(ValueError, match="outcomes must be"):
        win_rate([1.3])


def test_soft_outcomes_count_as_their_probability():
    # a judge's P(A wins): 0.9 + 0.6 + 0.5 + 0.2 = 2.2 over 4 comparisons
    wr = win_rate([0.9, 0.6, 0.5, 0.2], n_boot=200)
    assert wr["win_rate"] == pytest.approx(0.55)
    assert (wr["wins"], wr["ties"], wr["losses"], wr["soft"]) == (2, 1, 1, 3)
    assert wr["wilson"] == pytest.approx(list(wilson_interval(2.2, 4)))
    assert "soft outcomes: conservative" in wr["ci_methods"]["wilson"]
    assert 0.2 <= wr["bootstrap"][0] <= 0.55 <= wr["bootstrap"][1] <= 0.9


def test_bootstrap_is_seeded_and_matches_the_normal_interval():
    gen = torch.Generator().manual_seed(1)
    y = (torch.rand(400, generator=gen) < 0.6).double()
    a = bootstrap_ci(y, n_boot=2000, seed=3)
    assert a == bootstrap_ci(y, n_boot=2000, seed=3)
    p = float(y.mean())
    half = 1.96 * math.sqrt(p * (1 - p) / 400)  # the bootstrap percentile interval ≈ the normal one here
    assert a[0] == pytest.approx(p - half, abs=0.01) and a[1] == pytest.approx(p + half, abs=0.01)


def test_cluster_bootstrap_widens_for_duplicated_samples():
    # 50 prompts, each with 4 identical outcomes: really 50 observations, not 200
    gen = torch.Generator().manual_seed(0)
    per_prompt = (torch.rand(50, generator=gen) < 0.5).double()
    y = per_prompt.repeat_interleave(4)
    groups = [i // 4 for i in range(200)]
    iid = bootstrap_ci(y, n_boot=2000, seed=0)
    clustered = bootstrap_ci(y, groups, n_boot=2000, seed=0)
    ratio = (clustered[1] - clustered[0]) / (iid[1] - iid[0])
    assert ratio == pytest.approx(2.0, rel=0.15)  # √4: the cluster bootstrap sees 50 independent prompts


def test_length_controlled_win_rate_removes_a_planted_length_effect():
    # Equal quality: P(A wins) = σ(2·tanh(Δ/sd)), and A's answers are longer on average (Δlen ~ N(30, 20²)).
    gen = torch.Generator().manual_seed(0)
    n = 4000
    d = torch.randn(n, generator=gen, dtype=torch.float64) * 20 + 30
    x = torch.tanh(d / d.std())
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(2.0 * x)).double()
    wr = win_rate(y, length_diff=d, n_boot=300)
    lc = wr["length_controlled"]
    assert wr["win_rate"] > 0.7  # the raw win rate rewards length
    assert lc["win_rate"] == pytest.approx(0.5, abs=0.03)  # at equal length the systems are equal
    assert lc["bootstrap"][0] < 0.5 < lc["bootstrap"][1]
    assert lc["coef"]["length"] == pytest.approx(2.0, rel=0.15)  # the planted length term is recovered
    assert lc["regulariser"] == "none" and lc["coef"]["difficulty"] is None  # one system: nothing to pool


def test_length_controlled_keeps_a_real_quality_gap():
    # A is better by a logit of 1 and length plays no role: LC ≈ raw ≈ σ(1) = 0.731
    gen = torch.Generator().manual_seed(2)
    n = 4000
    d = torch.randn(n, generator=gen, dtype=torch.float64) * 10
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(torch.tensor(1.0))).double()
    lc = length_controlled(y, d, n_boot=200)
    assert lc["win_rate"] == pytest.approx(1 / (1 + math.exp(-1)), abs=0.02)
    assert abs(lc["coef"]["length"]) < 0.15


def test_length_controlled_stays_finite_when_length_separates_outcomes():
    d = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
    y = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    lc = length_controlled(y, d, n_boot=50)
    assert lc["win_rate"] == pytest.approx(0.5, abs=1e-6)  # symmetric: at Δ = 0 nobody is ahead
    assert math.isfinite(lc["coef"]["length"]) and lc["coef"]["length"] > 5


def test_per_subset_breakdown():
    y = [1.0, 1.0, 0.0, 0.5, 0.0, 0.0]
    wr = win_rate(y, subsets=["math", "math", "math", "chat", "chat", "chat"], n_boot=100)
    assert wr["subsets"]["math"]["win_rate"] == pytest.approx(2 / 3)
    assert wr["subsets"]["chat"]["win_rate"] == pytest.approx(0.5 / 3)
    assert wr["subsets"]["math"]["n"] == 3
    with pytest.raises(ValueError, match="one each"):
        win_rate(y, subsets=["a"])
