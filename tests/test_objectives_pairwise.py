"""Pairwise objectives against closed forms computed here with `math`, hand-derived gradients, and the
property METHODS.md section 1 names for each. Everything in float64."""

import math

import pytest
import torch
from closed_forms import D, T, lsig, sig

from alignkit.objectives import SequenceStats, get_objective
from alignkit.objectives.pairwise import _expm1_capped, _log_odds

B_ = 0.1  # beta used throughout unless a test says otherwise
PAIR_OBJECTIVES = ["dpo", "cdpo", "rdpo", "ipo", "hinge", "fdpo", "simpo", "orpo", "cpo", "rpo", "asft"]
ALL = [*PAIR_OBJECTIVES, "jpo", "poft"]


def mk(logps, ref=None, ranks=None, scores=None, lengths=None, weights=None, valid=None, labels=None):
    if ranks is None and scores is None and labels is None:
        ranks = [[0.0, 1.0]] * len(logps)
    return SequenceStats(
        logps=T(logps, requires_grad=True),
        ref_logps=T(ref),
        ranks=T(ranks),
        scores=T(scores),
        lengths=T(lengths),
        weights=T(weights),
        labels=T(labels),
        valid=None if valid is None else torch.tensor(valid),
    )


def run(name, stats, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps, allow_unused=True)
    return out, grad


# Two rows; row 1 has the chosen response in column 1.  rho_w = 0.5, 1.0; rho_l = -1.0, -0.5.
S = [[-3.0, -5.0], [-4.0, -2.5]]
R = [[-3.5, -4.0], [-3.5, -3.5]]
RK = [[0.0, 1.0], [1.0, 0.0]]
DELTAS = [1.5, 1.5 + 0.0]  # row 0: 0.5-(-1); row 1: (-2.5+3.5)-(-4+3.5) = 1.5
W_COL = [0, 1]


def expect_grad(per_row_dw, per_row_dl):
    """[2, 2] gradient of a mean over the two rows from d per/d s(w) and d per/d s(l) per row."""
    g = [[0.0, 0.0], [0.0, 0.0]]
    for b in range(2):
        g[b][W_COL[b]] = per_row_dw[b] / 2
        g[b][1 - W_COL[b]] = per_row_dl[b] / 2
    return T(g)


# ---------------------------------------------------------------- dpo and its label-noise variants
def test_dpo_at_reference_is_log2_with_half_beta_gradients():
    out, g = run("dpo", mk(R, R, RK), beta=0.3)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-15)
    torch.testing.assert_close(g, expect_grad([-0.15, -0.15], [0.15, 0.15]))  # -+beta/2, averaged over B=2
    assert out.metrics["rewards/margin"] == 0.0 and out.metrics["rewards/accuracy"] == 0.0


def test_dpo_value_gradient_and_metrics():
    out, g = run("dpo", mk(S, R, RK), beta=B_)
    per = [-lsig(B_ * d) for d in DELTAS]
    torch.testing.assert_close(out.per_example, T(per))
    assert out.loss.item() == pytest.approx(sum(per) / 2, rel=1e-14)
    dw = [-B_ * sig(-B_ * d) for d in DELTAS]
    torch.testing.assert_close(g, expect_grad(dw, [-x for x in dw]))
    assert out.metrics["rewards/chosen"] == pytest.approx(B_ * 0.75)
    assert out.metrics["rewards/rejected"] == pytest.approx(B_ * -0.75)
    assert out.metrics["rewards/accuracy"] == 1.0
    assert out.metrics["logps/chosen"] == pytest.approx(-2.75) and out.metrics["logps/rejected"] == -4.5


def test_ln_dpo_with_equal_lengths_is_dpo_at_beta_over_length():
    """LN-DPO divides each log-ratio by its length: with n(w) = n(l) = L it is dpo at β/L, value and gradient."""
    for L in (1.0, 4.0, 37.0):
        ln, g_ln = run("dpo", mk(S, R, RK, lengths=[[L, L], [L, L]]), beta=0.5, length_normalize=True)
        ref, g_ref = run("dpo", mk(S, R, RK, lengths=[[L, L], [L, L]]), beta=0.5 / L)
        torch.testing.assert_close(ln.per_example, ref.per_example)
        torch.testing.assert_close(g_ln, g_ref)
        assert ln.metrics["rewards/margin"] == pytest.approx(ref.metrics["rewards/margin"])


def test_ln_dpo_unequal_lengths_value_and_gradient():
    """−logσ(β(ρw/nw − ρl/nl)); d/ds(w) = −(β/nw)·σ(−z), d/ds(l) = +(β/nl)·σ(−z), halved by the mean over B = 2."""
    beta, lengths = 0.5, [[2.0, 5.0], [4.0, 3.0]]  # row 1's chosen response is column 1 (n = 3)
    out, g = run("dpo", mk(S, R, RK, lengths=lengths), beta=beta, length_normalize=True)
    rho = [[0.5, -1.0], [-0.5, 1.0]]  # s − s_ref per column
    n_w, n_l = [2.0, 3.0], [5.0, 4.0]
    rho_w, rho_l = [rho[0][0], rho[1][1]], [rho[0][1], rho[1][0]]
    z = [beta * (rho_w[b] / n_w[b] - rho_l[b] / n_l[b]) for b in range(2)]
    torch.testing.assert_close(out.per_example, T([-lsig(x) for x in z]))
    torch.testing.assert_close(g, expect_grad([-beta / n_w[b] * sig(-z[b]) for b in range(2)],
                                              [beta / n_l[b] * sig(-z[b]) for b in range(2)]))
    assert out.metrics["rewards/chosen"] == pytest.approx(beta * (0.25 + 1.0 / 3) / 2)


def test_cdpo_value_zero_smoothing_and_minimiser():
    eps = 0.2
    out, g = run("cdpo", mk(S, R, RK), beta=B_, label_smoothing=eps)
    z = B_ * 1.5
    assert out.loss.item() == pytest.approx(-(1 - eps) * lsig(z) - eps * lsig(-z), rel=1e-14)
    dw = B_ * (-(1 - eps) * sig(-z) + eps * sig(z))
    torch.testing.assert_close(g, expect_grad([dw, dw], [-dw, -dw]))
    d0, g0 = run("dpo", mk(S, R, RK), beta=B_)
    c0, gc = run("cdpo", mk(S, R, RK), beta=B_, label_smoothing=0.0)
    torch.testing.assert_close(c0.loss, d0.loss, rtol=0, atol=0)
    torch.testing.assert_close(gc, g0)
    star = math.log((1 - eps) / eps) / B_  # Delta at the minimiser
    at_min, g_min = run("cdpo", mk([[star, 0.0]], [[0.0, 0.0]]), beta=B_, label_smoothing=eps)
    assert g_min.abs().max().item() < 1e-15
    for off in (-0.5, 0.5):
        near, _ = run("cdpo", mk([[star + off, 0.0]], [[0.0, 0.0]]), beta=B_, label_smoothing=eps)
        assert near.loss.item() > at_min.loss.item()


def test_rdpo_value_and_unbiased_under_flips():
    eps = 0.3
    out, _ = run("rdpo", mk(S, R, RK), beta=B_, flip_rate=eps)
    z = B_ * 1.5
    assert out.loss.item() == pytest.approx(
        ((1 - eps) * -lsig(z) - eps * -lsig(-z)) / (1 - 2 * eps), rel=1e-13
    )
    clean, flipped = mk(S, R, RK), mk(S, R, [[1 - r for r in row] for row in RK])
    a, ga = run("rdpo", clean, beta=B_, flip_rate=eps)
    b, gb = run("rdpo", flipped, beta=B_, flip_rate=eps)
    d, gd = run("dpo", mk(S, R, RK), beta=B_)
    torch.testing.assert_close((1 - eps) * a.loss + eps * b.loss, d.loss)
    torch.testing.assert_close((1 - eps) * ga + eps * gb, gd)
    with pytest.raises(ValueError, match="flip_rate"):
        get_objective("rdpo")(clean, flip_rate=0.5)


# ---------------------------------------------------------------- ipo, hinge
def test_ipo_value_gradient_and_minimiser():
    beta = 0.25  # target margin 1/(2 beta) = 2
    out, g = run("ipo", mk(S, R, RK), beta=beta)
    assert out.loss.item() == pytest.approx((1.5 - 2.0) ** 2, rel=1e-14)
    dw = 2 * (1.5 - 2.0)
    torch.testing.assert_close(g, expect_grad([dw, dw], [-dw, -dw]))
    at_min, g_min = run("ipo", mk([[2.0, 0.0]], [[0.0, 0.0]]), beta=beta)
    assert at_min.loss.item() == 0.0 and g_min.abs().max().item() == 0.0


def test_ipo_length_normalize_uses_mean_token_log_ratios():
    st = mk([[-3.0, -5.0]], [[-4.0, -4.0]], lengths=[[2.0, 4.0]])
    out, g = run("ipo", st, beta=0.5, length_normalize=True)
    delta = 1.0 / 2 - (-1.0) / 4  # 0.75
    assert out.loss.item() == pytest.approx((delta - 1.0) ** 2, rel=1e-14)
    torch.testing.assert_close(g, T([[2 * (delta - 1) / 2, -2 * (delta - 1) / 4]]))
    assert out.metrics["rewards/chosen"] == pytest.approx(0.25)


def test_hinge_zero_beyond_margin_linear_below():
    out, g = run("hinge", mk([[15.0, 0.0]], [[0.0, 0.0]]), beta=B_)  # beta*Delta = 1.5
    assert out.loss.item() == 0.0 and g.abs().max().item() == 0.0
    out, g = run("hinge", mk([[5.0, 0.0]], [[0.0, 0.0]]), beta=B_)  # beta*Delta = 0.5
    assert out.loss.item() == pytest.approx(0.5, rel=1e-14)
    torch.testing.assert_close(g, T([[-B_, B_]]))


# ---------------------------------------------------------------- f-dpo
def test_fdpo_reverse_kl_is_dpo_exactly_and_alpha_to_zero_approaches_it():
    f, gf = run("fdpo", mk(S, R, RK), beta=B_, divergence="reverse_kl")
    d, gd = run("dpo", mk(S, R, RK), beta=B_)
    assert torch.equal(f.loss, d.loss) and torch.equal(gf, gd)
    a, ga = run("fdpo", mk(S, R, RK), beta=B_, divergence="alpha", alpha=1e-6)
    torch.testing.assert_close(a.loss, d.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(ga, gd, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "divergence,alpha,fprime,dfprime",  # f'(rho) and d f'/d rho with u = exp(rho)
    [
        ("forward_kl", 0.5, lambda r: -1 / math.exp(r), lambda r: math.exp(-r)),
        ("js", 0.5, lambda r: math.log(2 * math.exp(r) / (1 + math.exp(r))), lambda r: 1 / (1 + math.exp(r))),
        ("alpha", 0.5, lambda r: (1 - math.exp(r) ** -0.5) / 0.5, lambda r: math.exp(-0.5 * r)),
        ("alpha", 1.0, lambda r: 1 - 1 / math.exp(r), lambda r: math.exp(-r)),
    ],
)
def test_fdpo_divergences_value_and_gradient(divergence, alpha, fprime, dfprime):
    beta = 0.7
    out, g = run("fdpo", mk(S, R, RK), beta=beta, divergence=divergence, alpha=alpha)
    rw, rl = [0.5, 1.0], [-1.0, -0.5]
    zs = [beta * (fprime(rw[b]) - fprime(rl[b])) for b in range(2)]
    assert out.loss.item() == pytest.approx(sum(-lsig(z) for z in zs) / 2, rel=1e-13)
    dw = [-beta * sig(-zs[b]) * dfprime(rw[b]) for b in range(2)]
    dl = [beta * sig(-zs[b]) * dfprime(rl[b]) for b in range(2)]
    torch.testing.assert_close(g, expect_grad(dw, dl))


def test_fdpo_forward_kl_is_alpha_one_and_rejects_unknown_divergence():
    f, _ = run("fdpo", mk(S, R, RK), divergence="forward_kl")
    a, _ = run("fdpo", mk(S, R, RK), divergence="alpha", alpha=1.0)
    torch.testing.assert_close(f.loss, a.loss)
    with pytest.raises(ValueError, match="reverse_kl"):
        get_objective("fdpo")(mk(S, R, RK), divergence="tv")


def test_capped_expm1_is_exact_below_the_cap_and_linear_above():
    c = 0.5 * math.log(torch.finfo(D).max)
    x = T([-3.0, 0.5, 300.0, c, c + 1.0, 1e4], requires_grad=True)
    y = _expm1_capped(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    for i, xi in enumerate([-3.0, 0.5, 300.0]):
        assert y[i].item() == pytest.approx(math.expm1(xi), rel=1e-15)
        assert g[i].item() == pytest.approx(math.exp(xi), rel=1e-15)
    ec = math.exp(c)
    assert y[4].item() == pytest.approx(2 * ec - 1, rel=1e-14) and y[5].item() == pytest.approx(
        ec * (1e4 - c + 1)
    )
    assert g[4].item() == pytest.approx(ec, rel=1e-14) and g[5].item() == pytest.approx(ec, rel=1e-14)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()


# ---------------------------------------------------------------- reference-free
def test_simpo_value_gradient_and_length_duplication_invariance():
    beta, gamma = 2.0, 0.5
    st = mk([[-3.0, -8.0]], lengths=[[3.0, 4.0]])
    out, g = run("simpo", st, beta=beta, gamma=gamma)
    z = beta * (-1.0 - -2.0) - gamma
    assert out.loss.item() == pytest.approx(-lsig(z), rel=1e-14)
    torch.testing.assert_close(g, T([[-beta * sig(-z) / 3, beta * sig(-z) / 4]]))
    dup, _ = run("simpo", mk([[-6.0, -8.0]], lengths=[[6.0, 4.0]]), beta=beta, gamma=gamma)
    assert dup.loss.item() == pytest.approx(out.loss.item(), rel=1e-15)
    assert out.metrics["rewards/chosen"] == pytest.approx(-2.0)  # beta * m(w)


def test_orpo_value_and_gradient():
    lam = 0.4
    st = mk([[-1.2, -3.0]], lengths=[[2.0, 3.0]])  # m(w) = -0.6, m(l) = -1
    out, g = run("orpo", st, lam=lam)

    def lo(m):
        return m - math.log1p(-math.exp(m))

    r = lo(-0.6) - lo(-1.0)
    assert out.loss.item() == pytest.approx(0.6 - lam * lsig(r), rel=1e-14)
    dlo = [1 / (1 - math.exp(-0.6)), 1 / (1 - math.exp(-1.0))]  # d logodds / d m
    gw = (-1 - lam * sig(-r) * dlo[0]) / 2
    gl = lam * sig(-r) * dlo[1] / 3
    torch.testing.assert_close(g, T([[gw, gl]]))
    assert out.metrics["log_odds_ratio"] == pytest.approx(r, rel=1e-6)


def test_orpo_log_odds_finite_and_exact_as_m_approaches_zero():
    m = T([-1e-12, -1e-300, 0.0])
    got = _log_odds(m)
    assert torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(-1e-12 - math.log(-math.expm1(-1e-12)), rel=1e-14)
    assert got[0].item() == pytest.approx(27.631021, rel=1e-7)
    out, g = run("orpo", mk([[-1e-12, -2.0]]))
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()


def test_cpo_is_dpo_with_zero_reference_plus_mean_token_nll():
    st = mk(S, None, RK, lengths=[[2.0, 5.0], [1.0, 4.0]])
    out, g = run("cpo", st, beta=B_, sft_weight=0.5)
    d, gd = run("dpo", mk(S, [[0.0, 0.0]] * 2, RK), beta=B_)
    nll_w = [3.0 / 2, 2.5 / 4]
    torch.testing.assert_close(out.per_example, d.per_example + 0.5 * T(nll_w))
    torch.testing.assert_close(g, gd + expect_grad([-0.5 / 2, -0.5 / 4], [0.0, 0.0]))
    assert out.metrics["rewards/chosen"] == pytest.approx(B_ * -2.75)  # beta * s(w)


def test_rpo_alpha_zero_is_dpo_and_alpha_adds_nll():
    d, gd = run("dpo", mk(S, R, RK), beta=B_)
    r0, g0 = run("rpo", mk(S, R, RK), beta=B_, alpha=0.0)
    assert torch.equal(r0.loss, d.loss) and torch.equal(g0, gd)
    r1, g1 = run("rpo", mk(S, R, RK, lengths=[[3.0, 1.0], [1.0, 5.0]]), beta=B_, alpha=2.0)
    torch.testing.assert_close(r1.loss, d.loss + 2.0 * (3.0 / 3 + 2.5 / 5) / 2)
    torch.testing.assert_close(g1, gd + expect_grad([-2.0 / 3, -2.0 / 5], [0.0, 0.0]))


def test_asft_value_and_independent_gradient_signs():
    beta = 0.5
    out, g = run("asft", mk([[-2.0, -6.0]]), beta=beta)
    assert out.loss.item() == pytest.approx(-lsig(-1.0) - lsig(3.0), rel=1e-14)
    torch.testing.assert_close(g, T([[-beta * sig(1.0), beta * sig(-3.0)]]))
    assert g[0, 0] < 0 < g[0, 1]  # descent raises s(w) and lowers s(l)
    _, g2 = run("asft", mk([[-2.0, -1.0]]), beta=beta)  # moving s(l) leaves d/ds(w) unchanged
    assert g2[0, 0].item() == g[0, 0].item()


# ---------------------------------------------------------------- jpo, poft
def test_jpo_equals_dpo_for_k2_ranks_including_weights():
    d, gd = run("dpo", mk(S, R, RK, weights=[2.0, 0.5]), beta=B_)
    j, gj = run("jpo", mk(S, R, RK, weights=[2.0, 0.5]), beta=B_)
    torch.testing.assert_close(j.loss, d.loss)
    torch.testing.assert_close(j.per_example, d.per_example)
    torch.testing.assert_close(gj, gd)
    assert j.metrics["pairs"] == 2


def test_jpo_cross_prompt_pairs_from_scores():
    # responses a=(0,0) b=(0,1) c=(1,0) d=(1,1); scores a 3 > d 2.5 > c 2 > b 1 -> 6 ordered pairs
    st = mk(S, R, scores=[[3.0, 1.0], [2.0, 2.5]], weights=[1.0, 4.0])
    out, g = run("jpo", st, beta=B_)
    rho = {"a": 0.5, "b": -1.0, "c": -0.5, "d": 1.0}
    row = {"a": 0, "b": 0, "c": 1, "d": 1}
    pairs = [("a", "d"), ("a", "c"), ("a", "b"), ("d", "c"), ("d", "b"), ("c", "b")]
    wt = {p: math.sqrt([1.0, 4.0][row[p[0]]] * [1.0, 4.0][row[p[1]]]) for p in pairs}
    loss = {p: -lsig(B_ * (rho[p[0]] - rho[p[1]])) for p in pairs}
    total = sum(wt.values())
    assert out.loss.item() == pytest.approx(sum(wt[p] * loss[p] for p in pairs) / total, rel=1e-14)
    per = [sum(loss[p] for p in pairs[:3]) / 3, sum(loss[p] for p in pairs[3:]) / 3]
    torch.testing.assert_close(out.per_example, T(per))
    grad = dict.fromkeys(rho, 0.0)
    for u, v in pairs:
        dz = -B_ * sig(-B_ * (rho[u] - rho[v])) * wt[(u, v)] / total
        grad[u] += dz
        grad[v] -= dz
    torch.testing.assert_close(g, T([[grad["a"], grad["b"]], [grad["c"], grad["d"]]]))
    assert out.metrics["pairs"] == 6 and out.metrics["rewards/accuracy"] == pytest.approx(5 / 6)


def test_jpo_ranks_stay_within_prompt_and_skip_ties_and_padding():
    st = mk(
        [[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]],
        [[0.0] * 3] * 2,
        ranks=[[0.0, 1.0, 2.0], [0.0, 0.0, 1.0]],
        valid=[[True, True, False], [True, True, True]],
    )
    out, _ = run("jpo", st, beta=1.0)
    # row 0: one pair (rho 1 vs rho 2 margin 1); row 1: two pairs (tie skipped), margin 0 each.
    expected = (-lsig(1.0) + 2 * math.log(2)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-14)
    torch.testing.assert_close(out.per_example, T([-lsig(1.0), math.log(2)]))


def test_poft_is_one_sided_dpo_on_best_response():
    out, g = run("poft", mk(S, R, RK), beta=B_)
    per = [-lsig(B_ * 0.5), -lsig(B_ * 1.0)]
    torch.testing.assert_close(out.per_example, T(per))
    torch.testing.assert_close(g, expect_grad([-B_ * sig(-B_ * 0.5), -B_ * sig(-B_ * 1.0)], [0.0, 0.0]))
    assert out.metrics["rewards/chosen"] == pytest.approx(B_ * 0.75)


def test_poft_sft_data_and_labels():
    k1 = SequenceStats(logps=T([[-2.0], [-1.0]]), ref_logps=T([[-3.0], [-3.0]]))
    assert get_objective("poft")(k1, beta=1.0).loss.item() == pytest.approx((-lsig(1.0) - lsig(2.0)) / 2)
    lab = mk([[-2.0, -1.0], [-1.0, -1.0]], [[-3.0, -3.0], [0.0, 0.0]], labels=[[1.0, 1.0], [0.0, 0.0]])
    out = get_objective("poft")(lab, beta=1.0)
    torch.testing.assert_close(out.per_example, T([(-lsig(1.0) - lsig(2.0)) / 2, 0.0]))
    assert out.loss.item() == pytest.approx((-lsig(1.0) - lsig(2.0)) / 2)


# ---------------------------------------------------------------- shared contract, every objective
def _hp(name):
    return {"fdpo": {"divergence": "js"}}.get(name, {})


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("use_scores", [False, True])
def test_chosen_in_column_one_equals_swapped_columns(name, use_scores):
    s, r, n = [[-3.0, -5.0]], [[-3.5, -4.0]], [[2.0, 3.0]]
    flip = [[row[1], row[0]] for row in s], [[row[1], row[0]] for row in r], [[3.0, 2.0]]
    lab = {"scores": [[0.9, 0.2]]} if use_scores else {"ranks": [[0.0, 1.0]]}
    lab_f = {"scores": [[0.2, 0.9]]} if use_scores else {"ranks": [[1.0, 0.0]]}
    a, ga = run(name, mk(s, r, lengths=n, **lab), **_hp(name))
    b, gb = run(name, mk(flip[0], flip[1], lengths=flip[2], **lab_f), **_hp(name))
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-15, atol=0)
    torch.testing.assert_close(ga, gb.flip(1), rtol=1e-15, atol=0)
    assert a.metrics == b.metrics


@pytest.mark.parametrize("name", PAIR_OBJECTIVES)
def test_ties_padding_and_record_weights(name):
    nan = float("nan")
    st = mk(
        [[-3.0, -5.0], [-1.0, -2.0], [-4.0, nan], [-4.0, -2.5]],
        [[-3.5, -4.0], [-1.0, -1.0], [-1.0, nan], [-3.5, -3.5]],
        ranks=[[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        weights=[2.0, 7.0, 7.0, 0.5],
        valid=[[True, True], [True, True], [True, False], [True, True]],
    )
    out, g = run(name, st, **_hp(name))
    single = [run(name, mk([S[b]], [R[b]], [RK[b]]), **_hp(name))[0].loss.item() for b in range(2)]
    torch.testing.assert_close(out.per_example, T([single[0], 0.0, 0.0, single[1]]))
    assert out.loss.item() == pytest.approx((2.0 * single[0] + 0.5 * single[1]) / 2.5, rel=1e-14)
    assert torch.isfinite(g).all() and g[1:3].abs().max().item() == 0.0


def test_dpo_weights_hand_computed():
    out, g = run("dpo", mk(S, R, RK, weights=[3.0, 1.0]), beta=B_)
    l = -lsig(B_ * 1.5)
    assert out.loss.item() == pytest.approx(l, rel=1e-14)  # both rows have the same Delta
    dw = -B_ * sig(-B_ * 1.5)
    torch.testing.assert_close(g, T([[0.75 * dw, -0.75 * dw], [-0.25 * dw, 0.25 * dw]]))


STABILITY_CASES = (
    [(n, _hp(n)) for n in ALL if n != "fdpo"]
    + [("fdpo", {"divergence": d}) for d in ("reverse_kl", "forward_kl", "js", "alpha")]
    + [("ipo", {"length_normalize": True}), ("jpo", {"scores_instead": True})]
)


@pytest.mark.parametrize("name,hp", STABILITY_CASES)
def test_extreme_log_ratios_give_finite_loss_and_gradients(name, hp):
    # |Delta| = 1e4 both ways, logps of -1e4 and of exactly 0 (m -> 0 for orpo).
    hp = dict(hp)
    lab = {"scores": [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]} if hp.pop("scores_instead", False) else {}
    st = mk(
        [[-1e4, -1.0], [-1.0, -1e4], [0.0, -1e4]],
        [[0.0, 0.0], [0.0, 0.0], [-1e4, 0.0]],
        lengths=[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
        **lab,
    )
    out, g = run(name, st, **hp)
    assert torch.isfinite(out.loss) and torch.isfinite(out.per_example).all()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(math.isfinite(v) for v in out.metrics.values())
