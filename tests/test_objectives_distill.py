"""Token-level distillation over the teacher's top-k tokens plus a rest bucket: zero loss and zero gradient when
student = teacher, the exact full-vocabulary KL (value and gradient) when k = V, a lower bound that grows with k
below that, and a small case by hand."""

import math

import pytest
import torch

from alignkit.objectives.distill import teacher_topk, token_mean, topk_buckets, topk_kl

D = torch.float64
V = 11


def logits(seed, shape=(2, 3, 5)):
    return torch.randn(*shape, V, generator=torch.Generator().manual_seed(seed), dtype=D) * 2


def student_kl(student_logits, teacher_logits, k, direction):
    """(per-position KL, gradient in the student's logits of its sum)."""
    ids, teacher = teacher_topk(teacher_logits, k)
    s = student_logits.clone().requires_grad_(True)
    kl = topk_kl(topk_buckets(s, ids), teacher, direction)
    (g,) = torch.autograd.grad(kl.sum(), s)
    return kl.detach(), g


def exact_kl(p_logits, q_logits):
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("k", [1, 4, V])
def test_teacher_equal_to_student_gives_zero_loss_and_gradient(direction, k):
    t = logits(0)
    kl, g = student_kl(t, t, k, direction)
    assert kl.abs().max().item() < 1e-14
    assert g.abs().max().item() < 1e-14


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_top_k_equal_to_the_vocabulary_is_the_exact_kl(direction):
    t, s = logits(1), logits(2)
    kl, g = student_kl(s, t, V, direction)
    s_ = s.clone().requires_grad_(True)
    want = exact_kl(t, s_) if direction == "forward" else exact_kl(s_, t)
    (g_want,) = torch.autograd.grad(want.sum(), s_)
    torch.testing.assert_close(kl, want.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, g_want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_fewer_tokens_give_a_lower_bound_that_grows_with_k(direction):
    """Nested top-k sets refine the buckets, so the KL cannot shrink as k grows (data processing)."""
    t, s = logits(3), logits(4)
    kls = [student_kl(s, t, k, direction)[0] for k in range(1, V + 1)]
    for a, b in zip(kls, kls[1:]):
        assert bool((b >= a - 1e-12).all())
    assert bool((kls[0] < kls[-1]).any())


def test_small_case_by_hand():
    """V = 3, k = 1: teacher p = (0.7, 0.2, 0.1) keeps token 0, rest 0.3; student q = (0.5, 0.25, 0.25), rest 0.5."""
    tl, sl = torch.tensor([0.7, 0.2, 0.1], dtype=D).log(), torch.tensor([0.5, 0.25, 0.25], dtype=D).log()
    fwd, _ = student_kl(sl, tl, 1, "forward")
    rev, _ = student_kl(sl, tl, 1, "reverse")
    assert fwd.item() == pytest.approx(0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5), rel=1e-12)
    assert rev.item() == pytest.approx(0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3), rel=1e-12)
    ids, buckets = teacher_topk(tl, 1)
    assert ids.tolist() == [0] and buckets.exp().tolist() == pytest.approx([0.7, 0.3])


def test_token_mean_averages_tokens_then_responses():
    per = torch.tensor([[[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]], [[5.0, 5.0, 5.0], [7.0, 7.0, 7.0]]], dtype=D)
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]], [[0, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    torch.testing.assert_close(token_mean(per, mask), torch.tensor([(2.0 + 2.0) / 2, 7.0], dtype=D))


def test_bad_direction_and_shapes_are_errors():
    with pytest.raises(ValueError, match="direction"):
        topk_kl(torch.zeros(3), torch.zeros(3), "sideways")
    with pytest.raises(ValueError, match="differ in shape"):
        topk_kl(torch.zeros(3), torch.zeros(4))
