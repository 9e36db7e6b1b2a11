"""Structured reward heads (METHODS.md section 5): mixture (MiCRo), the General Preference Model and
process reward models, against closed forms computed with `math` and hand-derived gradients, in float64.
Shared masking and extreme-value tests are in test_objectives_reward.py."""

import math

import pytest
import torch
from closed_forms import D, T, lsig, sig

from alignkit.objectives import SequenceStats, get_objective
from alignkit.objectives.reward_structured import gpm_score, prm_outcome

NAN = float("nan")
LOG2 = math.log(2)


def mk(rewards, ranks=None, labels=None, weights=None, valid=None, **extra):
    return SequenceStats(
        logps=None,
        rewards=T(rewards, requires_grad=True),
        ranks=T(ranks),
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


# ---------------------------------------------------------------- mixture
MIX_R = [[[1.0, -2.0], [-0.5, 1.0]], [[0.2, 0.4], [0.7, -0.6]]]  # [B, 2, H = 2]
MIX_D = [[1.5, -3.0], [0.5, -1.0]]  # r_h(w) - r_h(l) per row and head


def test_mixture_one_head_is_bt():
    one_head = [[[x] for x in row] for row in RW]
    a, ga = run("mixture", mk(one_head, RK, weights=[3.0, 1.0], gate=[[1.0], [1.0]]), num_heads=1)
    b, gb = run("bt", mk(RW, RK, weights=[3.0, 1.0]))
    same(a, b, ga[..., 0], gb, rtol=0)
    assert a.metrics["gate/head0"] == 1.0 and a.metrics["rewards/accuracy"] == b.metrics["rewards/accuracy"]
    assert a.metrics["rewards/margin"] == b.metrics["rewards/margin"]


@pytest.mark.parametrize("head", [0, 1])
def test_mixture_one_hot_gate_is_bt_on_that_head(head):
    gate = torch.nn.functional.one_hot(torch.tensor([head, head]), 2).to(D)
    a, ga = run("mixture", mk(MIX_R, RK, gate=gate))
    b, gb = run("bt", mk([[row[0][head], row[1][head]] for row in MIX_R], RK))
    same(a, b, ga[..., head], gb, rtol=0)
    assert ga[..., 1 - head].abs().max() == 0
    assert a.metrics[f"gate/head{head}"] == 1.0 and a.metrics[f"gate/head{1 - head}"] == 0.0


def test_mixture_value_and_gradients_in_rewards_and_gate():
    gate = T([[0.3, 0.7], [0.9, 0.1]], requires_grad=True)
    st = mk(MIX_R, RK, gate=gate)
    out = get_objective("mixture")(st)
    gr, gg = torch.autograd.grad(out.loss, (st.rewards, gate))
    g = gate.tolist()
    p = [sum(g[b][h] * sig(MIX_D[b][h]) for h in range(2)) for b in range(2)]
    assert out.loss.item() == pytest.approx(-sum(math.log(x) for x in p) / 2, rel=1e-15)
    # dL/dd_h = -gate_h * sigma(d_h) * sigma(-d_h) / P / B; dL/dgate_h = -sigma(d_h) / P / B
    dd = [[-g[b][h] * sig(MIX_D[b][h]) * sig(-MIX_D[b][h]) / p[b] / 2 for h in range(2)] for b in range(2)]
    expect = [[dd[0], [-x for x in dd[0]]], [[-x for x in dd[1]], dd[1]]]
    torch.testing.assert_close(gr, T(expect), rtol=1e-14, atol=0)
    torch.testing.assert_close(gg, T([[-sig(MIX_D[b][h]) / p[b] / 2 for h in range(2)] for b in range(2)]),
                               rtol=1e-14, atol=0)  # fmt: skip
    assert out.metrics["prob"] == pytest.approx(sum(p) / 2)
    assert p[0] < 0.5 < p[1] and out.metrics["rewards/accuracy"] == 0.5  # accuracy: P(w > l) > 1/2
    assert out.metrics["gate/head0"] == pytest.approx(0.6) and out.metrics["gate/head1"] == pytest.approx(0.4)
    mix = [[sum(g[b][h] * MIX_R[b][c][h] for h in range(2)) for c in range(2)] for b in range(2)]
    assert out.metrics["rewards/chosen"] == pytest.approx((mix[0][0] + mix[1][1]) / 2)


def test_mixture_is_finite_when_every_head_is_far_wrong_and_checks_its_head_count():
    out, g = run("mixture", mk([[[-800.0, -900.0], [0.0, 0.0]]], [[0.0, 1.0]], gate=[[0.5, 0.5]]))
    assert out.loss.item() == pytest.approx(800 + LOG2, rel=1e-14)  # -log(0.5 e^-800 + 0.5 e^-900)
    torch.testing.assert_close(g, T([[[-1.0, 0.0], [1.0, 0.0]]]), rtol=1e-14, atol=1e-40)
    with pytest.raises(ValueError, match="num_heads=3"):
        get_objective("mixture")(mk(MIX_R, RK, gate=[[0.5, 0.5]] * 2), num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        get_objective("mixture")(mk(MIX_R, RK, gate=[[0.5, 0.5]] * 2), num_heads=0)
    with pytest.raises(ValueError, match="gate"):
        get_objective("mixture")(mk(MIX_R, RK))


# ---------------------------------------------------------------- gpm
def test_gpm_score_is_exactly_antisymmetric_and_follows_the_papers_sign():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=gen, dtype=D) * 3, torch.randn(5, 6, generator=gen, dtype=D)
    for normalize in (True, False):
        s_ab, s_ba = gpm_score(a, b, 2.5, normalize), gpm_score(b, a, 2.5, normalize)
        assert torch.equal(s_ab, -s_ba) and torch.equal(
            gpm_score(a, a, 2.5, normalize), torch.zeros(5, dtype=D)
        )
        torch.testing.assert_close(
            torch.sigmoid(s_ab) + torch.sigmoid(s_ba), torch.ones(5, dtype=D), rtol=0, atol=1e-15
        )
    # The paper's R: R[2i, 2i+1] = -1, R[2i+1, 2i] = 1, and s = beta <R v_a, v_b> on unit vectors.
    R = torch.zeros(6, 6, dtype=D)
    for i in range(0, 6, 2):
        R[i, i + 1], R[i + 1, i] = -1.0, 1.0
    na, nb = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(gpm_score(a, b, 2.5), 2.5 * ((na @ R.T) * nb).sum(-1), rtol=1e-14, atol=1e-15)
    assert gpm_score(T([1.0, 0.0]), T([0.0, 1.0]), 1.0).item() == 1.0  # e0 is preferred to e1
    with pytest.raises(ValueError, match="even"):
        gpm_score(torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))


def test_gpm_value_and_gradient_unnormalised_and_normalised():
    beta = 0.7
    v = [[[1.0, 2.0, -0.5, 0.3], [0.4, -1.0, 2.0, 1.5]], [[0.3, 0.1, 0.0, -2.0], [1.0, 1.0, -1.0, 0.5]]]
    out, g = run("gpm", mk(v, RK), beta=beta, normalize=False)
    expect_g = []
    losses = []
    for row, (w, l) in zip(v, ((0, 1), (1, 0))):
        a, b = row[w], row[l]
        s = beta * (a[0] * b[1] - a[1] * b[0] + a[2] * b[3] - a[3] * b[2])
        losses.append(-lsig(s))
        k = -sig(-s) / 2  # dL/ds, mean over 2 rows
        ga = [k * beta * x for x in (b[1], -b[0], b[3], -b[2])]  # ds/da = beta R^T b
        gb = [k * beta * x for x in (-a[1], a[0], -a[3], a[2])]  # ds/db = beta R a
        expect_g.append([ga, gb] if w == 0 else [gb, ga])
    assert out.loss.item() == pytest.approx(sum(losses) / 2, rel=1e-14)
    torch.testing.assert_close(g, T(expect_g), rtol=1e-13, atol=1e-16)
    # Normalised: the same as feeding unit vectors (value), and the gradient matches finite differences.
    unit = [[[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in row] for row in v]
    n_out, _ = run("gpm", mk(v, RK), beta=beta)
    assert n_out.loss.item() == pytest.approx(
        run("gpm", mk(unit, RK), beta=beta, normalize=False)[0].loss.item()
    )
    st = mk(v, RK)
    assert torch.autograd.gradcheck(
        lambda r: get_objective("gpm")(SequenceStats(logps=None, rewards=r, ranks=st.ranks), beta=beta).loss,
        (st.rewards,),
    )
    assert n_out.metrics["rewards/accuracy"] == pytest.approx(sum(x < LOG2 for x in losses) / 2)


def test_gpm_fits_a_cyclic_triple_that_no_scalar_reward_can():
    # Unit vectors 120 degrees apart: s(a, b) = beta sin(120 deg) > 0 for a > b, b > c and c > a.
    ang = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    e = [[math.cos(t), math.sin(t)] for t in ang]
    pairs = [(0, 1), (1, 2), (2, 0)]  # a > b, b > c, c > a
    st = mk([[e[i], e[j]] for i, j in pairs], [[0.0, 1.0]] * 3)
    out, _ = run("gpm", st, dim=2, beta=4.0)
    probs = [sig(4.0 * math.sin(2 * math.pi / 3))] * 3
    assert all(p > 0.5 for p in probs) and out.metrics["rewards/accuracy"] == 1.0
    torch.testing.assert_close(out.per_example, T([-math.log(p) for p in probs]), rtol=1e-14, atol=0)
    # A scalar reward has d_ab + d_bc + d_ca = 0, so at least one pair has P <= 1/2, and by convexity its
    # best summed BT loss on the cycle is 3 log 2 (all rewards equal); GPM's is lower.
    assert out.per_example.sum().item() < 3 * LOG2
    bt_out, _ = run("bt", mk([[0.0, 0.0]] * 3, [[0.0, 1.0]] * 3))
    assert bt_out.per_example.sum().item() == pytest.approx(3 * LOG2)


def test_gpm_hyper_parameters_are_checked():
    v = [[[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]]
    for hp, msg in (
        ({"dim": 3}, "even"),
        ({"dim": 0}, "dim"),
        ({"beta": 0.0}, "beta"),
        ({"dim": 6}, "dim=6"),
    ):
        with pytest.raises(ValueError, match=msg):
            get_objective("gpm")(mk(v, [[0.0, 1.0]]), **hp)


# ---------------------------------------------------------------- prm
# One record, K = 2 responses of up to 3 steps; response 1 has 2 steps; NaN in missing steps.
STEP_X = [[[2.0, -1.0, 0.5], [1.0, 3.0, NAN]]]
STEP_M = torch.tensor([[[True, True, True], [True, True, False]]])
STEP_Y = [[[1.0, 0.0, 1.0], [1.0, 0.25, NAN]]]


def bce(x, y):
    return -(y * lsig(x) + (1 - y) * lsig(-x))


def test_prm_outcome_min_and_product_closed_forms():
    x, m = T(STEP_X), STEP_M
    torch.testing.assert_close(prm_outcome(x, m, "min"), T([[sig(-1.0), sig(1.0)]]), rtol=1e-15, atol=0)
    prod = [sig(2.0) * sig(-1.0) * sig(0.5), sig(1.0) * sig(3.0)]
    torch.testing.assert_close(prm_outcome(x, m, "product"), T([prod]), rtol=1e-14, atol=0)
    empty = torch.zeros(1, 2, 3, dtype=torch.bool)
    assert prm_outcome(x, empty, "min").tolist() == [[1.0, 1.0]] == prm_outcome(x, empty, "product").tolist()
    xg = T(STEP_X, requires_grad=True)
    (g,) = torch.autograd.grad(prm_outcome(xg, m, "product").sum(), xg)
    assert torch.isfinite(g).all() and g[0, 1, 2] == 0
    with pytest.raises(ValueError, match="aggregate"):
        prm_outcome(x, m, "mean")


def test_prm_step_bce_value_gradient_and_metrics():
    st = mk(STEP_X, ranks=[[0.0, 1.0]], step_mask=STEP_M, step_labels=STEP_Y)
    out, g = run("prm", st)
    steps = [(2.0, 1.0), (-1.0, 0.0), (0.5, 1.0), (1.0, 1.0), (3.0, 0.25)]
    assert out.loss.item() == pytest.approx(sum(bce(x, y) for x, y in steps) / 5, rel=1e-14)
    # d BCE / dx = sigma(x) - y, over the record's 5 steps
    expect = [[[(sig(x) - y) / 5 for x, y in steps[:3]], [(sig(x) - y) / 5 for x, y in steps[3:]] + [0.0]]]
    torch.testing.assert_close(g, T(expect), rtol=1e-14, atol=0)
    assert out.metrics["steps/accuracy"] == pytest.approx(4 / 5)  # x = 3 with y = .25 is wrong
    # min outcome: response 0 sigma(-1) < response 1 sigma(1) while response 0 ranks first: wrong order
    assert out.metrics["rewards/accuracy"] == 0.0
    assert out.metrics["outcome/mean"] == pytest.approx((sig(-1.0) + sig(1.0)) / 2)
    prod = run(
        "prm", mk(STEP_X, ranks=[[0.0, 1.0]], step_mask=STEP_M, step_labels=STEP_Y), aggregate="product"
    )[0]
    assert prod.loss.item() == out.loss.item() and prod.metrics["rewards/accuracy"] == 0.0
    lab = run("prm", mk(STEP_X, labels=[[1.0, 1.0]], step_mask=STEP_M, step_labels=STEP_Y))[0]
    assert lab.metrics["outcome/accuracy"] == 0.5  # sigma(-1) < 1/2 for a desirable response


def test_prm_records_are_means_over_their_steps_weighted_and_checked():
    x = [[[2.0, NAN], [NAN, NAN]], [[-1.0, 0.5], [NAN, NAN]], [[NAN, NAN], [NAN, NAN]]]
    m = torch.tensor([[[True, False], [False, False]], [[True, True], [True, True]], [[False, False]] * 2])
    y = [[[1.0, NAN], [NAN, NAN]], [[0.0, 1.0], [NAN, NAN]], [[NAN, NAN]] * 2]
    # Row 1's second response is a padded slot (valid False) even though its step_mask is set.
    valid = [[True, True], [True, False], [True, True]]
    st = mk(x, labels=[[1.0, 0.0]] * 3, weights=[1.0, 2.0, 5.0], valid=valid, step_mask=m, step_labels=y)
    out, g = run("prm", st)
    per = [bce(2.0, 1.0), (bce(-1.0, 0.0) + bce(0.5, 1.0)) / 2, 0.0]
    torch.testing.assert_close(out.per_example, T(per), rtol=1e-14, atol=0)
    assert out.loss.item() == pytest.approx((per[0] + 2 * per[1]) / 3, rel=1e-14)
    assert torch.isfinite(g).all() and g[2].abs().max() == 0 and g[1, 1].abs().max() == 0
    with pytest.raises(ValueError, match="aggregate"):
        get_objective("prm")(st, aggregate="max")
    with pytest.raises(ValueError, match=r"step_mask"):
        get_objective("prm")(mk(x, labels=[[1.0, 0.0]] * 3))
    bad = mk(STEP_X, labels=[[1.0, 0.0]], step_mask=STEP_M, step_labels=[[[2.0, 0.0, 1.0], [1.0, 0.0, NAN]]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_objective("prm")(bad)
