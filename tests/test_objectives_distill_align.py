"""ADPA and AlignDistil on top-k buckets: closed forms on hand-built cases (values and gradients), the paper's
full-vocabulary formulas when k = V, ADPA with zero advantage is kd x distill, AlignDistil's target is the
reference at weight 0 and the teacher at weight 1 and its loss and gradient vanish at the target."""

import math

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.objectives import get_objective
from alignkit.objectives.distill import teacher_topk, topk_buckets
from alignkit.objectives.distill_align import adpa_term, aligndistil_weight, bucket_l1, mixed_target
from alignkit.objectives.stats import SequenceStats

D = torch.float64
V = 9
P_T, P_R, Q = [0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.5, 0.25, 0.25]  # teacher, its reference, student (V = 3)


def logits(seed, shape=(2, 2, 4)):
    return torch.randn(*shape, V, generator=torch.Generator().manual_seed(seed), dtype=D) * 2


def buckets(teacher_logits, ref_logits, student_logits, k):
    """The three bucket tensors the executor gives, and the student's logits as a leaf."""
    ids, t = teacher_topk(teacher_logits, k)
    s = student_logits.clone().requires_grad_(True)
    return t, topk_buckets(ref_logits, ids), topk_buckets(s, ids), s


def stats_of(t, r, s, mask=None):
    B, K, T = t.shape[:3]
    mask = torch.ones(B, K, T, dtype=torch.bool) if mask is None else mask
    return SequenceStats(logps=torch.zeros(B, K, dtype=D), token_logps=torch.zeros(B, K, T, dtype=D), token_mask=mask,
                         ranks=torch.arange(K, dtype=D).expand(B, K).clone(),
                         extra={"teacher_buckets": t, "teacher_ref_buckets": r, "student_buckets": s})


def run(name, t, r, s, leaf, **hp):
    out = get_objective(name)(stats_of(t, r, s), **hp)
    (g,) = torch.autograd.grad(out.loss, leaf, retain_graph=True)
    return out, g


# ------------------------------------------------------------------ ADPA

@pytest.mark.parametrize("k", [1, 3])
def test_adpa_small_case_by_hand(k):
    """V = 3. k = 3: A = β log(p_T/p_R), L = −Σ q A, ∂L/∂z_j = −q_j (A_j − Σ q A). k = 1 keeps token 0 and merges
    the rest: p_T(rest) = 0.4, p_R(rest) = 0.7, q(rest) = 0.5."""
    beta = 0.5
    tl, rl, sl = (torch.tensor(p, dtype=D).log() for p in (P_T, P_R, Q))
    t, r, s, leaf = buckets(tl, rl, sl, k)
    term = adpa_term(s, t, r, beta)
    (g,) = torch.autograd.grad(term, leaf)
    if k == 3:
        a = [beta * math.log(pt / pr) for pt, pr in zip(P_T, P_R)]
        groups = [[0], [1], [2]]
    else:
        a = [beta * math.log(0.6 / 0.3), beta * math.log(0.4 / 0.7)]
        groups = [[0], [1, 2]]
    q_b = [sum(Q[i] for i in grp) for grp in groups]
    mean_a = sum(qb * ab for qb, ab in zip(q_b, a))
    assert term.item() == pytest.approx(-mean_a, rel=1e-12)
    want = [-Q[j] * (a[b] - mean_a) for b, grp in enumerate(groups) for j in grp]  # ∂ log q(b) / ∂ z_j = δ - q_j
    torch.testing.assert_close(g, torch.tensor(want, dtype=D), rtol=1e-12, atol=1e-15)


def test_adpa_with_k_equal_to_the_vocabulary_is_the_papers_loss():
    tl, rl, sl = logits(0), logits(1), logits(2)
    t, r, s, leaf = buckets(tl, rl, sl, V)
    out, g = run("adpa", t, r, s, leaf, beta=0.1)
    s_ = sl.clone().requires_grad_(True)
    want = -(s_.softmax(-1) * 0.1 * (tl.log_softmax(-1) - rl.log_softmax(-1))).sum(-1).mean()
    (g_want,) = torch.autograd.grad(want, s_)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(g, g_want, rtol=1e-10, atol=1e-15)
    assert out.metrics["teacher_advantage"] > 0  # β·KL(T‖R)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("kd", [0.0, 0.7])
def test_adpa_with_zero_advantage_is_kd_times_distill(direction, kd):
    tl, sl = logits(3), logits(4)
    t, r, s, leaf = buckets(tl, tl, sl, 4)  # teacher_ref = teacher: no advantage anywhere
    out, g = run("adpa", t, r, s, leaf, beta=0.3, kd=kd, direction=direction)
    plain, g_plain = run("distill", t, r, s, leaf, direction=direction)
    assert out.loss.item() == pytest.approx(kd * plain.loss.item(), rel=1e-12, abs=1e-15)
    torch.testing.assert_close(g, kd * g_plain, rtol=1e-10, atol=1e-15)
    assert out.metrics["advantage"] == 0.0 and out.metrics["teacher_advantage"] == 0.0


def test_adpa_on_rejected_responses_reads_only_those():
    tl, rl, sl = logits(5), logits(6), logits(7)
    t, r, s, leaf = buckets(tl, rl, sl, 4)
    rejected = get_objective("adpa")(stats_of(t, r, s), responses="rejected").loss
    mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    mask[:, 1] = True  # ranks 0, 1: slot 1 is the rejected response
    only = get_objective("adpa")(stats_of(t, r, s, mask)).loss
    assert rejected.item() == pytest.approx(only.item(), rel=1e-12)


# ------------------------------------------------------------------ AlignDistil

def test_the_target_is_the_reference_at_weight_0_and_the_teacher_at_weight_1():
    tl, rl = logits(8), logits(9)
    for k in (3, V):
        ids, t = teacher_topk(tl, k)
        r = topk_buckets(rl, ids)
        torch.testing.assert_close(mixed_target(t, r, 0.0), r, rtol=1e-15, atol=1e-15)  # one rounding of the renormalisation
        torch.testing.assert_close(mixed_target(t, r, 1.0), t, rtol=1e-15, atol=1e-15)  # one rounding of the renormalisation
        lam = torch.zeros(t.shape[:-1], dtype=D)
        lam[..., 0] = 1.0  # per position: λ = 1 at t = 0, 0 elsewhere
        both = mixed_target(t, r, lam)
        torch.testing.assert_close(both[..., 0, :], t[..., 0, :], rtol=1e-15, atol=1e-15)  # one rounding of the renormalisation
        torch.testing.assert_close(both[..., 1:, :], r[..., 1:, :], rtol=1e-15, atol=1e-15)  # one rounding of the renormalisation


@pytest.mark.parametrize("target", ["mixture", "extrapolate"])
@pytest.mark.parametrize("weight", ["adaptive", 0.5])
def test_aligndistil_with_k_equal_to_the_vocabulary_is_the_papers_loss(target, weight):
    """The authors' formulas on full logits: w_t = scale·‖p_T − p_R‖₁ + 1e-3 (or fixed), teacher logits
    w z_T + (1 − w) z_R or z_T + w (z_T − z_R), loss (β / w) KL(π_θ ‖ π*) averaged over tokens."""
    tl, rl, sl = logits(10), logits(11), logits(12)
    t, r, s, leaf = buckets(tl, rl, sl, V)
    out, g = run("aligndistil", t, r, s, leaf, beta=0.1, weight=weight, scale=2.0, target=target, responses="all")
    s_ = sl.clone().requires_grad_(True)
    pt, pr = tl.softmax(-1), rl.softmax(-1)
    w = (2.0 * (pt - pr).abs().sum(-1) + 1e-3) if weight == "adaptive" else torch.full(tl.shape[:-1], 0.5, dtype=D)
    w_ = w[..., None]
    z = w_ * tl + (1 - w_) * rl if target == "mixture" else tl + w_ * (tl - rl)
    ls, lt = s_.log_softmax(-1), z.log_softmax(-1)
    want = (0.1 / w * (ls.exp() * (ls - lt)).sum(-1)).mean()
    (g_want,) = torch.autograd.grad(want, s_)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(g, g_want, rtol=1e-9, atol=1e-15)
    assert out.metrics["weight"] == pytest.approx(w.mean().item(), rel=1e-12)


@pytest.mark.parametrize("k", [2, V])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_aligndistil_loss_and_gradient_vanish_at_the_target(k, direction):
    """A student whose buckets are the target's (its logits are the target's on S_t and spread the rest's mass
    evenly over the other tokens) has zero loss and zero gradient."""
    tl, rl = logits(13), logits(14)
    ids, t = teacher_topk(tl, k)
    r = topk_buckets(rl, ids)
    lam = 1 + aligndistil_weight(t, r, "adaptive", 10.0)
    goal = mixed_target(t, r, lam)
    student_logits = torch.full_like(tl, 0.0)
    if k < V:
        student_logits += goal[..., -1:] - math.log(V - k)
    student_logits = student_logits.scatter(-1, ids, goal[..., :-1])
    s_leaf = student_logits.clone().requires_grad_(True)
    s = topk_buckets(s_leaf, ids)
    torch.testing.assert_close(s.detach(), goal, rtol=0, atol=1e-12)
    out, g = run("aligndistil", t, r, s, s_leaf, direction=direction, responses="all")
    assert abs(out.loss.item()) < 1e-12 and g.abs().max().item() < 1e-12


def test_adaptive_weight_grows_with_disagreement_and_is_floored():
    tl, rl = logits(15), logits(16)
    ids, t = teacher_topk(tl, 4)
    r = topk_buckets(rl, ids)
    w = aligndistil_weight(t, r, "adaptive", 10.0)
    torch.testing.assert_close(w, 10.0 * bucket_l1(t, r) + 1e-3)
    assert aligndistil_weight(t, t, "adaptive", 10.0).max().item() == pytest.approx(1e-3)


def test_bad_options_are_one_line_errors():
    tl = logits(17)
    t, r, s, _ = buckets(tl, tl, tl, 3)
    stats = stats_of(t, r, s)
    for name, hp, match in [("aligndistil", {"weight": 0}, "weight"), ("aligndistil", {"target": "blend"}, "target"),
                            ("aligndistil", {"direction": "up"}, "direction"), ("adpa", {"kd": -1}, "kd"),
                            ("adpa", {"responses": "some"}, "responses")]:
        with pytest.raises(ConfigError, match=match):
            get_objective(name)(stats, **hp)
    stats.extra.pop("teacher_ref_buckets")
    with pytest.raises(ValueError, match="teacher_ref_buckets"):
        get_objective("adpa")(stats)
