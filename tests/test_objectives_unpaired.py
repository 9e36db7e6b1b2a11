"""Unpaired and negatives-only objectives (kto, bco, d2o, unlikelihood) against closed forms computed
here with `math`, hand-derived gradients, and the properties of METHODS.md section 2. Float64."""

import io
import json
import math

import pytest
import torch
from closed_forms import D, T, lsig, sig

from alignkit.objectives import SequenceStats, build_objective, get_objective
from alignkit.objectives.unpaired import UL_FLOOR, neg_log1m_exp

B_ = 0.1


def mk(logps, ref=None, labels=None, valid=None, weights=None, kl=None, ranks=None):
    extra = {} if kl is None else {"kl_logratios": kl if isinstance(kl, torch.Tensor) else T(kl)}
    return SequenceStats(
        logps=T(logps, requires_grad=True),
        ref_logps=T(ref),
        labels=T(labels),
        ranks=T(ranks),
        weights=T(weights),
        valid=None if valid is None else torch.tensor(valid),
        extra=extra,
    )


def run(name, stats, state=None, **hp):
    out = get_objective(name)(stats, state=state, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    return out, grad


def test_registration_declares_needs():
    kto, bco, d2o, ul = (get_objective(n) for n in ("kto", "bco", "d2o", "unlikelihood"))
    assert kto.extras == ("kl_logratios",) and kto.needs_reference and kto.label_kinds == ("labels",)
    assert set(kto.defaults) == {"beta", "desirable_weight", "undesirable_weight"} and not kto.stateful
    assert bco.stateful and bco.defaults == {"beta": 0.1, "momentum": 0.99} and bco.needs_reference
    assert d2o.min_responses == 2 and d2o.defaults == {"beta": 0.1, "alpha": None}
    assert ul.needs_token_logps and not ul.needs_reference and ul.defaults == {"alpha": 1.0}
    assert not (d2o.stateful or ul.stateful)
    with pytest.raises(ValueError, match="labels.*'ranks'"):
        kto.check_data("ranks", 1, 1)
    with pytest.raises(ValueError, match="at least 2"):
        d2o.check_data("labels", 1, 3)


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("kto", {"beta": 0.0}, "beta"),
        ("kto", {"desirable_weight": -1.0}, "desirable_weight"),
        ("kto", {"undesirable_weight": -0.1}, "undesirable_weight"),
        ("bco", {"beta": -1.0}, "beta"),
        ("bco", {"momentum": 1.0}, "momentum"),
        ("bco", {"momentum": -0.1}, "momentum"),
        ("d2o", {"beta": 0.0}, "beta"),
        ("d2o", {"alpha": 0.0}, "alpha"),
        ("unlikelihood", {"alpha": -1.0}, "alpha"),
    ],
)
def test_bad_hyper_parameters_are_rejected(name, hp, match):
    st = mk([[-1.0, -2.0]], [[-1.0, -2.0]], [[1.0, 0.0]], kl=[0.0])
    st.token_logps, st.token_mask = (
        torch.full((1, 2, 1), -1.0, dtype=D),
        torch.ones(1, 2, 1, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match=match):
        get_objective(name)(st, **hp)


@pytest.mark.parametrize("name", ["kto", "bco", "d2o"])
def test_missing_labels_say_so(name):
    with pytest.raises(ValueError, match="labels 1.0 / 0.0"):
        get_objective(name)(mk([[-1.0, -2.0]], [[-1.0, -2.0]], kl=[0.0]))


# ---------------------------------------------------------------- kto
def test_kto_at_reference_costs_half_lambda_per_example():
    st = mk([[-2.0], [-3.0], [-1.0]], [[-2.0], [-3.0], [-1.0]], [[1.0], [0.0], [1.0]], kl=[0.0, 0.0, 0.0])
    out, g = run("kto", st, beta=B_, desirable_weight=2.0, undesirable_weight=0.5)
    torch.testing.assert_close(out.per_example, T([1.0, 0.25, 1.0]))
    assert out.loss.item() == pytest.approx(0.75, rel=1e-15)
    # d/drho lam_D sigma(beta(z0 - rho)) = -lam_D beta/4 at rho = z0; undesirable +lam_U beta/4; mean over 3
    torch.testing.assert_close(g, T([[-2.0 * B_ / 4 / 3], [0.5 * B_ / 4 / 3], [-2.0 * B_ / 4 / 3]]))
    assert out.metrics["kl"] == 0.0 and out.metrics["rewards/chosen"] == 0.0
    assert (out.metrics["count/chosen"], out.metrics["count/rejected"]) == (2.0, 1.0)


def test_kto_reference_point_is_never_negative():
    base = run("kto", mk([[-1.0], [-4.0]], [[-2.0], [-3.0]], [[1.0], [0.0]], kl=[0.0, 0.0]))
    neg = run("kto", mk([[-1.0], [-4.0]], [[-2.0], [-3.0]], [[1.0], [0.0]], kl=[-3.0, 1.0]))  # mean -1
    assert neg[0].metrics["kl"] == 0.0
    torch.testing.assert_close(neg[0].loss, base[0].loss, rtol=0, atol=0)
    torch.testing.assert_close(neg[1], base[1], rtol=0, atol=0)


def test_kto_value_gradient_and_metrics_with_positive_kl():
    beta, lam_d, lam_u = 0.5, 1.5, 0.75
    rho, labels, kl = [1.0, -2.0, 0.25], [1.0, 0.0, 0.0], [0.5, 1.5, 1.0]
    z0 = sum(kl) / 3  # 1.0
    st = mk([[r - 3.0] for r in rho], [[-3.0]] * 3, [[x] for x in labels], kl=kl)
    out, g = run("kto", st, beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    per, dper = [], []
    for r, y in zip(rho, labels):
        if y:
            a = beta * (z0 - r)  # lam_D (1 - sigma(beta(rho - z0))) = lam_D sigma(a)
            per.append(lam_d * sig(a))
            dper.append(-lam_d * beta * sig(a) * sig(-a))
        else:
            b = beta * (r - z0)
            per.append(lam_u * sig(b))
            dper.append(lam_u * beta * sig(b) * sig(-b))
    torch.testing.assert_close(out.per_example, T(per))
    assert out.loss.item() == pytest.approx(sum(per) / 3, rel=1e-14)
    torch.testing.assert_close(g, T([[d / 3] for d in dper]))
    assert out.metrics["kl"] == pytest.approx(z0)
    assert out.metrics["rewards/chosen"] == pytest.approx(beta * 1.0)
    assert out.metrics["rewards/rejected"] == pytest.approx(beta * (-2.0 + 0.25) / 2)
    assert out.metrics["logps/chosen"] == pytest.approx(-2.0)


def test_kto_reference_point_is_detached():
    kl = T([2.0, 1.0], requires_grad=True)
    st = mk([[-1.0], [-4.0]], [[-2.0], [-3.0]], [[1.0], [0.0]], kl=kl)
    out = get_objective("kto")(st)
    g_logps, g_kl = torch.autograd.grad(out.loss, [st.logps, kl], allow_unused=True)
    assert g_kl is None and torch.isfinite(g_logps).all()


def test_kto_without_kl_extra_names_it():
    with pytest.raises(ValueError, match="kl_logratios"):
        get_objective("kto")(mk([[-1.0]], [[-1.0]], [[1.0]]))


def test_kto_record_weights_multiply_rows_and_k_gt_1_averages_slots():
    # row 0: a desirable and an undesirable slot (rho 1, -1); row 1: one desirable slot (rho 0) + padding
    st = mk(
        [[0.0, -2.0], [-1.0, 0.0]],
        [[-1.0, -1.0], [-1.0, 0.0]],
        [[1.0, 0.0], [1.0, 1.0]],
        valid=[[True, True], [True, False]],
        weights=[3.0, 1.0],
        kl=[0.0, 0.0],
    )
    out, g = run("kto", st, beta=1.0)
    r0 = (sig(-1.0) + sig(-1.0)) / 2
    torch.testing.assert_close(out.per_example, T([r0, 0.5]))
    assert out.loss.item() == pytest.approx((3 * r0 + 0.5) / 4, rel=1e-14)
    d = sig(-1.0) * sig(1.0)
    torch.testing.assert_close(g, T([[-3 * d / 2 / 4, 3 * d / 2 / 4], [-0.25 / 4, 0.0]]))


# ---------------------------------------------------------------- bco
BCO_RHO = [[1.0], [-2.0], [0.5]]
BCO_LAB = [[1.0], [0.0], [0.0]]


def bco_stats(rho, labels=BCO_LAB, **kw):
    return mk([[r - 3.0 for r in row] for row in rho], [[-3.0] * len(row) for row in rho], labels, **kw)


def bco_expect(rho, labels, beta, delta):
    """per_example and d per / d s for one-slot rows with the threshold delta."""
    per, dper = [], []
    for (r,), (y,) in zip(rho, labels):
        z = beta * r - delta
        per.append(-lsig(z) if y else -lsig(-z))
        dper.append(-beta * sig(-z) if y else beta * sig(z))
    return per, dper


def test_bco_first_call_threshold_is_batch_mean_and_loss_uses_it():
    state = {}
    out, g = run("bco", bco_stats(BCO_RHO), state=state, beta=0.5)
    delta = 0.5 * (1.0 - 2.0 + 0.5) / 3
    assert state == {"delta": pytest.approx(delta, rel=1e-15), "count": 3}
    assert type(state["delta"]) is float and type(state["count"]) is int
    per, dper = bco_expect(BCO_RHO, BCO_LAB, 0.5, delta)
    torch.testing.assert_close(out.per_example, T(per))
    assert out.loss.item() == pytest.approx(sum(per) / 3, rel=1e-14)
    torch.testing.assert_close(g, T([[d / 3] for d in dper]))  # delta is a constant: no gradient through it
    assert out.metrics["delta"] == pytest.approx(delta)
    assert out.metrics["rewards/chosen"] == pytest.approx(0.5) and out.metrics["count/rejected"] == 2.0


def test_bco_second_call_follows_the_ema():
    state, m = {}, 0.9
    get_objective("bco")(bco_stats(BCO_RHO), state=state, beta=0.5, momentum=m)
    rho2, lab2 = [[2.0], [0.0]], [[1.0], [0.0]]
    out, g = run("bco", bco_stats(rho2, lab2), state=state, beta=0.5, momentum=m)
    delta = m * (0.5 * -0.5 / 3) + (1 - m) * 0.5 * 1.0
    assert state["delta"] == pytest.approx(delta, rel=1e-15) and state["count"] == 5
    per, dper = bco_expect(rho2, lab2, 0.5, delta)
    assert out.loss.item() == pytest.approx(sum(per) / 2, rel=1e-14)
    torch.testing.assert_close(g, T([[d / 2] for d in dper]))


def test_bco_momentum_none_is_the_mean_of_every_reward_seen():
    state = {}
    get_objective("bco")(bco_stats(BCO_RHO), state=state, beta=1.0, momentum=None)
    get_objective("bco")(bco_stats([[2.0], [4.0]], [[1.0], [0.0]]), state=state, beta=1.0, momentum=None)
    assert state["delta"] == pytest.approx((1.0 - 2.0 + 0.5 + 2.0 + 4.0) / 5, rel=1e-15)


def test_bco_padded_slots_do_not_enter_the_threshold():
    state = {}
    st = bco_stats(
        [[1.0, float("nan")], [3.0, 5.0]], [[1.0, 0.0], [0.0, 1.0]], valid=[[True, False], [True, True]]
    )
    out, g = run("bco", st, state=state, beta=1.0)
    assert state == {"delta": pytest.approx(3.0), "count": 3}
    assert torch.isfinite(out.loss) and g[0, 1].item() == 0.0


def test_bco_resume_from_saved_state_reproduces_the_run():
    batches = [bco_stats(BCO_RHO), bco_stats([[2.0], [0.0]], [[1.0], [0.0]]), bco_stats([[-1.0]], [[1.0]])]
    state = {}
    straight = [get_objective("bco")(b, state=state).loss.item() for b in batches]
    first = {}
    resumed = [get_objective("bco")(batches[0], state=first).loss.item()]
    buf = io.BytesIO()
    torch.save(json.loads(json.dumps(first)), buf)  # survives JSON and torch.load(weights_only=True)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    resumed += [get_objective("bco")(b, state=restored).loss.item() for b in batches[1:]]
    assert resumed == straight and restored == state
    obj = build_objective("bco")
    obj(batches[0])
    saved = obj.state_dict()
    fresh = build_objective("bco")
    fresh.load_state_dict(saved)
    assert [fresh(b).loss.item() for b in batches[1:]] == straight[1:]


# ---------------------------------------------------------------- d2o
def test_d2o_one_sample_one_negative_is_dpo_with_the_sample_chosen():
    s, r = [[-5.0, -3.0], [-2.0, -4.5]], [[-4.0, -3.5], [-3.0, -3.5]]
    d2o = mk(s, r, labels=[[0.0, 1.0], [1.0, 0.0]], weights=[1.0, 3.0])
    dpo = mk(s, r, ranks=[[1.0, 0.0], [0.0, 1.0]], weights=[1.0, 3.0])
    a, ga = run("d2o", d2o, beta=0.3)
    b, gb = run("dpo", dpo, beta=0.3)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.per_example, b.per_example)
    torch.testing.assert_close(ga, gb)
    assert a.metrics["rewards/margin"] == pytest.approx(b.metrics["rewards/margin"])


def test_d2o_value_and_gradient_with_three_samples():
    beta, alpha = 0.2, 0.5
    rho = [0.5, -1.0, 2.0, -3.0]  # three samples, then the human negative
    st = mk([[x - 1.0 for x in rho]], [[-1.0] * 4], [[1.0, 1.0, 1.0, 0.0]])
    out, g = run("d2o", st, beta=beta, alpha=alpha)
    z = beta / 3 * (0.5 - 1.0 + 2.0) - alpha * -3.0
    assert out.loss.item() == pytest.approx(-lsig(z), rel=1e-14)
    d = -sig(-z)
    torch.testing.assert_close(g, T([[d * beta / 3] * 3 + [-d * alpha]]))
    assert out.metrics["rewards/chosen"] == pytest.approx(beta * 0.5)
    assert out.metrics["rewards/rejected"] == pytest.approx(-1.5) and out.metrics["rewards/accuracy"] == 1.0


def test_d2o_alpha_defaults_to_beta_and_masks_rows_without_both_labels():
    nan = float("nan")
    s = [[-1.0, -2.0, -4.0], [-1.0, -2.0, nan], [-1.0, nan, nan]]
    r = [[-1.5, -1.5, -3.0], [-1.0, -1.0, nan], [-2.0, nan, nan]]
    valid = [[True, True, True], [True, True, False], [True, False, False]]
    st = mk(s, r, [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], valid=valid)
    out, g = run("d2o", st, beta=0.4)
    z = 0.4 / 2 * (0.5 - 0.5) - 0.4 * -1.0
    torch.testing.assert_close(out.per_example, T([-lsig(z), 0.0, 0.0]))
    assert out.loss.item() == pytest.approx(-lsig(z), rel=1e-14)
    assert g[1:].abs().max().item() == 0.0 and torch.isfinite(g).all()


# ---------------------------------------------------------------- unlikelihood
P_BAD, P_GOOD = [0.5, 0.2, 0.9], [0.5, 0.25]


def ul_stats(labels=((1.0,), (0.0,)), ranks=None):
    tok = T(
        [[[math.log(p) for p in P_GOOD] + [float("nan")]], [[math.log(p) for p in P_BAD]]], requires_grad=True
    )
    mask = torch.tensor([[[True, True, False]], [[True, True, True]]])
    st = SequenceStats(
        logps=T([[0.0], [0.0]]), labels=T(labels), ranks=T(ranks), token_logps=tok, token_mask=mask
    )
    return st


def test_unlikelihood_value_and_gradient_closed_form():
    alpha = 0.7
    st = ul_stats()
    out = get_objective("unlikelihood")(st, alpha=alpha)
    nll = -(math.log(0.5) + math.log(0.25)) / 2
    ul = sum(-math.log1p(-p) for p in P_BAD) / 3
    torch.testing.assert_close(out.per_example, T([nll, alpha * ul]))
    assert out.loss.item() == pytest.approx((nll + alpha * ul) / 2, rel=1e-14)
    (g,) = torch.autograd.grad(out.loss, st.token_logps)
    torch.testing.assert_close(g[0, 0, :2], T([-1 / 2 / 2] * 2))
    assert g[0, 0, 2].item() == 0.0  # a NaN on a masked token reaches neither loss nor gradient
    expect = [alpha * p / (1 - p) / 3 / 2 for p in P_BAD]  # d/dlogp of -log(1 - e^logp) = p / (1 - p)
    torch.testing.assert_close(g[1, 0], T(expect))
    assert (g[1, 0] > 0).all()  # descent lowers every token's probability of the undesirable response
    assert out.metrics["nll"] == pytest.approx(nll) and out.metrics["unlikelihood"] == pytest.approx(ul)


def test_unlikelihood_desirable_part_is_sft_token_mean_nll():
    tok = T(
        [[[-1.0, -2.0, 0.0], [-0.5, -0.5, -3.5]], [[-4.0, 0.0, 0.0], [-1.0, -1.0, 0.0]]], requires_grad=True
    )
    mask = torch.tensor([[[1, 1, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 0]]], dtype=torch.bool)
    labels, weights = T([[1.0, 1.0], [1.0, 0.0]]), T([2.0, 1.0])
    lengths = mask.sum(-1).to(D)
    st = SequenceStats(logps=(tok * mask).sum(-1), lengths=lengths, labels=labels, weights=weights)
    st.token_logps, st.token_mask = tok, mask
    ul = get_objective("unlikelihood")(st, alpha=0.0)
    sft = get_objective("sft")(st)
    # row 1 has an undesirable slot: with alpha = 0 it adds 0 but still counts in the row mean
    torch.testing.assert_close(ul.per_example, sft.per_example * T([1.0, 0.5]))
    st.labels = T([[1.0, 1.0], [1.0, 1.0]])
    a, b = get_objective("unlikelihood")(st), get_objective("sft")(st)
    torch.testing.assert_close(a.loss, b.loss)
    (ga,) = torch.autograd.grad(a.loss, tok, retain_graph=True)
    (gb,) = torch.autograd.grad(b.loss, tok)
    torch.testing.assert_close(ga, gb)


def test_unlikelihood_term_is_finite_with_positive_slope_near_probability_one():
    c = math.log1p(-UL_FLOOR)
    x = T([math.log(0.5), c * 1.5, c, c / 2, -1e-300, 0.0], requires_grad=True)
    y = neg_log1m_exp(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all() and (g > 0).all()
    assert y[0].item() == pytest.approx(math.log(2), rel=1e-15)
    assert y[1].item() == pytest.approx(-math.log(-math.expm1(1.5 * c)), rel=1e-9)  # exact below the cap
    slope = (1 - UL_FLOOR) / UL_FLOOR
    assert y[-1].item() == pytest.approx(-math.log(UL_FLOOR) - slope * c, rel=1e-9)  # linear above it
    assert g[-1].item() == pytest.approx(slope, rel=1e-9) and g[2].item() == pytest.approx(slope, rel=1e-6)


def test_unlikelihood_reads_k2_ranks_as_chosen_and_rejected():
    tok = T([[[-1.0, -2.0], [-0.1, -0.3]]], requires_grad=True)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    by_rank = SequenceStats(logps=T([[0.0, 0.0]]), ranks=T([[1.0, 0.0]]), token_logps=tok, token_mask=mask)
    by_label = SequenceStats(logps=T([[0.0, 0.0]]), labels=T([[0.0, 1.0]]), token_logps=tok, token_mask=mask)
    a, b = get_objective("unlikelihood")(by_rank), get_objective("unlikelihood")(by_label)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    assert a.metrics["nll"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="per-token"):
        get_objective("unlikelihood")(SequenceStats(logps=T([[0.0]]), labels=T([[1.0]])))


# ---------------------------------------------------------------- shared: padding never leaks
@pytest.mark.parametrize("name", ["kto", "bco", "d2o", "unlikelihood"])
def test_padded_slots_reach_neither_loss_nor_gradient(name):
    def build(fill):
        s = T([[-1.0, -2.0, fill], [-3.0, -0.5, -1.5]], requires_grad=True)
        st = SequenceStats(
            logps=s,
            ref_logps=T([[-1.5, -1.0, fill], [-2.0, -1.0, -1.0]]),
            labels=T([[1.0, 0.0, fill], [0.0, 1.0, 1.0]]),
            weights=T([1.0, 2.0]),
            valid=torch.tensor([[True, True, False], [True, True, True]]),
            extra={"kl_logratios": T([0.3, 0.1])},
        )
        tok = T(
            [[[-0.5, -1.0], [-0.2, -0.7], [fill, fill]], [[-1.0, -0.1], [-2.0, -0.3], [-0.4, -0.4]]],
            requires_grad=True,
        )
        st.token_logps, st.token_mask = tok, torch.ones(2, 3, 2, dtype=torch.bool)
        out = get_objective(name)(st, state={})
        wrt = tok if name == "unlikelihood" else s
        (g,) = torch.autograd.grad(out.loss, wrt)
        return out, g

    nan_out, nan_g = build(float("nan"))
    ok_out, ok_g = build(-7.0)
    assert torch.isfinite(nan_out.loss) and torch.isfinite(nan_g).all()
    torch.testing.assert_close(nan_out.loss, ok_out.loss, rtol=0, atol=0)
    torch.testing.assert_close(nan_g, ok_g, rtol=0, atol=0)
    assert nan_g[0, 2].abs().max().item() == 0.0
    assert all(math.isfinite(v) for v in nan_out.metrics.values()) and nan_out.metrics == ok_out.metrics
