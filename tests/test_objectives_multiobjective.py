"""MODPO (METHODS.md section 4) against closed forms computed with `math`, in float64."""

import math

import pytest
import torch
from closed_forms import T, lsig, sig

from alignkit.objectives import SequenceStats, get_objective

B_ = 0.1
NAN = float("nan")


def mk(logps, ref, scores=None, ranks=None, weights=None, valid=None):
    return SequenceStats(
        logps=T(logps, requires_grad=True),
        ref_logps=T(ref),
        scores=T(scores),
        ranks=T(ranks),
        weights=T(weights),
        valid=None if valid is None else torch.tensor(valid),
    )


def run(name, stats, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    return out, grad


# Two rows, Delta = 1.5 in both; the chosen column is 0 in row 0 and 1 in row 1.  rho = [.5, -1], [1, -.5]
S = [[-3.0, -5.0], [-4.0, -2.5]]
R = [[-3.5, -4.0], [-3.5, -3.5]]
RK = [[0.0, 1.0], [1.0, 0.0]]
# Two objectives; objective 0 agrees with RK.
SC = [[[1.0, 0.3], [0.2, 0.9]], [[0.1, 0.5], [0.8, 0.2]]]
W = [0.6, 0.4]


@pytest.mark.parametrize("scores", [[[[0.7], [0.1]], [[-2.0], [3.0]]], [[0.7, 0.1], [-2.0, 3.0]]])
def test_one_objective_with_unit_weight_is_dpo_exactly(scores):
    a, ga = run("modpo", mk(S, R, scores=scores, weights=[3.0, 1.0]), beta=B_, weights=[1.0])
    b, gb = run("dpo", mk(S, R, ranks=RK, weights=[3.0, 1.0]), beta=B_)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.per_example, b.per_example) and torch.equal(ga, gb)
    assert {k: v for k, v in a.metrics.items() if k != "rewards/others_margin"} == b.metrics
    assert a.metrics["rewards/others_margin"] == 0.0


def test_two_objectives_value_and_gradient():
    out, g = run("modpo", mk(S, R, scores=SC), beta=B_, weights=W, objective_index=0)
    others = [0.4 * (0.3 - 0.9), 0.4 * (0.2 - 0.5)]  # w_1 (r_1(w) - r_1(l)) per row
    z = [(B_ / 0.6) * (1.5 - o / B_) for o in others]  # 0.65, 0.45
    assert z == pytest.approx([0.65, 0.45], rel=1e-14)
    torch.testing.assert_close(out.per_example, T([-lsig(x) for x in z]), rtol=1e-14, atol=0)
    dw = [-(B_ / 0.6) * sig(-x) / 2 for x in z]  # d loss / d s(w), mean over 2 rows
    torch.testing.assert_close(g, T([[dw[0], -dw[0]], [-dw[1], dw[1]]]), rtol=1e-13, atol=0)
    assert out.metrics["rewards/others_margin"] == pytest.approx(sum(others) / 2, rel=1e-6)
    assert out.metrics["rewards/margin"] == pytest.approx(B_ * 1.5, rel=1e-6)

    # Objective 1 trained instead: its scores pick the other column in both rows (Delta = -1.5).
    out1, g1 = run("modpo", mk(S, R, scores=SC), beta=B_, weights=W, objective_index=1)
    others1 = [0.6 * (0.2 - 1.0), 0.6 * (0.1 - 0.8)]
    z1 = [(B_ / 0.4) * (-1.5 - o / B_) for o in others1]  # 0.825, 0.675
    assert out1.loss.item() == pytest.approx(sum(-lsig(x) for x in z1) / 2, rel=1e-14)
    dw1 = [-(B_ / 0.4) * sig(-x) / 2 for x in z1]
    torch.testing.assert_close(g1, T([[-dw1[0], dw1[0]], [dw1[1], -dw1[1]]]), rtol=1e-13, atol=0)
    assert out1.metrics["rewards/accuracy"] == 0.0


def test_chosen_by_objective_or_weighted_score():
    st = dict(logps=[[-3.0, -5.0]], ref=[[-3.5, -4.0]], scores=[[[0.5, 0.0], [0.4, 1.0]]])  # rho = [.5, -1]
    obj, _ = run("modpo", mk(**st), beta=B_, weights=W)  # objective 0: column 0 is chosen
    z = (B_ / 0.6) * (1.5 - 0.4 * (0.0 - 1.0) / B_)
    assert obj.loss.item() == pytest.approx(-lsig(z), rel=1e-14)
    wtd, _ = run("modpo", mk(**st), beta=B_, weights=W, chosen_by="weighted")  # w.s = 0.3 < 0.64: column 1
    zw = (B_ / 0.6) * (-1.5 - 0.4 * (1.0 - 0.0) / B_)
    assert wtd.loss.item() == pytest.approx(-lsig(zw), rel=1e-14)


def test_ties_padding_and_record_weights():
    st = mk(
        [S[0], [-1.0, -2.0], [-4.0, NAN], S[1]],
        [R[0], [-1.0, -1.0], [-1.0, NAN], R[1]],
        scores=[SC[0], [[0.5, 0.0], [0.5, 1.0]], [[1.0, 0.0], [NAN, NAN]], SC[1]],
        weights=[2.0, 7.0, 7.0, 0.5],
        valid=[[True, True], [True, True], [True, False], [True, True]],
    )
    out, g = run("modpo", st, beta=B_, weights=W)
    single = [
        run("modpo", mk([S[b]], [R[b]], scores=[SC[b]]), beta=B_, weights=W)[0].loss.item() for b in (0, 1)
    ]
    torch.testing.assert_close(out.per_example, T([single[0], 0.0, 0.0, single[1]]), rtol=1e-14, atol=0)
    assert out.loss.item() == pytest.approx((2.0 * single[0] + 0.5 * single[1]) / 2.5, rel=1e-14)
    assert torch.isfinite(g).all() and g[1:3].abs().max() == 0


def test_extreme_log_ratios_and_scores_are_finite():
    st = mk([[-1e4, -1.0], [0.0, -1e4]], [[0.0, 0.0], [-1e4, 0.0]], scores=[[[1.0, 1e3], [0.0, -1e3]]] * 2)
    out, g = run("modpo", st, beta=B_, weights=W)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize(
    "hp,match",
    [
        ({}, "needs `weights`"),
        ({"weights": [1.0]}, "1 entries but the scores have m = 2"),
        ({"weights": [0.5, -0.5]}, "≥ 0"),
        ({"weights": [0.0, 1.0]}, "weight > 0 on the trained objective 0"),
        ({"weights": W, "objective_index": 2}, "objective_index"),
        ({"weights": W, "chosen_by": "sum"}, "chosen_by"),
        ({"weights": W, "beta": 0.0}, "beta"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors(hp, match):
    with pytest.raises(ValueError, match=match):
        get_objective("modpo")(mk(S, R, scores=SC), **hp)


def test_registration():
    spec = get_objective("modpo")
    assert (spec.label_kinds, spec.min_responses, spec.max_responses, spec.score_shape) == (
        ("scores",),
        2,
        2,
        "vector",
    )
    spec.check_data("scores", 2, 2, score_dim=3)
    with pytest.raises(ValueError, match="score vectors"):
        spec.check_data("scores", 2, 2, score_dim=None)
    assert spec.needs_reference and set(spec.defaults) == {"beta", "weights", "objective_index", "chosen_by"}
    with pytest.raises(ValueError, match="reference"):
        get_objective("modpo")(SequenceStats(logps=T(S), scores=T(SC)), weights=W)
