"""Preference / ranking accuracy (`alignkit.eval.accuracy`): implicit reward vs raw likelihood ranking."""

import pytest
import torch

from alignkit.data.schema import PreferenceRecord, pair
from alignkit.eval.accuracy import preference_accuracy, preference_pairs, ranking_accuracy


def test_implicit_accuracy_can_be_perfect_while_likelihood_ranking_is_poor():
    # the policy raised every winner relative to the reference, but the losers (short, typical) keep a
    # higher likelihood in three pairs of four: ρ accuracy 1.0, s accuracy 0.25
    chosen, rejected = [-10.0, -12.0, -9.0, -3.0], [-6.0, -8.0, -5.0, -7.0]
    ref_chosen, ref_rejected = [-14.0, -16.0, -13.0, -5.0], [-5.0, -7.0, -4.0, -6.0]
    acc = ranking_accuracy(chosen, rejected, ref_chosen, ref_rejected, [10, 12, 9, 3], [2, 2, 2, 7])
    assert acc["implicit_reward"]["accuracy"] == 1.0
    assert acc["likelihood"]["accuracy"] == 0.25
    # per token the short losers lose their edge: winners -1 each vs losers -3, -4, -2.5, -1 → 3 wins, 1 tie
    assert acc["likelihood_per_token"]["accuracy"] == 0.875
    assert acc["mean_margin"] == pytest.approx(-2.0)
    assert acc["mean_implicit_margin"] == pytest.approx((5 + 5 + 5 + 3) / 4)  # ρ(w) = 4, 4, 4, 2; ρ(l) = −1 each
    assert acc["likelihood"]["wilson"][0] < 0.25 < acc["likelihood"]["wilson"][1]


def test_ranking_accuracy_without_reference_has_no_implicit_reward():
    acc = ranking_accuracy([-1.0, -2.0], [-2.0, -2.0])
    assert acc["implicit_reward"] is None and acc["likelihood"]["accuracy"] == 0.75  # a tie counts half


def test_preference_pairs_orders_winner_first_and_skips_ties():
    records = [
        pair("p", "good", "bad"),
        PreferenceRecord(prompt="p", responses=["bad", "good"], ranks=[1, 0]),
        PreferenceRecord(prompt="p", responses=["x", "y"], scores=[0.2, 0.9]),
        PreferenceRecord(prompt="p", responses=["x", "y"], ranks=[0, 0]),
        PreferenceRecord(prompt="p", responses=["x", "y", "z"], ranks=[0, 1, 2]),
    ]
    pairs, skipped = preference_pairs(records)
    assert [r.responses for r in pairs] == [["good", "bad"], ["good", "bad"], ["y", "x"]]
    assert skipped == 2


def test_preference_accuracy_of_a_model_against_itself(tiny, pairs_path):
    from alignkit.data.io import read_records
    from alignkit.engine.score import score_logps

    model, tok = tiny
    records = read_records(pairs_path).records[:12]
    acc = preference_accuracy(model, tok, records, reference=model)
    # π = π_ref: every implicit reward is exactly 0, every pair a tie → 0.5
    assert acc["implicit_reward"]["accuracy"] == 0.5 and acc["mean_implicit_margin"] == 0.0
    # the likelihood accuracy is the share of pairs whose winner has the higher summed log-prob
    lp = score_logps(model, tok, [r.prompt for r in records], [r.responses for r in records])
    expected = float(((lp[:, 0] > lp[:, 1]).double() + 0.5 * (lp[:, 0] == lp[:, 1]).double()).mean())
    assert acc["likelihood"]["accuracy"] == pytest.approx(expected)
    assert acc["n"] == 12 and acc["skipped"] == 0
    assert acc["mean_margin"] == pytest.approx(float((lp[:, 0] - lp[:, 1]).mean()), abs=1e-4)
    assert torch.isfinite(lp).all()
