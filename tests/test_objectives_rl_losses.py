"""Online-RL objectives (grpo, rloo, remax, reinforce_pp, ppo, raft): on-policy gradients equal the
REINFORCE gradient for every aggregation, clipping and value clipping by hand, KL terms, record
weights, and NaN in padded slots / masked tokens kept out of loss and gradient. Float64."""

import math

import pytest
import torch
from closed_forms import D

from alignkit.algorithms.recipe import RECIPES
from alignkit.objectives import SequenceStats, get_objective

NAN = math.nan
POLICY = ["grpo", "rloo", "remax", "reinforce_pp"]


def T(x):
    return torch.tensor(x, dtype=D)



def mk(tlp, mask, adv=None, old=None, valid=None, weights=None, ref=None, rewards=None, **extra):
    """Rollout statistics; ``old`` defaults to the current log-probs (the first, on-policy step)."""
    tlp = (tlp if isinstance(tlp, torch.Tensor) else T(tlp)).clone().requires_grad_()
    mask = torch.tensor(mask, dtype=torch.bool)
    ex = {"old_token_logps": tlp.detach().clone() if old is None else T(old)}
    for name, x in (("advantages", adv), ("ref_token_logps", ref), *extra.items()):
        if x is not None:
            ex[name] = x if isinstance(x, torch.Tensor) else T(x)
    return SequenceStats(
        logps=torch.where(mask, tlp.detach(), 0.0).sum(-1),
        token_logps=tlp,
        token_mask=mask,
        valid=None if valid is None else torch.tensor(valid),
        weights=None if weights is None else T(weights),
        rewards=None if rewards is None else T(rewards),
        extra=ex,
    )


def run(name, stats, wrt=None, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.token_logps if wrt is None else wrt)
    return out, grad


def test_registration_declares_rollout_inputs():
    for name in POLICY:
        spec = get_objective(name)
        assert spec.inputs == "rollout" and spec.needs_token_logps and spec.needs_reference
        assert spec.extras == ("advantages", "old_token_logps") and spec.label_kinds == ("scores",)
        assert set(spec.defaults) == {"beta", "clip_low", "clip_high", "kl", "loss_agg", "norm_len"}
        assert (spec.defaults["beta"], spec.defaults["clip_low"], spec.defaults["clip_high"]) == (
            0.0,
            0.2,
            0.2,
        )
    assert {n for n, r in RECIPES.items() if r.family == "policy_gradient"} == {*POLICY, "dr_grpo"}
    agg = {n: get_objective(n).defaults["loss_agg"] for n in POLICY}
    assert agg == {"grpo": "token", "rloo": "sum", "remax": "sum", "reinforce_pp": "token"}
    ppo, raft = get_objective("ppo"), get_objective("raft")
    assert ppo.defaults == {"clip": 0.2, "vf_coef": 0.1, "cliprange_value": 0.2} and not ppo.needs_reference
    assert ppo.extras == ("advantages", "old_token_logps", "values", "old_values", "returns")
    assert raft.defaults == {} and raft.extras == () and raft.inputs == "rollout" and raft.needs_token_logps


# Two prompts x K = 3 samples x T = 4 tokens; row 1's third slot is padding (NaN everywhere).
LP = [
    [[-1.0, -2.0, -0.5, NAN], [-0.3, -0.7, NAN, NAN], [-1.5, -0.2, -0.9, -1.1]],
    [[-0.4, NAN, NAN, NAN], [-2.0, -1.0, -0.1, NAN], [NAN, NAN, NAN, NAN]],
]
MASK = [
    [[True, True, True, False], [True, True, False, False], [True, True, True, True]],
    [[True, False, False, False], [True, True, True, False], [True, True, False, False]],
]
VALID = [[True, True, True], [True, True, False]]
ADV = [[1.5, -0.5, 0.25], [-2.0, 0.75, NAN]]
W = [2.0, 0.5]
LENS = [[3, 2, 4], [1, 3, 0]]  # counted tokens per sample (the padded slot counts none)


def expected_onpolicy_grad(loss_agg, norm_len=0):
    """−w_b·A_bk / norm on every counted token: REINFORCE with these advantages, per aggregation."""
    if loss_agg == "token":
        norm = [[W[0] * 9 + W[1] * 4] * 3] * 2  # Σ_b w_b·(counted tokens of row b), the same for all
    else:
        seqs = W[0] * 3 + W[1] * 2  # Σ_b w_b·(number of samples with tokens)
        per_seq = {"sequence": LENS, "sum": [[1] * 3] * 2, "sum_norm": [[norm_len or 4] * 3] * 2}[loss_agg]
        norm = [[seqs * per_seq[b][k] for k in range(3)] for b in range(2)]
    g = torch.zeros(2, 3, 4, dtype=D)
    for b in range(2):
        for k in range(3):
            for t in range(LENS[b][k]):
                g[b, k, t] = -W[b] * ADV[b][k] / norm[b][k]
    return g


@pytest.mark.parametrize("name", POLICY)
@pytest.mark.parametrize(
    ("loss_agg", "norm_len"), [("token", 0), ("sequence", 0), ("sum", 0), ("sum_norm", 0), ("sum_norm", 7)]
)
def test_first_on_policy_step_is_the_reinforce_gradient(name, loss_agg, norm_len):
    st = mk(LP, MASK, ADV, valid=VALID, weights=W, ref=LP)
    out, g = run(
        name, st, loss_agg=loss_agg, norm_len=norm_len, beta=0.1
    )  # ref = policy: KL term 0, gradient 0
    expect = expected_onpolicy_grad(loss_agg, norm_len)
    torch.testing.assert_close(g, expect, rtol=1e-14, atol=1e-16)
    # at ratio = 1 the loss is Σ −A·w / norm over counted tokens (the gradient is its derivative)
    assert out.loss.item() == pytest.approx(float(expect.sum()), rel=1e-13)
    assert torch.isfinite(out.per_example).all() and out.metrics["kl"] == 0.0
    assert (
        out.metrics["ratio/mean"] == 1.0
        and out.metrics["approx_kl"] == 0.0
        and out.metrics["clip_fraction"] == 0.0
    )
    assert out.metrics["tokens"] == 13.0


def test_per_example_and_token_loss_by_hand():
    out, _ = run("grpo", mk(LP, MASK, ADV, valid=VALID, weights=W))
    row0 = -(1.5 * 3 - 0.5 * 2 + 0.25 * 4) / 9
    row1 = -(-2.0 * 1 + 0.75 * 3) / 4
    torch.testing.assert_close(out.per_example, T([row0, row1]))
    assert out.loss.item() == pytest.approx((2 * 9 * row0 + 0.5 * 4 * row1) / (2 * 9 + 0.5 * 4), rel=1e-14)
    # sequence aggregation: token mean per sample, then mean over samples
    out, _ = run("grpo", mk(LP, MASK, ADV, valid=VALID, weights=W), loss_agg="sequence")
    torch.testing.assert_close(out.per_example, T([-(1.5 - 0.5 + 0.25) / 3, -(-2.0 + 0.75) / 2]))


def test_token_level_advantages():
    adv = torch.arange(24, dtype=D).view(2, 3, 4) / 10 - 1
    out, g = run("grpo", mk(LP, MASK, adv, valid=VALID))
    counted = torch.tensor(MASK) & torch.tensor(VALID)[..., None]
    torch.testing.assert_close(g, torch.where(counted, -adv / 13, 0.0), rtol=1e-14, atol=0)


def clip_case(clip_low, clip_high):
    # one sample of 6 tokens; ratios and advantages chosen to sit on each side of the clip range
    ratio = [1.25, 1.25, 0.85, 0.85, 1.5, 0.5]
    adv = [1.0, -1.0, 1.0, -1.0, 2.0, -2.0]
    lp = [[[0.0] * 6]]
    old = [[[-math.log(r) for r in ratio]]]
    st = mk(lp, [[[True] * 6]], T(adv).view(1, 1, 6), old=old)
    return run("grpo", st, clip_low=clip_low, clip_high=clip_high, loss_agg="sum"), ratio, adv


def test_clipping_zeroes_the_gradient_only_outside_the_trust_region():
    (out, g), ratio, adv = clip_case(0.2, 0.2)
    # A>0, ratio 1.25 > 1.2: clipped, grad 0, loss −1.2; A<0, ratio 1.25: min is ratio·A, grad −ratio·A
    # A>0, ratio 0.85 >= 0.8: inside; A<0, 0.85: inside; A=2, ratio 1.5: clipped; A=−2, ratio 0.5: clipped
    expect_g = [0.0, 1.25, -0.85, 0.85, 0.0, 0.0]
    torch.testing.assert_close(g[0, 0], T(expect_g), rtol=1e-14, atol=0)
    loss = -(1.2 * 1.0) + 1.25 - 0.85 + 0.85 - 1.2 * 2.0 + 0.8 * 2.0
    assert out.loss.item() == pytest.approx(loss, rel=1e-14)
    assert out.metrics["clip_fraction/high"] == pytest.approx(2 / 6) and out.metrics[
        "clip_fraction/low"
    ] == pytest.approx(1 / 6)
    assert out.metrics["ratio/mean"] == pytest.approx(sum(ratio) / 6, rel=1e-14)
    k3 = sum(r - 1 - math.log(r) for r in ratio) / 6  # KL(π_old ‖ πθ) from tokens of π_old
    assert out.metrics["approx_kl"] == pytest.approx(k3, rel=1e-13)


def test_asymmetric_clipping():
    # clip_low 0.1 (floor 0.9), clip_high 0.3 (ceiling 1.3): 1.25 with A>0 now passes; 0.85 with A<0 clips
    (out, g), _, _ = clip_case(0.1, 0.3)
    torch.testing.assert_close(g[0, 0], T([-1.25, 1.25, -0.85, 0.0, 0.0, 0.0]), rtol=1e-14, atol=0)
    assert out.metrics["clip_fraction/high"] == pytest.approx(1 / 6) and out.metrics[
        "clip_fraction/low"
    ] == pytest.approx(2 / 6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_term_in_the_loss(kind):
    lp, ref = [[[-1.0, -2.0, -0.5]]], [[[-1.5, -1.0, -0.5]]]
    st = mk(lp, [[[True] * 3]], [[0.0]], ref=ref)  # A = 0: only the KL term
    out, g = run("grpo", st, beta=0.1, kl=kind)
    x = [a - b for a, b in zip(lp[0][0], ref[0][0])]  # logp − ref = −log u
    k = {"k1": x, "k2": [v * v / 2 for v in x], "k3": [math.exp(-v) - 1 + v for v in x]}[kind]
    dk = {"k1": [1.0] * 3, "k2": x, "k3": [1 - math.exp(-v) for v in x]}[kind]
    assert out.loss.item() == pytest.approx(0.1 * sum(k) / 3, rel=1e-14)
    assert out.metrics["kl"] == pytest.approx(sum(k) / 3, rel=1e-14)
    torch.testing.assert_close(g[0, 0], T([0.1 * d / 3 for d in dk]), rtol=1e-14, atol=0)
    # beta = 0: the reference only feeds the metric
    out0, g0 = run("grpo", mk(lp, [[[True] * 3]], [[0.0]], ref=ref), kl=kind)
    assert out0.loss.item() == 0.0 and (g0 == 0).all() and out0.metrics["kl"] == out.metrics["kl"]


def test_record_weights_multiply_and_zero_weight_rows_get_no_gradient():
    _, g = run("grpo", mk(LP, MASK, ADV, valid=VALID, weights=[1.0, 0.0]))
    assert (g[1] == 0).all() and (g[0] != 0).sum() == 9
    _, g1 = run("grpo", mk(LP, MASK, ADV, valid=VALID, weights=[3.0, 3.0]))
    _, g2 = run("grpo", mk(LP, MASK, ADV, valid=VALID))
    torch.testing.assert_close(g1, g2, rtol=1e-15, atol=0)  # a common weight cancels


@pytest.mark.parametrize("name", [*POLICY, "ppo", "raft"])
def test_nan_in_padding_reaches_neither_loss_nor_gradient(name):
    def stats(fill):
        lp = torch.where(torch.tensor(MASK) & torch.tensor(VALID)[..., None], T(LP).nan_to_num(0.0), fill)
        old = lp.detach() - 0.05
        adv = T(ADV).nan_to_num(fill)[..., None].expand(2, 3, 4).clone()
        vals = torch.where(torch.isnan(lp), fill, lp.detach() / 2)
        return mk(
            lp,
            MASK,
            adv,
            old=old.tolist(),
            valid=VALID,
            weights=W,
            ref=old.tolist(),
            rewards=[[1.0, 2.0, 0.5], [3.0, 1.0, fill]],
            values=vals.clone().requires_grad_(),
            old_values=vals,
            returns=vals + 0.3,
        )

    hp = {"beta": 0.1} if name in POLICY else {}
    a, b = stats(NAN), stats(123.0)
    out_a, g_a = run(name, a, **hp)
    out_b, g_b = run(name, b, **hp)
    assert (
        torch.isfinite(out_a.loss) and torch.isfinite(g_a).all() and torch.isfinite(out_a.per_example).all()
    )
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(g_a, g_b)
    counted = torch.tensor(MASK) & torch.tensor(VALID)[..., None]
    assert (g_a[~counted] == 0).all()


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("grpo", {"clip_low": -0.1}, "clip_low"),
        ("grpo", {"clip_low": 1.5}, "clip_low"),
        ("rloo", {"clip_high": -1.0}, "clip_high"),
        ("remax", {"beta": -0.1}, "beta"),
        ("grpo", {"beta": NAN}, "beta"),
        ("grpo", {"kl": "k4"}, "kl must be one of"),
        ("reinforce_pp", {"loss_agg": "mean"}, "loss_agg"),
        ("grpo", {"loss_agg": "sum_norm", "norm_len": -1}, "norm_len"),
        ("grpo", {"loss_agg": "sum_norm", "norm_len": 2.5}, "norm_len"),
        ("grpo", {"norm_len": 5}, "only to loss_agg='sum_norm'"),
        ("grpo", {"beta": 0.1}, "ref_token_logps"),
        ("ppo", {"clip": 1.5}, "clip"),
        ("ppo", {"vf_coef": -1.0}, "vf_coef"),
        ("ppo", {"cliprange_value": -0.1}, "cliprange_value"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors(name, hp, match):
    v = torch.zeros(2, 3, 4, dtype=D)
    st = mk(LP, MASK, ADV, valid=VALID, values=v, old_values=v, returns=v)
    with pytest.raises(ValueError, match=match):
        get_objective(name)(st, **hp)


def test_missing_or_misshapen_inputs_are_clear_errors():
    st = mk(LP, MASK, ADV, valid=VALID)
    del st.extra["old_token_logps"]
    with pytest.raises(ValueError, match="old_token_logps"):
        get_objective("grpo")(st)
    with pytest.raises(ValueError, match="advantages"):
        get_objective("rloo")(mk(LP, MASK, valid=VALID))
    with pytest.raises(ValueError, match=r"advantages.*got \(2, 4\)"):
        get_objective("rloo")(mk(LP, MASK, [[0.0] * 4] * 2, valid=VALID))
    with pytest.raises(ValueError, match=r"extra \['values', 'old_values', 'returns'\]"):
        get_objective("ppo")(mk(LP, MASK, ADV, valid=VALID))
    with pytest.raises(ValueError, match="token_logps and token_mask"):
        get_objective("raft")(SequenceStats(logps=T([[0.0]]), rewards=T([[1.0]])))
    with pytest.raises(ValueError, match="one reward per sample"):
        get_objective("raft")(mk(LP, MASK, valid=VALID))


# ---------------------------------------------------------------- ppo
def test_ppo_value_loss_clipping_and_gradients_by_hand():
    # four tokens, on-policy, A = 0; V_old = 0, cliprange 0.2:
    # V=0.1,R=1: inside the range, both terms 0.81, ½·max = 0.405, d/dV = V − R = −0.9
    # V=0.5,R=1: clip(V)=0.2, (0.2−1)² = 0.64 > 0.25: clipped term wins, d/dV = 0
    # V=0.5,R=0: clip(V)=0.2, 0.04 < 0.25: plain term, d/dV = 0.5
    # V=−0.5,R=−1: clip(V)=−0.2, 0.64 > 0.25: clipped, d/dV = 0
    vals = T([0.1, 0.5, 0.5, -0.5]).view(1, 1, 4).requires_grad_()
    st = mk(
        [[[-1.0, -1.0, -1.0, -1.0]]],
        [[[True] * 4]],
        [[[0.0] * 4]],
        values=vals,
        old_values=torch.zeros(1, 1, 4, dtype=D),
        returns=T([1.0, 1.0, 0.0, -1.0]).view(1, 1, 4),
    )
    out, gv = run("ppo", st, wrt=vals, vf_coef=0.5)
    vf = (0.405 + 0.32 + 0.125 + 0.32) / 4
    assert out.metrics["vf_loss"] == pytest.approx(vf, rel=1e-14) and out.metrics["pg_loss"] == 0.0
    assert out.loss.item() == pytest.approx(0.5 * vf, rel=1e-14)
    assert out.metrics["vf_clipfrac"] == 0.5 and out.metrics["values/mean"] == pytest.approx(0.15)
    torch.testing.assert_close(gv[0, 0], T([0.5 * -0.9 / 4, 0.0, 0.5 * 0.5 / 4, 0.0]), rtol=1e-14, atol=0)
    # no value clipping: every token gets (V − R)
    vals2 = vals.detach().clone().requires_grad_()
    st.extra["values"] = vals2
    _, gv2 = run("ppo", st, wrt=vals2, vf_coef=0.5, cliprange_value=math.inf)
    torch.testing.assert_close(gv2[0, 0], T([-0.9, -0.5, 0.5, 0.5]) * 0.5 / 4, rtol=1e-14, atol=0)


def test_ppo_policy_part_is_the_clipped_surrogate_token_mean():
    adv = torch.arange(24, dtype=D).view(2, 3, 4) / 10 - 1
    v = torch.zeros(2, 3, 4, dtype=D)
    st = mk(LP, MASK, adv, valid=VALID, weights=W, values=v, old_values=v, returns=v)
    out, g = run("ppo", st)
    ref_out, ref_g = run("grpo", mk(LP, MASK, adv, valid=VALID, weights=W))
    torch.testing.assert_close(g, ref_g, rtol=0, atol=0)
    assert out.loss.item() == ref_out.loss.item() == out.metrics["pg_loss"]


# ---------------------------------------------------------------- raft
def test_raft_trains_only_on_the_best_sample_of_each_group():
    # row 0: best is sample 1 (reward 3); row 1: samples 0 and 1 tie at 5 (the padded slot's NaN never wins)
    rewards = [[1.0, 3.0, 2.0], [5.0, 5.0, NAN]]
    out, g = run("raft", mk(LP, MASK, valid=VALID, weights=W, rewards=rewards))
    target = torch.zeros(2, 3, 4, dtype=torch.bool)
    target[0, 1, :2] = True
    target[1, 0, :1] = True
    target[1, 1, :3] = True
    norm = W[0] * 2 + W[1] * 4  # Σ_b w_b·target tokens_b
    expect = torch.where(target, torch.tensor(W, dtype=D)[:, None, None] * -1.0 / norm, 0.0)
    torch.testing.assert_close(g, expect, rtol=1e-15, atol=0)
    nll0, nll1 = (0.3 + 0.7), (0.4 + 2.0 + 1.0 + 0.1)
    assert out.loss.item() == pytest.approx((W[0] * nll0 + W[1] * nll1) / norm, rel=1e-14)
    torch.testing.assert_close(out.per_example, T([nll0 / 2, nll1 / 4]))
    assert out.metrics["targets"] == 3.0 and out.metrics["reward/best"] == 4.0
    assert out.metrics["nll"] == pytest.approx((nll0 + nll1) / 6, rel=1e-14)
    # scalar scores work the same when the rollout records carry the rewards as scores
    st = mk(LP, MASK, valid=VALID, weights=W)
    st.scores = T(rewards)
    _, g2 = run("raft", st)
    torch.testing.assert_close(g2, g, rtol=0, atol=0)


def test_bfloat16_log_probs_give_float32_ratios():
    # bf16 has 8 mantissa bits: a log-ratio of 1e-3 would vanish; the objective upcasts first
    lp = torch.full((1, 1, 2), -1.0, dtype=torch.bfloat16, requires_grad=True)
    st = SequenceStats(
        logps=torch.zeros(1, 1),
        token_logps=lp,
        token_mask=torch.ones(1, 1, 2, dtype=torch.bool),
        extra={"old_token_logps": torch.full((1, 1, 2), -1.001), "advantages": torch.ones(1, 1)},
    )
    out = get_objective("grpo")(st)
    assert out.loss.dtype == torch.float32
    assert out.metrics["ratio/mean"] == pytest.approx(math.exp(0.001), rel=1e-6)
    (g,) = torch.autograd.grad(out.loss, lp)
    assert g.dtype == torch.bfloat16 and (g.float() == -0.5).all()  # −ratio·A/2, rounded back to bf16
