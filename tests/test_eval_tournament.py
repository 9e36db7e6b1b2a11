"""Tournaments and ratings (`alignkit.eval.tournament`) on simulated players with known strengths."""

import math

import pytest
import torch

from alignkit.eval.tournament import (
    ELO_SCALE,
    Match,
    bradley_terry,
    elo,
    ratings,
    round_robin,
    single_elimination,
)

STRENGTH = {"ref": 0.0, "b": 0.4, "c": 0.8, "d": -0.6, "e": 1.2}  # log-strengths θ, P(i beats j) = σ(θi − θj)


def simulated(n: int, seed: int = 0, strength=STRENGTH):
    gen = torch.Generator().manual_seed(seed)

    def play(a: str, b: str) -> list[float]:
        p = 1 / (1 + math.exp(-(strength[a] - strength[b])))
        return (torch.rand(n, generator=gen) < p).double().tolist()

    return play


def test_bradley_terry_recovers_known_strengths():
    t = round_robin(list(STRENGTH), simulated(1000))
    assert len(t.matches) == 10 and t.comparisons == 10_000
    bt = bradley_terry(t.systems, t.matches, anchor="ref", prior=0.0)
    assert bt["ref"] == 0.0
    for s, theta in STRENGTH.items():
        assert bt[s] == pytest.approx(theta, abs=0.1), s  # each θ has a standard error of ~0.035 here


def test_bradley_terry_of_two_players_is_the_log_odds():
    # the MLE for two players is log(w / (n − w)); ties count half a win each
    m = Match("a", "b", [1.0] * 30 + [0.5] * 10 + [0.0] * 10)
    bt = bradley_terry(["a", "b"], [m], anchor="b", prior=0.0)
    assert bt["a"] == pytest.approx(math.log(35 / 15), abs=1e-8)
    # the prior adds one virtual tie: (35.5 / 15.5)
    assert bradley_terry(["a", "b"], [m], anchor="b")["a"] == pytest.approx(math.log(35.5 / 15.5), abs=1e-8)


def test_prior_keeps_an_unbeaten_player_finite():
    m = Match("a", "b", [1.0] * 20)
    assert bradley_terry(["a", "b"], [m], anchor="b")["a"] == pytest.approx(math.log(20.5 / 0.5))


def test_ratings_bootstrap_intervals_cover_the_truth_and_elo_orders_players():
    t = round_robin(list(STRENGTH), simulated(300, seed=1))
    r = ratings(t, anchor="ref", n_boot=200, seed=0)
    for s, theta in STRENGTH.items():
        lo, hi = r["bt_ci"][s]
        assert lo - 0.02 <= theta <= hi + 0.02, (s, lo, hi)
        assert r["bt_elo"][s] == pytest.approx(1000 + ELO_SCALE * r["bt"][s])
    assert [row["system"] for row in r["leaderboard"]] == ["e", "c", "b", "ref", "d"]
    assert [row["rank"] for row in r["leaderboard"]] == [1, 2, 3, 4, 5]
    assert r["elo"]["ref"] == pytest.approx(1000.0)
    assert r["elo"]["e"] > r["elo"]["b"] > r["elo"]["d"]
    assert ratings(t, anchor="ref", n_boot=50, seed=0) == ratings(t, anchor="ref", n_boot=50, seed=0)


def test_single_elimination_needs_far_fewer_matches_and_finds_the_best():
    players = {f"p{i}": 0.8 * i for i in range(8)}  # big gaps: the strongest should win the bracket
    rr = round_robin(list(players), simulated(200, strength=players))
    se = single_elimination(list(players), simulated(200, strength=players))
    assert len(rr.matches) == 28 and len(se.matches) == 7  # S(S−1)/2 vs S − 1
    assert se.comparisons == 7 * 200
    assert se.champion == "p7" and len(se.rounds) == 3
    r = ratings(se, anchor="p0", n_boot=20)
    assert r["leaderboard"][0]["system"] == "p7"


def test_single_elimination_gives_byes_when_the_field_is_not_a_power_of_two():
    se = single_elimination(["a", "b", "c", "d", "e"], simulated(50, strength={k: 0.0 for k in "abcde"}))
    assert len(se.matches) == 4
    assert [m for m in se.rounds[0] if "bye" in m] == [{"bye": "a"}, {"bye": "b"}, {"bye": "c"}]


def test_disconnected_players_cannot_be_rated():
    matches = [Match("a", "b", [1.0, 0.0]), Match("c", "d", [1.0, 0.0])]
    with pytest.raises(ValueError, match="never met"):
        bradley_terry(["a", "b", "c", "d"], matches)


def test_online_elo_moves_toward_the_winner():
    m = Match("a", "b", [1.0] * 10)
    r = elo(["a", "b"], [m], anchor="b", k=16)
    # first game: +8 (E = ½); each later win adds less
    assert 1000 + 8 * 2 < r["a"] - r["b"] + 1000 < 1000 + 16 * 10
