"""Reward-model objectives (METHODS.md section 5) against closed forms computed with `math`, hand-derived
gradients and the section's properties, in float64: the Bradley–Terry family, regression and gated_bt
here, plus the shared masking tests of every pair objective; mixture, gpm and prm in
test_objectives_reward_structured.py."""

import math

import pytest
import torch
from closed_forms import D, T, lse, lsig, sig

import alignkit.objectives.reward_structured  # noqa: F401  (registers mixture, gpm, prm)
from alignkit.objectives import SequenceStats, build_objective, get_objective

NAN = float("nan")
LOG2 = math.log(2)


def mk(rewards, ranks=None, scores=None, labels=None, weights=None, valid=None, **extra):
    return SequenceStats(
        logps=None,
        rewards=T(rewards, requires_grad=True),
        ranks=T(ranks),
        scores=T(scores),
        labels=T(labels),
        weights=T(weights),
        valid=None if valid is None else torch.tensor(valid),
        extra={k: v if isinstance(v, torch.Tensor) else T(v) for k, v in extra.items()},
    )


def run(name, stats, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.rewards)
    return out, grad


def same(a, b, ga, gb, rtol=1e-14):
    torch.testing.assert_close(a.loss, b.loss, rtol=rtol, atol=1e-16)
    torch.testing.assert_close(a.per_example, b.per_example, rtol=rtol, atol=1e-16)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=1e-16)


# Two rows; the chosen column is 0 in row 0 and 1 in row 1. d = r(w) - r(l) = 1.5 and 0.5.
RW = [[1.0, -0.5], [0.2, 0.7]]
RK = [[0.0, 1.0], [1.0, 0.0]]
SC = [[3.0, 1.0], [0.0, 2.5]]  # the same order as RK; score gaps 2.0 and 2.5
DIFF = [1.5, 0.5]


# ---------------------------------------------------------------- registration
REGISTERED = {
    # name: (hyper-parameters, label kinds, K range, extras, reward_outputs, score_shape)
    "bt": ({"center_coef"}, ("ranks", "scores"), (2, 2), (), "1", "scalar"),
    "bt_margin": ({"margin_scale"}, ("ranks", "scores"), (2, 2), ("margin",), "1", "scalar"),
    "bt_pl": (set(), ("ranks", "scores"), (2, None), (), "1", "scalar"),
    "regression": ({"dim"}, ("scores",), (1, None), (), "dim", "vector"),
    "gated_bt": ({"dim", "beta"}, ("ranks", "scores"), (2, 2), ("gate",), "dim", "scalar"),
    "mixture": ({"num_heads"}, ("ranks", "scores"), (2, 2), ("gate",), "num_heads", "scalar"),
    "gpm": ({"dim", "beta", "normalize"}, ("ranks", "scores"), (2, 2), (), "dim", "scalar"),
    "prm": (
        {"aggregate"},
        ("labels", "ranks", "scores"),
        (1, None),
        ("step_mask", "step_labels"),
        "1",
        "scalar",
    ),
}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registration_declares_inputs_extras_and_head_size(name):
    hp, kinds, (k_min, k_max), extras, outputs, shape = REGISTERED[name]
    spec = get_objective(name)
    assert spec.inputs == "rewards" and not spec.needs_reference and not spec.stateful
    assert set(spec.defaults) == hp and spec.label_kinds == kinds
    assert (spec.min_responses, spec.max_responses) == (k_min, k_max)
    assert spec.extras == extras and spec.reward_outputs == outputs and spec.score_shape == shape
    assert outputs == "1" or outputs in spec.defaults  # the trainer reads the head size from this hparam
    assert build_objective(name).inputs == "rewards"
    spec.check_data(kinds[0], k_min, k_max, has_reference=False, score_dim=2 if shape == "vector" else None)


def test_reward_objectives_refuse_stats_without_rewards():
    st = SequenceStats(logps=T([[-1.0, -2.0]]), ranks=T([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="stats.rewards"):
        get_objective("bt")(st)


# ---------------------------------------------------------------- bt
def test_bt_at_zero_reward_is_log2_with_half_gradients():
    out, g = run("bt", mk([[0.0, 0.0], [0.0, 0.0]], RK))
    assert out.loss.item() == pytest.approx(LOG2, rel=1e-15)
    torch.testing.assert_close(g, T([[-0.25, 0.25], [0.25, -0.25]]), rtol=1e-15, atol=0)
    assert out.metrics["rewards/accuracy"] == 0.0 and out.metrics["rewards/margin"] == 0.0


@pytest.mark.parametrize("labels", [{"ranks": RK}, {"scores": SC}, {"ranks": RK, "scores": SC}])
def test_bt_value_gradient_and_metrics(labels):
    out, g = run("bt", mk(RW, weights=[3.0, 1.0], **labels))
    per = [-lsig(d) for d in DIFF]
    torch.testing.assert_close(out.per_example, T(per), rtol=1e-15, atol=0)
    assert out.loss.item() == pytest.approx((3 * per[0] + per[1]) / 4, rel=1e-15)
    # d/dr(w) = -sigma(-d) * w_b / sum(w), d/dr(l) = +sigma(-d) * w_b / sum(w)
    a, b = sig(-1.5) * 3 / 4, sig(-0.5) / 4
    torch.testing.assert_close(g, T([[-a, a], [b, -b]]), rtol=1e-14, atol=0)
    assert out.metrics["rewards/chosen"] == pytest.approx((1.0 + 0.7) / 2)
    assert out.metrics["rewards/rejected"] == pytest.approx((-0.5 + 0.2) / 2)
    assert out.metrics["rewards/margin"] == pytest.approx(1.0) and out.metrics["rewards/accuracy"] == 1.0


def test_bt_depends_only_on_the_reward_difference():
    base, gb = run("bt", mk(RW, RK))
    for c in (3.0, -250.0, 1e3):
        out, g = run("bt", mk([[x + c for x in row] for row in RW], RK))
        assert torch.equal(out.loss, base.loss) and torch.equal(g, gb)


def test_bt_centering_regulariser_value_gradient_and_pull_to_zero():
    eta = 0.3
    out, g = run("bt", mk(RW, RK), center_coef=eta)
    sums = [0.5, 0.9]
    per = [-lsig(d) + eta * s**2 for d, s in zip(DIFF, sums)]
    assert out.loss.item() == pytest.approx(sum(per) / 2, rel=1e-15)
    c0, c1 = 2 * eta * sums[0] / 2, 2 * eta * sums[1] / 2
    a, b = sig(-1.5) / 2, sig(-0.5) / 2
    torch.testing.assert_close(g, T([[-a + c0, a + c0], [b + c1, -b + c1]]), rtol=1e-14, atol=0)
    # The gradient along a shared shift of a row is 4*eta*(r_w + r_l)/B: stepping against it moves the
    # row's mean reward towards 0.
    torch.testing.assert_close(g.sum(1), T([4 * eta * s / 2 for s in sums]), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="center_coef"):
        get_objective("bt")(mk(RW, RK), center_coef=-0.1)


# ---------------------------------------------------------------- bt_margin
def test_bt_margin_without_margins_is_bt_exactly():
    a, ga = run("bt_margin", mk(RW, RK, weights=[3.0, 1.0]))
    b, gb = run("bt", mk(RW, RK, weights=[3.0, 1.0]))
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb)
    assert a.metrics.pop("margin") == 0.0 and a.metrics == b.metrics
    c, gc = run("bt_margin", mk(RW, scores=SC, margin=[0.5, 1.0]), margin_scale=0.0)
    d, gd = run("bt", mk(RW, scores=SC))
    assert torch.equal(c.loss, d.loss) and torch.equal(gc, gd)


def test_bt_margin_rule_extra_then_score_gap_then_zero():
    lam = 0.5
    # Row 0 has meta margin 0.4; row 1 has none (NaN): its scores give |0.0 - 2.5| = 2.5.
    out, g = run("bt_margin", mk(RW, scores=SC, margin=[0.4, NAN]), margin_scale=lam)
    m = [0.4, 2.5]
    z = [d - lam * mi for d, mi in zip(DIFF, m)]
    assert out.loss.item() == pytest.approx(sum(-lsig(x) for x in z) / 2, rel=1e-15)
    a, b = sig(-z[0]) / 2, sig(-z[1]) / 2
    torch.testing.assert_close(g, T([[-a, a], [b, -b]]), rtol=1e-14, atol=0)
    assert out.metrics["margin"] == pytest.approx(lam * (0.4 + 2.5) / 2)
    # Ranks only, no meta margin: m = 0 for that row.
    out_r, _ = run("bt_margin", mk(RW, RK, margin=[0.4, NAN]), margin_scale=lam)
    assert out_r.per_example[1].item() == pytest.approx(-lsig(0.5), rel=1e-15)
    assert out_r.per_example[0].item() == pytest.approx(-lsig(1.5 - 0.2), rel=1e-15)
    with pytest.raises(ValueError, match="margin_scale"):
        get_objective("bt_margin")(mk(RW, RK), margin_scale=-1.0)
    with pytest.raises(ValueError, match="margin"):
        get_objective("bt_margin")(mk(RW, RK, margin=[1.0, 2.0, 3.0]))


# ---------------------------------------------------------------- bt_pl
R3, RK3 = [[0.5, -1.0, 0.2]], [[2.0, 0.0, 1.0]]  # order: response 1, then 2, then 0


def pl_nll(h):  # h ordered best first
    return sum(lse(h[k:]) - h[k] for k in range(len(h) - 1))


@pytest.mark.parametrize("labels", [{"ranks": RK}, {"scores": SC}])
def test_bt_pl_k2_equals_bt(labels):
    a, ga = run("bt_pl", mk(RW, weights=[3.0, 1.0], **labels))
    b, gb = run("bt", mk(RW, weights=[3.0, 1.0], **labels))
    same(a, b, ga, gb)
    assert a.metrics.keys() == b.metrics.keys()
    assert all(a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-12) for k in a.metrics)


def test_bt_pl_k3_value_gradient_and_ties():
    out, g = run("bt_pl", mk(R3, RK3))
    h, order = R3[0], [1, 2, 0]
    assert out.loss.item() == pytest.approx(pl_nll([h[i] for i in order]), rel=1e-14)
    grad = [0.0, 0.0, 0.0]
    for k in range(2):
        z = lse([h[i] for i in order[k:]])
        for i in order[k:]:
            grad[i] += math.exp(h[i] - z)
        grad[order[k]] -= 1
    torch.testing.assert_close(g, T([grad]), rtol=1e-13, atol=1e-16)
    assert out.metrics["rewards/accuracy"] == pytest.approx(0.0)  # every pair is ordered wrong
    tied, _ = run("bt_pl", mk(R3, [[0.0, 1.0, 1.0]]))  # the mean over both orders of the tied pair
    expect = (pl_nll([h[0], h[1], h[2]]) + pl_nll([h[0], h[2], h[1]])) / 2
    assert tied.loss.item() == pytest.approx(expect, rel=1e-14)
    shifted, gs = run("bt_pl", mk([[x + 40.0 for x in h]], RK3))
    torch.testing.assert_close(shifted.loss, out.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(gs, g, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- regression
def test_regression_value_gradient_missing_attributes_and_metrics():
    r = [[[1.0, 0.0], [0.5, 2.0]], [[0.3, -1.0], [NAN, NAN]]]
    s = [[[0.5, 0.5], [1.0, NAN]], [[0.0, -1.5], [NAN, NAN]]]
    out, g = run("regression", mk(r, scores=s, weights=[1.0, 3.0], valid=[[True, True], [True, False]]))
    # row 0 observes 3 entries, row 1 two (its padded slot and NaN scores are left out)
    e0 = [(1.0 - 0.5), (0.0 - 0.5), (0.5 - 1.0)]
    e1 = [(0.3 - 0.0), (-1.0 + 1.5)]
    per = [sum(x * x for x in e0) / 3, sum(x * x for x in e1) / 2]
    torch.testing.assert_close(out.per_example, T(per), rtol=1e-15, atol=0)
    assert out.loss.item() == pytest.approx((per[0] + 3 * per[1]) / 4, rel=1e-15)
    expect = [[[2 * e0[0] / 3 / 4, 2 * e0[1] / 3 / 4], [2 * e0[2] / 3 / 4, 0.0]],
              [[3 * 2 * e1[0] / 2 / 4, 3 * 2 * e1[1] / 2 / 4], [0.0, 0.0]]]  # fmt: skip
    torch.testing.assert_close(g, T(expect), rtol=1e-14, atol=0)
    assert out.metrics["mse/attr0"] == pytest.approx((0.25 + 0.25 + 0.09) / 3)
    assert out.metrics["mse/attr1"] == pytest.approx((0.25 + 0.25) / 2)
    # Only attribute 0 of row 0 has a pair of observed, different scores (slot 1 better, 1.0 > 0.5),
    # and the head orders it the other way (1.0 > 0.5 for slot 0).
    assert out.metrics["accuracy/attr0"] == 0.0 and "accuracy/attr1" not in out.metrics
    assert out.metrics["rewards/accuracy"] == 0.0
    flipped = [[[0.5, 0.0], [1.0, 2.0]], [[0.3, -1.0], [NAN, NAN]]]
    out_f, _ = run("regression", mk(flipped, scores=s, valid=[[True, True], [True, False]]))
    assert out_f.metrics["accuracy/attr0"] == 1.0 == out_f.metrics["rewards/accuracy"]


def test_regression_dim_checks_and_unrated_records():
    r, s = [[[1.0, 0.0]]], [[[0.5, 0.5]]]
    assert run("regression", mk(r, scores=s), dim=2)[0].loss.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="dim=3.*length 2"):
        get_objective("regression")(mk(r, scores=s), dim=3)
    with pytest.raises(ValueError, match="dim"):
        get_objective("regression")(mk(r, scores=s), dim=-1)
    with pytest.raises(ValueError, match=r"rewards \[B, K, 2\]"):
        get_objective("regression")(mk([[[1.0, 0.0, 2.0]]], scores=s))
    out, g = run("regression", mk([[[1.0, 0.0]], [[2.0, 2.0]]], scores=[[[0.5, 0.5]], [[NAN, NAN]]]))
    assert out.per_example[1] == 0 and out.loss.item() == pytest.approx(0.25) and g[1].abs().max() == 0
    with pytest.raises(ValueError, match="score vectors"):
        get_objective("regression").check_data("scores", 2, 2, score_dim=None)


# ---------------------------------------------------------------- gated_bt
def test_gated_bt_value_and_gradients_in_rewards_and_gate():
    beta = 2.0
    r = [[[1.0, -0.5], [0.0, 0.5]], [[0.2, 0.3], [0.7, -1.0]]]  # [B, 2, m = 2]
    gate = T([[0.25, 0.75], [0.6, 0.4]], requires_grad=True)
    st = mk(r, RK, gate=gate)
    out = get_objective("gated_bt")(st, beta=beta)
    gr, gg = torch.autograd.grad(out.loss, (st.rewards, gate))
    # R = beta * gate . r; pairs: row 0 chosen col 0, row 1 chosen col 1
    dv = [[1.0 - 0.0, -0.5 - 0.5], [0.7 - 0.2, -1.0 - 0.3]]  # r(w) - r(l) per attribute
    z = [beta * sum(a * b for a, b in zip(gate[i].tolist(), dv[i])) for i in range(2)]
    assert out.loss.item() == pytest.approx(sum(-lsig(x) for x in z) / 2, rel=1e-15)
    k = [-sig(-x) / 2 for x in z]  # dL/dz per row
    g = gate.tolist()
    # dL/dr_a(w) = k * beta * gate_a, dL/dr_a(l) = -k * beta * gate_a
    sign = [[1, -1], [-1, 1]]  # row 0 chose column 0, row 1 column 1
    expect_r = [[[sign[b][c] * k[b] * beta * x for x in g[b]] for c in range(2)] for b in range(2)]
    torch.testing.assert_close(gr, T(expect_r), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        gg, T([[k[i] * beta * d for d in dv[i]] for i in range(2)]), rtol=1e-14, atol=0
    )
    assert out.metrics["gate/attr1"] == pytest.approx((0.75 + 0.4) / 2)


def test_gated_bt_one_hot_gate_is_bt_on_that_attribute_and_needs_its_gate():
    r = [[[1.0, -0.5], [0.0, 0.5]], [[0.2, 0.3], [0.7, -1.0]]]
    for a in (0, 1):
        gate = torch.nn.functional.one_hot(torch.tensor([a, a]), 2).to(D)
        out, g = run("gated_bt", mk(r, RK, gate=gate), dim=2)
        b, gb = run("bt", mk([[row[0][a], row[1][a]] for row in r], RK))
        same(out, b, g[..., a], gb)
        assert g[..., 1 - a].abs().max() == 0
    with pytest.raises(ValueError, match="gate"):
        get_objective("gated_bt")(mk(r, RK))
    with pytest.raises(ValueError, match="gate"):
        get_objective("gated_bt")(mk(r, RK, gate=[[1.0, 0.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="dim=3"):
        get_objective("gated_bt")(mk(r, RK, gate=[[1.0, 0.0]] * 2), dim=3)
    with pytest.raises(ValueError, match="beta"):
        get_objective("gated_bt")(mk(r, RK, gate=[[1.0, 0.0]] * 2), beta=0.0)


# ---------------------------------------------------------------- shared: ties, NaN padding, weights
PAIRWISE = {
    "bt": ({}, 1),
    "bt_margin": ({}, 1),
    "bt_pl": ({}, 1),
    "gated_bt": ({"dim": 2}, 2),
    "mixture": ({}, 2),
    "gpm": ({"dim": 2}, 2),
}


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_ties_and_nan_padding_are_masked_and_weights_multiply(name):
    hp, m = PAIRWISE[name]

    def rew(rows):
        return [[[x, 0.5 * x - 0.25][:m] if m > 1 else x for x in row] for row in rows]

    def extra(b):
        return {"gate": [[0.3, 0.7]] * b} if name in ("gated_bt", "mixture") else {}

    # Row 0 real; row 1 tied; row 2 has a NaN padded slot; row 3 real (chosen column 1).
    rows = [[1.0, -0.5], [0.3, 0.1], [0.7, NAN], [0.2, 0.7]]
    r = rew(rows)
    if m > 1:
        r[2][1] = [NAN] * m
    st = mk(r, [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], weights=[2.0, 7.0, 7.0, 0.5],
            valid=[[True, True], [True, True], [True, False], [True, True]], **extra(4))  # fmt: skip
    out, g = run(name, st, **hp)
    first = run(name, mk(rew([rows[0]]), [[0.0, 1.0]], **extra(1)), **hp)[0].loss.item()
    last = run(name, mk(rew([rows[3]]), [[1.0, 0.0]], **extra(1)), **hp)[0].loss.item()
    torch.testing.assert_close(out.per_example, T([first, 0.0, 0.0, last]), rtol=1e-14, atol=0)
    assert out.loss.item() == pytest.approx((2.0 * first + 0.5 * last) / 2.5, rel=1e-14)
    assert torch.isfinite(g).all() and g[1:3].abs().max() == 0
    assert all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_extreme_rewards_give_finite_loss_and_gradients(name):
    hp, m = PAIRWISE[name]
    r = [[[-1e4] * m, [1e4] * m], [[1e4] * m, [-1e4] * m]] if m > 1 else [[-1e4, 1e4], [1e4, -1e4]]
    if name == "gpm":
        r = [[[-1e4, 1.0], [1e4, 1.0]], [[1e4, 3.0], [-1e4, 0.0]]]
    extra = {"gate": [[0.3, 0.7]] * 2} if name in ("gated_bt", "mixture") else {}
    out, g = run(name, mk(r, RK, **extra), **hp)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all() and g.abs().sum() > 0
