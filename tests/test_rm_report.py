"""Reward-model evaluation: accuracy (ties as half), Wilson CI, calibration, margin buckets, report files."""

import json
import math

import pytest
import torch

from alignkit.eval.rm_report import (
    TIE_RULE,
    accuracy_by_subset,
    calibration,
    margin_buckets,
    pairwise_accuracy,
    rm_report,
    wilson_interval,
    write_report,
)
from alignkit.eval.rm_sections import REWARDBENCH_COUNTS, section_scores

# five hand-made pairs: margins r_w − r_l = 0.2, 0 (tie), 1.5, −1 (wrong), 4
CHOSEN = [1.0, 0.0, 3.0, 2.0, 5.0]
REJECTED = [0.8, 0.0, 1.5, 3.0, 1.0]
SUBSETS = ["chat", "chat", "safety", "safety", "chat"]


def test_pairwise_accuracy_counts_ties_as_half():
    assert pairwise_accuracy(CHOSEN, REJECTED) == pytest.approx(3.5 / 5)  # 1 + 0.5 + 1 + 0 + 1
    assert pairwise_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.5  # a constant reward is a coin flip
    assert pairwise_accuracy(torch.tensor([2.0]), torch.tensor([1.0])) == 1.0
    with pytest.raises(ValueError, match="one of each per pair"):
        pairwise_accuracy([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([], [])
    with pytest.raises(ValueError, match=r"non-finite score in pair\(s\) \[1\]"):
        pairwise_accuracy([1.0, math.nan], [0.0, 0.0])


def test_accuracy_by_subset():
    out = accuracy_by_subset(CHOSEN, REJECTED, SUBSETS)
    assert list(out) == ["chat", "safety", "overall"]
    assert out["chat"] == (pytest.approx(2.5 / 3), 3)  # pairs 0, 1 (tie), 4
    assert out["safety"] == (0.5, 2)  # pairs 2 (right), 3 (wrong)
    assert out["overall"] == (pytest.approx(0.7), 5)
    assert accuracy_by_subset(CHOSEN, REJECTED) == {"overall": (pytest.approx(0.7), 5)}
    with pytest.raises(ValueError, match="one per pair"):
        accuracy_by_subset(CHOSEN, REJECTED, ["chat"])
    with pytest.raises(ValueError, match="reserved"):
        accuracy_by_subset([1.0], [0.0], ["overall"])


def test_wilson_interval_textbook_values():
    lo, hi = wilson_interval(7, 10)
    assert (lo, hi) == (pytest.approx(0.3968, abs=1e-4), pytest.approx(0.8922, abs=1e-4))
    # z = 1.96 at p̂ = 1/2, n = 100: centre 0.5, half-width 1.96·0.05/(1 + 0.038416)·sqrt(1 + 0.038416)
    lo, hi = wilson_interval(50, 100)
    half = 1.96 * math.sqrt(0.25 / 100 + 1.96**2 / 40000) / (1 + 1.96**2 / 100)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert half == pytest.approx(0.0962, abs=1e-4)
    # not degenerate at the ends, and stays in [0, 1]: 0/10 → (0, 0.2775)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_calibration_hand_example():
    # one pair with r_w − r_l = log 3: p = σ(log 3) = 0.75 → points (0.75, 1) and (0.25, 0)
    cal = calibration([math.log(3.0)], [0.0], bins=10)
    assert cal["n"] == 2
    assert cal["ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    rows = {i: b for i, b in enumerate(cal["bins"]) if b["count"]}
    assert list(rows) == [2, 7]
    assert rows[7] == {"lower": 0.7, "upper": 0.8, "confidence": pytest.approx(0.75), "accuracy": 1.0, "count": 1}
    assert rows[2] == {"lower": 0.2, "upper": 0.3, "confidence": pytest.approx(0.25), "accuracy": 0.0, "count": 1}
    assert cal["bins"][0] == {"lower": 0.0, "upper": 0.1, "confidence": None, "accuracy": None, "count": 0}
    # a constant reward says p = 0.5 and is right half the time: perfectly calibrated
    assert calibration([1.0, 1.0], [1.0, 1.0])["ece"] == 0.0
    with pytest.raises(ValueError, match="bins"):
        calibration([1.0], [0.0], bins=0)


def _synthetic(n: int, seed: int):
    """Pairs whose order is drawn from the model's own Bradley–Terry probability σ(a − b)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    first_wins = torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(a - b)
    return torch.where(first_wins, a, b), torch.where(first_wins, b, a)


def test_calibration_calibrated_vs_overconfident():
    chosen, rejected = _synthetic(100_000, seed=0)
    good = calibration(chosen, rejected, bins=10)
    assert good["ece"] < 0.02
    assert sum(b["count"] for b in good["bins"]) == 200_000
    # symmetrised: bin k and bin 9 − k mirror each other
    for k in range(10):
        assert good["bins"][k]["count"] == good["bins"][9 - k]["count"]
        assert good["bins"][k]["accuracy"] == pytest.approx(1 - good["bins"][9 - k]["accuracy"])
    # the same preferences scored ×10: probabilities pushed towards 0 and 1, accuracy unchanged
    over = calibration(chosen * 10, rejected * 10, bins=10)
    assert pairwise_accuracy(chosen * 10, rejected * 10) == pairwise_accuracy(chosen, rejected)
    assert over["ece"] > 0.15
    assert over["ece"] > 10 * good["ece"]


def test_margin_buckets_model_margin():
    rows = margin_buckets(CHOSEN, REJECTED)  # |margins| = 0.2, 0, 1.5, 1, 4
    assert rows == [
        {"lower": 0.0, "upper": 0.5, "count": 2, "correct": 1, "wrong": 0, "ties": 1, "accuracy": 0.75},
        {"lower": 0.5, "upper": 1.0, "count": 0, "correct": 0, "wrong": 0, "ties": 0, "accuracy": None},
        {"lower": 1.0, "upper": 2.0, "count": 2, "correct": 1, "wrong": 1, "ties": 0, "accuracy": 0.5},
        {"lower": 2.0, "upper": math.inf, "count": 1, "correct": 1, "wrong": 0, "ties": 0, "accuracy": 1.0},
    ]


def test_margin_buckets_annotated_margins_and_errors():
    rows = margin_buckets(CHOSEN, REJECTED, edges=(1, 2, 4), margins=[1, 1, 3, 3, 3])
    assert [(r["count"], r["accuracy"]) for r in rows] == [(2, 0.75), (3, pytest.approx(2 / 3))]
    with pytest.raises(ValueError, match="outside the edges"):
        margin_buckets(CHOSEN, REJECTED, edges=(1, 2, 4), margins=[0, 1, 3, 3, 3])
    with pytest.raises(ValueError, match="strictly increasing"):
        margin_buckets(CHOSEN, REJECTED, edges=(0, 1, 1))
    with pytest.raises(ValueError, match="one per pair"):
        margin_buckets(CHOSEN, REJECTED, margins=[1.0])


def test_rm_report_bundles_everything():
    rep = rm_report(CHOSEN, REJECTED, SUBSETS, extra={"model": "rm-tiny", "step": 3})
    assert rep["n"] == 5
    assert rep["accuracy"] == pytest.approx(0.7)
    assert rep["ci"] == pytest.approx(list(wilson_interval(3.5, 5)))
    assert (rep["correct"], rep["wrong"], rep["ties"]) == (3, 1, 1)
    assert rep["mean_margin"] == pytest.approx((0.2 + 0 + 1.5 - 1 + 4) / 5)
    assert rep["subsets"]["chat"] == {
        "accuracy": pytest.approx(2.5 / 3), "n": 3, "correct": 2, "wrong": 0, "ties": 1,
        "ci": pytest.approx(list(wilson_interval(2.5, 3)))
    }  # fmt: skip
    assert set(rep["subsets"]["safety"]) == set(rep) & set(rep["subsets"]["safety"])  # one key naming
    assert list(rep["subsets"]) == ["chat", "safety"]
    assert rep["calibration"] == calibration(CHOSEN, REJECTED)
    assert rep["margin_buckets"] == margin_buckets(CHOSEN, REJECTED)
    assert rep["tie_rule"] == {"rule": TIE_RULE, "rtol": 1e-5, "identical_pairs": None}
    assert rep["margin_source"] == "model"
    assert rep["extra"] == {"model": "rm-tiny", "step": 3}
    assert rm_report(CHOSEN, REJECTED)["subsets"] == {}


def test_write_report_files(tmp_path):
    rep = rm_report(CHOSEN, REJECTED, SUBSETS, extra={"model": "rm-tiny"})
    json_path, md_path = write_report(rep, tmp_path / "eval")
    assert json_path == tmp_path / "eval" / "report.json" and md_path == tmp_path / "eval" / "report.md"

    data = json.loads(json_path.read_text())  # strict JSON: no Infinity/NaN tokens
    assert "Infinity" not in json_path.read_text()
    assert data["margin_buckets"][-1]["upper"] == "inf"
    assert data["accuracy"] == pytest.approx(0.7)
    assert data["subsets"]["safety"]["n"] == 2
    assert data["calibration"]["bins"][3]["confidence"] is None  # p in [0.3, 0.4): no pair there

    md = md_path.read_text()
    lines = md.splitlines()
    assert lines[0] == "# Reward model evaluation"
    assert "- model: rm-tiny" in lines
    for heading in ("## Overall", "## Per subset", "## Calibration", "## Margin buckets"):
        assert heading in lines
    lo, hi = wilson_interval(3.5, 5)
    ece = rep["calibration"]["ece"]
    overall = lines.index("## Overall")
    assert lines[overall + 2] == ("| pairs | correct | wrong | ties | accuracy | CI low (Wilson, z=1.96) | CI high | "
                                  "mean margin | ECE |")
    assert lines[overall + 4] == f"| 5 | 3 | 1 | 1 | 0.7000 | {lo:.4f} | {hi:.4f} | 0.9400 | {ece:.4f} |"
    assert ("Ties count 0.5. A pair is a tie for identical responses, or |r_w − r_l| <= rtol·max(|r_w|, |r_l|, 1), "
            "rtol = 1e-05.") in lines
    chat_ci = wilson_interval(2.5, 3)
    assert f"| chat | 3 | 2 | 0 | 1 | 0.8333 | {chat_ci[0]:.4f} | {chat_ci[1]:.4f} |" in lines
    assert "| safety | 2 | 1 | 1 | 0 | 0.5000 |" in md
    assert "| chat | 3 | 0.8333 | 1.0000 | chat (1) |" in lines  # sections: each subset its own
    assert "| 0.0000 | 0.5000 | 2 | 1 | 0 | 1 | 0.7500 |" in lines  # margin bucket [0, 0.5)
    assert "| 0.5000 | 1.0000 | 0 | 0 | 0 | 0 | – |" in lines  # an empty bucket
    assert "| 2.0000 | inf | 1 | 1 | 0 | 0 | 1.0000 |" in lines
    assert sum(1 for line in lines if line.startswith("| 0.") and line.count("|") == 6) == 10  # calibration bins

    # no subsets → no per-subset section; writing again overwrites
    write_report(rm_report(CHOSEN, REJECTED), tmp_path / "eval")
    assert "## Per subset" not in md_path.read_text()


def test_identical_responses_are_ties_whatever_float_noise_says():
    # three pairs of one text scored twice: fp32 noise of ±5e-8 would decide 2 of 3 for "chosen" (0.667)
    chosen, rejected = [0.73125, -1.2, 4.0], [0.73125 - 5e-8, -1.2 + 5e-8, 4.0 - 5e-8]
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(2 / 3)  # exact comparison: noise decides
    rep = rm_report(chosen, rejected, identical=[True, True, True], tie_rtol=0.0)
    assert (rep["correct"], rep["wrong"], rep["ties"], rep["accuracy"]) == (0, 0, 3, 0.5)
    assert rep["tie_rule"]["identical_pairs"] == 3
    # different texts, rewards equal to within the tolerance: rtol·max(|r_w|, |r_l|, 1)
    near = rm_report([1000.0, 2e-6, 1.0], [1000.005, 0.0, 1.1])
    assert (near["correct"], near["wrong"], near["ties"]) == (0, 1, 2)  # 5e-3 <= 1e-2; 2e-6 <= 1e-5; 0.1 is not
    assert rm_report([1000.0], [1000.005], tie_rtol=1e-7)["wrong"] == 1
    assert near["margin_buckets"][0]["ties"] == 2  # buckets use the same rule
    with pytest.raises(ValueError, match="one per pair"):
        rm_report(chosen, rejected, identical=[True])


def test_rewardbench_sections_weigh_subsets_as_rewardbench_does():
    subsets = {"alpacaeval-easy": 0.9, "mt-bench-hard": 0.6, "math-prm": 0.5, "hep-python": 0.8,
               "refusals-dangerous": 0.7, "shp": 0.6}
    chosen, rejected, names = [], [], []
    for name, acc in subsets.items():  # 10 pairs per subset, 10·acc of them right
        right = round(10 * acc)
        chosen += [1.0] * 10
        rejected += [0.0] * right + [2.0] * (10 - right)
        names += [name] * 10
    sec = rm_report(chosen, rejected, names)["sections"]
    assert sec["scheme"] == "rewardbench"
    reasoning = (0.5 * REWARDBENCH_COUNTS["math-prm"] + 0.8 * 164) / (984 + 164)  # math-prm counts as 984 pairs
    assert sec["sections"]["Reasoning"]["accuracy"] == pytest.approx(reasoning)
    assert sec["sections"]["Chat"]["accuracy"] == pytest.approx(0.9)
    assert sec["sections"]["Prior Sets"]["weight"] == 0.5
    expected = (0.9 + 0.6 + reasoning + 0.7 + 0.5 * 0.6) / 4.5
    assert sec["section_weighted_accuracy"] == pytest.approx(expected)
    assert sec["subset_weighted_accuracy"] == pytest.approx(sum(subsets.values()) / 6)
    named = section_scores({"chat/easy": {"accuracy": 1.0, "n": 30}, "chat/hard": {"accuracy": 0.5, "n": 10},
                            "safety/x": {"accuracy": 0.2, "n": 5}})
    assert named["scheme"] == "named" and named["sections"]["chat"]["accuracy"] == pytest.approx(35 / 40)
    assert named["section_weighted_accuracy"] == pytest.approx((35 / 40 + 0.2) / 2)
    plain = section_scores({"a": {"accuracy": 1.0, "n": 30}, "b": {"accuracy": 0.5, "n": 10}})
    assert plain["scheme"] == "subsets" and plain["section_weighted_accuracy"] == 0.75
    assert section_scores({}) is None
