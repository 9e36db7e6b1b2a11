"""AlpacaEval 2's length-controlled GLM (`alignkit.eval.lc_glm`) on data planted from the model itself: a
length-gamed system keeps its quality once the length term is pinned by other systems or by the
baseline's own verbose / concise variants."""

import pytest
import torch

from alignkit.eval.lc_glm import length_controlled_glm

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest

PROMPTS = 400
PHI = 1.5  # the judge's length term: log-odds at tanh = 1


def _system(theta: float, mean: float, sd: float, gamma: torch.Tensor, gen: torch.Generator) -> dict:
    d = torch.randn(PROMPTS, generator=gen, dtype=torch.float64) * sd + mean
    p = torch.sigmoid(theta + PHI * torch.tanh(d / d.std()) + gamma)
    y = (torch.rand(PROMPTS, generator=gen, dtype=torch.float64) < p).double()
    truth = float(torch.sigmoid(theta + gamma).mean())  # the win rate at equal length
    return {"outcomes": y, "length_diff": d, "prompts": list(range(PROMPTS)), "truth": truth}


def _world(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.randn(PROMPTS, generator=gen, dtype=torch.float64)
    systems = {f"s{k}": _system(theta, mean, 300.0, gamma, gen)
               for k, (theta, mean) in enumerate([(-2.0, -200), (-1.5, 100), (-1.0, 0), (-0.5, 250), (0.0, -100),
                                                  (0.5, 150)])}
    # the gamed system answers in a few words: every answer far shorter than the baseline's (tanh ≈ −1)
    systems["gamed"] = _system(-1.0, -1500.0, 100.0, gamma, gen)
    return systems, gamma, gen


def test_a_length_gamed_system_keeps_its_quality_when_other_systems_share_the_prompts():
    systems, _, _ = _world()
    out = length_controlled_glm(systems)
    res = out["systems"]
    gamed = res["gamed"]
    assert sum(systems["gamed"]["outcomes"]) / PROMPTS < 0.15  # the raw win rate punishes the short answers
    assert systems["gamed"]["truth"] == pytest.approx(0.30, abs=0.02)
    assert gamed["win_rate"] == pytest.approx(systems["gamed"]["truth"], abs=0.03)
    assert gamed["regulariser"] == "pooled systems" and out["model"]["difficulty"]
    assert out["model"]["judge_length_coef"] == pytest.approx(PHI, abs=0.3)
    for name in [f"s{k}" for k in range(6)]:
        assert res[name]["win_rate"] == pytest.approx(systems[name]["truth"], abs=0.04), name


def test_the_baseline_own_length_variants_pin_the_length_term_as_in_alpaca_eval():
    systems, gamma, gen = _world(1)
    # the baseline prompted to be verbose or concise: its own quality (θ = 0), lengths spread around ±1 sd
    variants = {"verbose": _system(0.0, 300.0, 300.0, gamma, gen), "concise": _system(0.0, -250.0, 250.0, gamma, gen)}
    data = {"gamed": systems["gamed"], **variants}
    out = length_controlled_glm(data, anchors=["verbose", "concise"])
    gamed = out["systems"]["gamed"]
    assert gamed["regulariser"] == "baseline variants"
    # 400 Bernoulli comparisons: a win rate's standard error is about 0.023
    assert gamed["win_rate"] == pytest.approx(systems["gamed"]["truth"], abs=0.03)
    for name in variants:  # the variants are the baseline: about ½ at equal length
        assert out["systems"][name]["win_rate"] == pytest.approx(variants[name]["truth"], abs=0.06)


def test_bootstrap_interval_covers_the_estimate_and_inputs_are_checked():
    systems, _, _ = _world(2)
    small = {k: systems[k] for k in ("s1", "s3", "gamed")}
    out = length_controlled_glm(small, n_boot=100, seed=0)
    for r in out["systems"].values():
        lo, hi = r["bootstrap"]
        assert lo < r["win_rate"] < hi and hi - lo < 0.2
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        length_controlled_glm({"a": {"outcomes": [1.5], "length_diff": [3]}})
    with pytest.raises(ValueError, match="anchors"):
        length_controlled_glm(small, anchors=["nobody"])
