"""Listwise objectives against closed forms computed here with `math` (or a brute force over orders),
hand-derived gradients, and the properties of METHODS.md section 3. Everything in float64."""

import itertools
import math

import pytest
import torch
from closed_forms import D, T, lse, lsig, sig

from alignkit.objectives import SequenceStats, get_objective
from alignkit.objectives.listwise import MAX_TIE_GROUP

B_ = 0.1
LISTWISE = ["plackett_luce", "listnet", "lipo", "all_pairs"]
NAN = float("nan")


def mk(logps, ref, ranks=None, scores=None, weights=None, valid=None):
    return SequenceStats(
        logps=T(logps, requires_grad=True),
        ref_logps=T(ref),
        ranks=T(ranks),
        scores=T(scores),
        weights=T(weights),
        valid=None if valid is None else torch.tensor(valid),
    )


def run(name, stats, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    return out, grad


def same(a, b, ga, gb, rtol=1e-14):
    torch.testing.assert_close(a.loss, b.loss, rtol=rtol, atol=1e-16)
    torch.testing.assert_close(a.per_example, b.per_example, rtol=rtol, atol=1e-16)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=1e-16)


# The pairwise tests' two rows (row 1 chosen in column 1), Delta = 1.5 in both.
S = [[-3.0, -5.0], [-4.0, -2.5]]
R = [[-3.5, -4.0], [-3.5, -3.5]]
RK = [[0.0, 1.0], [1.0, 0.0]]
# K = 3: rho = [0.5, -1.0, 0.2]; order by rank: response 1, then 2, then 0.
S3, R3, RK3 = [[-3.0, -5.0, -4.0]], [[-3.5, -4.0, -4.2]], [[2.0, 0.0, 1.0]]
RHO3 = [0.5, -1.0, 0.2]


# ---------------------------------------------------------------- K = 2 reduces to the pairwise objective
@pytest.mark.parametrize(
    "name,hp,pair,pair_hp",
    [
        ("plackett_luce", {}, "dpo", {}),
        ("lipo", {"normalize": True}, "dpo", {}),
        ("all_pairs", {}, "dpo", {}),
        ("all_pairs", {"base": "ipo"}, "ipo", {}),
        ("all_pairs", {"base": "hinge", "beta": 0.5}, "hinge", {"beta": 0.5}),
    ],
)
@pytest.mark.parametrize("labels", ["ranks", "scores"])
def test_k2_equals_the_pairwise_objective(name, hp, pair, pair_hp, labels):
    lab = {"ranks": RK} if labels == "ranks" else {"scores": [[0.7, 0.1], [-2.0, 3.0]]}
    a, ga = run(name, mk(S, R, weights=[3.0, 1.0], **lab), **hp)
    b, gb = run(pair, mk(S, R, weights=[3.0, 1.0], **lab), **pair_hp)
    same(a, b, ga, gb)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen"):
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-6), k


# ---------------------------------------------------------------- plackett_luce
def pl_nll(h):  # h ordered best first
    return sum(lse(h[k:]) - h[k] for k in range(len(h) - 1))


def test_plackett_luce_k3_value_and_gradient():
    out, g = run("plackett_luce", mk(S3, R3, RK3), beta=B_)
    h = [B_ * r for r in RHO3]
    order = [1, 2, 0]
    assert out.loss.item() == pytest.approx(pl_nll([h[i] for i in order]), rel=1e-14)
    # d/dh_i = sum over stages k (i still in the tail) of softmax_tail(i) - [i picked at stage k]
    grad = [0.0, 0.0, 0.0]
    for k in range(2):
        tail = order[k:]
        z = lse([h[i] for i in tail])
        for i in tail:
            grad[i] += math.exp(h[i] - z)
        grad[order[k]] -= 1
    torch.testing.assert_close(g, T([[B_ * x for x in grad]]), rtol=1e-13, atol=1e-16)
    assert out.metrics["rewards/accuracy"] == 0.0  # h = [.05, -.1, .02]: every pair is ordered wrong


def test_plackett_luce_invariant_to_a_constant_added_to_a_row():
    base, gb = run("plackett_luce", mk(S3, R3, RK3), beta=0.7)
    for c in (3.0, -250.0, 1e3):
        out, g = run("plackett_luce", mk([[x + c for x in S3[0]]], R3, RK3), beta=0.7)
        torch.testing.assert_close(out.loss, base.loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(g, gb, rtol=1e-9, atol=1e-14)


def brute_force_tie_average(h, ranks, valid):
    """Mean PL NLL over every order consistent with ranks (torch, autograd-able); None if not a list."""
    groups = {}
    for i in range(len(ranks)):
        if valid[i]:
            groups.setdefault(ranks[i], []).append(i)
    if len(groups) < 2:
        return None
    keys = sorted(groups)
    orders = [
        sum(parts, [])
        for parts in itertools.product(*(map(list, itertools.permutations(groups[k])) for k in keys))
    ]
    total = 0
    for o in orders:
        hs = h[o]
        total = total + sum(torch.logsumexp(hs[k:], 0) - hs[k] for k in range(len(o) - 1))
    return total / len(orders)


def test_plackett_luce_ties_average_over_the_orders_of_each_tie_group():
    # K = 3, ranks [0, 1, 1]: the mean of the two orders, by hand.
    h = [B_ * r for r in [0.5, -1.0, 0.2]]
    out, _ = run("plackett_luce", mk(S3, R3, [[0.0, 1.0, 1.0]]), beta=B_)
    expect = (pl_nll([h[0], h[1], h[2]]) + pl_nll([h[0], h[2], h[1]])) / 2
    assert out.loss.item() == pytest.approx(expect, rel=1e-14)
    # Equivalently: the tied pair's term is lse(h1, h2) - (h1 + h2)/2, smallest when h1 = h2.
    assert expect == pytest.approx(lse(h) - h[0] + lse(h[1:]) - (h[1] + h[2]) / 2, rel=1e-14)
    # Many tie patterns, padded slots included, against a brute force over all orders (value and gradient).
    gen = torch.Generator().manual_seed(0)
    patterns = [
        [0, 0, 1, 1, 2, 9],
        [0, 1, 1, 1, 1, 2],
        [3, 3, 3, 0, 0, 5],
        [0, 0, 0, 0, 0, 1],
        [1, 0, 2, 2, 0, 1],
        [4, 4, 4, 4, 4, 4],
    ]
    valid = [
        [True] * 6,
        [True] * 5 + [False],
        [True] * 6,
        [True] * 6,
        [True, True, True, True, False, True],
        [True] * 6,
    ]
    logps = torch.randn(6, 6, generator=gen, dtype=D) * 3
    ref = torch.randn(6, 6, generator=gen, dtype=D)
    logps[1, 5], ref[4, 4] = NAN, NAN
    st = SequenceStats(
        logps=logps.clone().requires_grad_(), ref_logps=ref, ranks=T(patterns), valid=torch.tensor(valid)
    )
    out, g = run("plackett_luce", st, beta=0.5)
    lp = logps.clone().requires_grad_()
    per = []
    for b in range(6):
        vb = torch.tensor(valid[b])
        h = 0.5 * torch.where(vb, lp[b] - ref[b], 0.0)
        per.append(brute_force_tie_average(h, patterns[b], valid[b]))
    assert per[5] is None  # all tied: no order to learn, masked
    expect = torch.stack(per[:5])
    torch.testing.assert_close(
        out.per_example, torch.cat([expect.detach(), T([0.0])]), rtol=1e-13, atol=1e-15
    )
    (ge,) = torch.autograd.grad(expect.sum() / 5, lp)  # loss = mean over the 5 real rows
    torch.testing.assert_close(g, ge, rtol=1e-12, atol=1e-15)
    assert g[1, 5] == 0 and g[4, 4] == 0 and g[5].abs().max() == 0


def test_plackett_luce_too_many_ties_is_a_clear_error():
    k = MAX_TIE_GROUP + 2
    st = mk([[0.0] * k], [[0.0] * k], [[0.0] + [1.0] * (k - 1)])
    with pytest.raises(ValueError, match="tied responses"):
        get_objective("plackett_luce")(st)


# ---------------------------------------------------------------- shared: masking, padding, weights
@pytest.mark.parametrize("name", LISTWISE)
def test_ties_padding_and_record_weights(name):
    # Row 0: a K = 3 list; row 1: all tied (masked); row 2: one valid response + NaN padding (masked);
    # row 3: two valid responses and a NaN-padded slot, equal to that pair alone.
    st = mk(
        [S3[0], [-1.0, -2.0, -3.0], [-4.0, NAN, NAN], [-4.0, -2.5, NAN]],
        [R3[0], [-1.0, -1.0, -1.0], [-1.0, NAN, NAN], [-3.5, -3.5, NAN]],
        ranks=[RK3[0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 2.0]],
        weights=[2.0, 7.0, 7.0, 0.5],
        valid=[[True] * 3, [True] * 3, [True, False, False], [True, True, False]],
    )
    out, g = run(name, st)
    first = run(name, mk(S3, R3, RK3))[0].loss.item()
    last = run(name, mk([S[1]], [R[1]], [RK[1]]))[0].loss.item()
    torch.testing.assert_close(out.per_example, T([first, 0.0, 0.0, last]), rtol=1e-14, atol=0)
    assert out.loss.item() == pytest.approx((2.0 * first + 0.5 * last) / 2.5, rel=1e-14)
    assert torch.isfinite(g).all() and g[1:3].abs().max() == 0 and g[3, 2] == 0


@pytest.mark.parametrize("name", LISTWISE)
def test_extreme_log_ratios_give_finite_loss_and_gradients(name):
    st = mk(
        [[-1e4, -1.0, 0.0], [-1.0, -1e4, 0.0]], [[0.0, 0.0, -1e4], [0.0, 0.0, 0.0]], [[0.0, 1.0, 2.0]] * 2
    )
    out, g = run(name, st)
    assert torch.isfinite(out.loss) and torch.isfinite(out.per_example).all()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("name", LISTWISE)
def test_bad_hyper_parameters_and_labels_are_rejected(name):
    with pytest.raises(ValueError, match="beta"):
        get_objective(name)(mk(S3, R3, RK3), beta=0.0)
    vec = SequenceStats(logps=T(S3), ref_logps=T(R3), scores=torch.zeros(1, 3, 2, dtype=D))
    with pytest.raises(ValueError, match="ranks or scalar scores"):
        get_objective(name)(vec)
    with pytest.raises(ValueError, match="reference"):
        get_objective(name)(SequenceStats(logps=T(S3), ranks=T(RK3)))
    spec = get_objective(name)
    assert (spec.label_kinds, spec.min_responses, spec.max_responses) == (("ranks", "scores"), 2, None)


# ---------------------------------------------------------------- listnet
def test_listnet_closed_form_value_and_gradient():
    tau, scores = 2.0, [2.0, 0.5, -1.0]
    out, g = run("listnet", mk(S3, R3, scores=[scores]), beta=B_, temperature=tau)
    p = [math.exp(s / tau - lse([x / tau for x in scores])) for s in scores]
    h = [B_ * r for r in RHO3]
    q = [math.exp(x - lse(h)) for x in h]
    assert out.loss.item() == pytest.approx(-sum(pi * math.log(qi) for pi, qi in zip(p, q)), rel=1e-14)
    torch.testing.assert_close(g, T([[B_ * (qi - pi) for pi, qi in zip(p, q)]]), rtol=1e-13, atol=1e-17)
    # Ranks: the target is softmax(-ranks / tau).
    out_r, _ = run("listnet", mk(S3, R3, RK3), beta=B_, temperature=tau)
    pr = [math.exp(-r / tau - lse([-x / tau for x in RK3[0]])) for r in RK3[0]]
    assert out_r.loss.item() == pytest.approx(-sum(pi * math.log(qi) for pi, qi in zip(pr, q)), rel=1e-14)


def test_listnet_gradient_vanishes_when_policy_matches_target():
    beta, tau, scores = 0.5, 2.0, [2.0, 0.5, -1.0]
    ref = [-4.0, -6.0, -5.0]
    logps = [r + (s / tau + 7.0) / beta for r, s in zip(ref, scores)]  # h = scores/tau + 7
    out, g = run("listnet", mk([logps], [ref], scores=[scores]), beta=beta, temperature=tau)
    p = [math.exp(s / tau - lse([x / tau for x in scores])) for s in scores]
    assert out.loss.item() == pytest.approx(
        -sum(x * math.log(x) for x in p), rel=1e-13
    )  # the target's entropy
    assert g.abs().max().item() < 1e-15
    with pytest.raises(ValueError, match="temperature"):
        get_objective("listnet")(mk(S3, R3, RK3), temperature=0.0)


# ---------------------------------------------------------------- lipo
def test_lipo_k3_hand_value_and_gradient():
    # psi = [3, 1, 2]: order 0 > 2 > 1. Rewards h = beta*rho = [.05, -.1, .02] rank by the model: 0, 2, 1.
    logps = [[-3.0, -4.0, -4.0]]  # rho = [0.5, 0.0, 0.2]: model order 0, 2, 1 -> tau = [1, 3, 2]
    out, g = run("lipo", mk(logps, R3, scores=[[3.0, 1.0, 2.0]]), beta=B_)
    rho, tau, gain = [0.5, 0.0, 0.2], [1, 3, 2], [7.0, 1.0, 3.0]
    inv_d = [1 / math.log2(1 + t) for t in tau]
    pairs = [(0, 1), (0, 2), (2, 1)]
    loss, grad = 0.0, [0.0, 0.0, 0.0]
    for i, j in pairs:
        w = abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j])
        d = B_ * (rho[i] - rho[j])
        loss += w * -lsig(d)
        grad[i] += -w * B_ * sig(-d)
        grad[j] += w * B_ * sig(-d)
    assert out.loss.item() == pytest.approx(loss, rel=1e-14)
    torch.testing.assert_close(g, T([grad]), rtol=1e-13, atol=1e-17)
    weights = [abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) for i, j in pairs]
    assert out.metrics["lambda_weight"] == pytest.approx(sum(weights) / 3, rel=1e-6)
    # normalize=True: the same pair losses with weights divided by their sum.
    out_n, _ = run("lipo", mk(logps, R3, scores=[[3.0, 1.0, 2.0]]), beta=B_, normalize=True)
    assert out_n.loss.item() == pytest.approx(loss / sum(weights), rel=1e-14)


def test_lipo_k2_unnormalised_is_dpo_times_the_lambda_weight_and_ranks_give_labels():
    d, gd = run("dpo", mk(S, R, RK), beta=B_)
    a, ga = run("lipo", mk(S, R, RK), beta=B_)  # ranks -> psi = [1, 0]: |G_w - G_l| = 1
    lam = 1 - 1 / math.log2(3)
    torch.testing.assert_close(a.per_example, lam * d.per_example, rtol=1e-14, atol=0)
    torch.testing.assert_close(ga, lam * gd, rtol=1e-14, atol=0)
    # ranks [0, 2, 1] -> psi = number ranked below = [2, 0, 1]: the same as those scores.
    r, gr = run("lipo", mk(S3, R3, [[0.0, 2.0, 1.0]]), beta=B_)
    s, gs = run("lipo", mk(S3, R3, scores=[[2.0, 0.0, 1.0]]), beta=B_)
    same(r, s, gr, gs)


def test_lipo_normalised_is_invariant_to_shifting_scores_and_stable_at_large_scores():
    a, ga = run("lipo", mk(S3, R3, scores=[[3.0, 1.0, 2.0]]), normalize=True)
    b, gb = run("lipo", mk(S3, R3, scores=[[3003.0, 3001.0, 3002.0]]), normalize=True)
    same(a, b, ga, gb, rtol=1e-13)


# ---------------------------------------------------------------- all_pairs
def test_all_pairs_mean_over_pairs_skips_ties():
    h = [B_ * r for r in RHO3]
    out, g = run("all_pairs", mk(S3, R3, RK3), beta=B_)  # order 1 > 2 > 0
    pairs = [(1, 2), (1, 0), (2, 0)]
    assert out.loss.item() == pytest.approx(sum(-lsig(h[i] - h[j]) for i, j in pairs) / 3, rel=1e-14)
    grad = [0.0, 0.0, 0.0]
    for i, j in pairs:
        grad[i] -= B_ * sig(h[j] - h[i]) / 3
        grad[j] += B_ * sig(h[j] - h[i]) / 3
    torch.testing.assert_close(g, T([grad]), rtol=1e-13, atol=1e-17)
    tied, _ = run("all_pairs", mk(S3, R3, [[0.0, 1.0, 1.0]]), beta=B_, base="ipo")  # pairs (0,1), (0,2)
    expect = ((0.5 + 1.0 - 5.0) ** 2 + (0.5 - 0.2 - 5.0) ** 2) / 2
    assert tied.loss.item() == pytest.approx(expect, rel=1e-14)
    with pytest.raises(ValueError, match="base"):
        get_objective("all_pairs")(mk(S3, R3, RK3), base="kto")


# ---------------------------------------------------------------- tpo
def tree_stats(shared, leaf=False):
    """K = 3 responses of 4 token slots; response 1 starts at slot 1; NaN in every masked-out slot."""
    mask = torch.tensor([[[True, True, True, True], [False, True, True, True], [True, True, False, False]]])
    tl = T([[[-0.5, -1.0, -0.2, -0.7], [NAN, -0.3, -2.0, -0.1], [-1.5, -0.4, NAN, NAN]]])
    rtl = T([[[-0.6, -0.8, -0.5, -0.5], [NAN, -0.3, -1.0, -0.4], [-1.0, -0.9, NAN, NAN]]])
    tl = tl.requires_grad_(leaf)
    zero = torch.zeros_like(rtl)
    logps = torch.where(mask, tl, zero).sum(-1)
    st = SequenceStats(
        logps=logps if leaf else logps.detach().requires_grad_(),
        ref_logps=torch.where(mask, rtl, zero).sum(-1),
        ranks=T([[1.0, 0.0, 2.0]]),
        token_logps=tl,
        token_mask=mask,
        extra={"shared_tokens": torch.tensor([shared]), "ref_token_logps": rtl},
    )
    return st, tl, mask


def test_tpo_without_shared_tokens_or_with_weight_one_is_plackett_luce():
    for shared, hp in (([0, 0, 0], {"shared_weight": 0.0}), ([2, 2, 1], {"shared_weight": 1.0})):
        st, _, _ = tree_stats(shared)
        a, ga = run("tpo", st, beta=0.5, **hp)
        b, gb = run("plackett_luce", st, beta=0.5)
        assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and a.metrics == b.metrics


def test_tpo_adaptive_step_reward_value_and_token_gradient():
    beta, sw = 0.5, 0.25
    st, tl, mask = tree_stats([2, 2, 0], leaf=True)
    out = get_objective("tpo")(st, beta=beta, shared_weight=sw)
    (g,) = torch.autograd.grad(out.loss, tl)
    toks = [[-0.5, -1.0, -0.2, -0.7], [-0.3, -2.0, -0.1], [-1.5, -0.4]]  # the masked-in tokens, in order
    refs = [[-0.6, -0.8, -0.5, -0.5], [-0.3, -1.0, -0.4], [-1.0, -0.9]]
    w = [[sw, sw, 1, 1], [sw, sw, 1], [1, 1]]  # the first shared_tokens tokens weigh sw
    h = [beta * sum(wt * (a - b) for wt, a, b in zip(w[k], toks[k], refs[k])) for k in range(3)]
    order = [1, 0, 2]
    assert out.loss.item() == pytest.approx(pl_nll([h[i] for i in order]), rel=1e-14)
    dh = [0.0, 0.0, 0.0]
    for k in range(2):
        z = lse([h[i] for i in order[k:]])
        for i in order[k:]:
            dh[i] += math.exp(h[i] - z)
        dh[order[k]] -= 1
    expect = torch.zeros(1, 3, 4, dtype=D)
    for k in range(3):
        slots = mask[0, k].nonzero().flatten().tolist()
        for t, wt in zip(slots, w[k]):
            expect[0, k, t] = dh[k] * beta * wt
    torch.testing.assert_close(g, expect, rtol=1e-13, atol=1e-17)
    pairs = [(1, 0), (1, 2), (0, 2)]  # rewards are the adjusted h
    assert out.metrics["rewards/chosen"] == pytest.approx(sum(h[i] for i, _ in pairs) / 3, rel=1e-6)


def test_tpo_declares_its_needs_and_names_missing_inputs():
    spec = get_objective("tpo")
    assert spec.needs_token_logps and spec.extras == ("shared_tokens",) and spec.needs_reference
    assert set(spec.defaults) == {"beta", "shared_weight"}
    with pytest.raises(ValueError, match="token_logps.*shared_tokens"):
        get_objective("tpo")(mk(S3, R3, RK3))
    with pytest.raises(ValueError, match="shared_weight"):
        get_objective("tpo")(mk(S3, R3, RK3), shared_weight=1.5)
    out = get_objective("tpo")(mk(S3, R3, RK3), shared_weight=1.0)  # needs no token data
    assert out.loss.item() == pytest.approx(get_objective("plackett_luce")(mk(S3, R3, RK3)).loss.item())
