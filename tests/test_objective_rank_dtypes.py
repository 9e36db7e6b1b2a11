"""Every registered objective that accepts ranks takes them as integers as well as floats.

Integer ranks are what a user naturally writes (``torch.tensor([[0, 1, 2]])``); listwise losses fill
padded slots with +inf in the ranks' dtype, which an integer tensor cannot hold ("value cannot be
converted to type int64_t without overflow"). `SequenceStats` converts them once, where they enter,
so each objective must give the same loss and gradient, bit for bit, for int64, int32, float32 and
float64 ranks holding the same small integers (all exactly representable)."""

import pytest
import torch

from alignkit.objectives import SequenceStats, available, get_objective

D = torch.float64
B, T = 2, 4
RANK_OBJECTIVES = sorted(n for n in available() if "ranks" in get_objective(n).label_kinds)
RANK_DTYPES = [torch.int64, torch.int32, torch.float32, torch.float64]


def _k(spec) -> int:
    # unlikelihood reads ranks only for K = 2 pairs; pair objectives have max_responses = 2
    return 2 if spec.max_responses == 2 or spec.name == "unlikelihood" else 3


def _outputs(spec) -> int:
    """Reward-head outputs an objective reads with its defaults: [B, K] (1) or [B, K, m]."""
    if spec.name == "prm":
        return T  # per-step logits
    if spec.reward_outputs == "1":
        return 1
    return spec.defaults[spec.reward_outputs] or 3  # dim=0 means "the vector length": 3 here


def stats_for(spec, ranks_dtype: torch.dtype) -> SequenceStats:
    g = torch.Generator().manual_seed(0)
    K = _k(spec)
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])[:, :K]
    if K == 2:
        ranks = torch.tensor([[0, 1], [1, 0]])
    kw = {"ranks": ranks.to(ranks_dtype), "lengths": torch.tensor([[2.0, 5.0, 3.0], [3.0, 4.0, 2.0]], dtype=D)[:, :K]}
    if spec.inputs == "rewards":
        m = _outputs(spec)
        shape = (B, K) if m == 1 else (B, K, m)
        kw.update(logps=None, rewards=torch.randn(shape, generator=g, dtype=D).requires_grad_(True))
        if "gate" in spec.extras:
            kw["extra"] = {"gate": torch.softmax(torch.randn(B, m, generator=g, dtype=D), -1)}
        if "user" in spec.extras:
            kw["extra"] = {"user": torch.tensor([5, -1])}
        if spec.name == "prm":
            kw["extra"] = {"step_mask": torch.ones(B, K, T, dtype=D),
                           "step_labels": torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=D).expand(B, K, T).clone()}
        return SequenceStats(**kw)
    kw["logps"] = (-1.0 - 4.0 * torch.rand(B, K, generator=g, dtype=D)).requires_grad_(True)
    kw["ref_logps"] = -1.0 - 4.0 * torch.rand(B, K, generator=g, dtype=D)
    if spec.needs_token_logps:
        kw["token_logps"] = kw["logps"][..., None].expand(B, K, T) / T
        kw["token_mask"] = torch.ones(B, K, T, dtype=torch.bool)
    if spec.name == "soft_dpo":
        kw["extra"] = {"p": torch.tensor([0.9, 0.6], dtype=D)}
    if spec.name == "lcpo":  # one posterior per record, keyed by its position in the data
        kw["extra"] = {"record_index": torch.tensor([0, 1])}
    if "teacher_buckets" in spec.extras:  # ranks pick the targets (responses=targets); the losses read buckets
        kw["token_mask"] = torch.ones(B, K, T, dtype=torch.bool)
        kw["extra"] = {"teacher_buckets": torch.randn(B, K, T, 4, generator=g, dtype=D).log_softmax(-1),
                       "student_buckets": kw["logps"][..., None, None] / 8 + torch.randn(B, K, T, 4, generator=g,
                                                                                        dtype=D).log_softmax(-1),
                       "teacher_ref_buckets": torch.randn(B, K, T, 4, generator=g, dtype=D).log_softmax(-1)}
    if spec.name == "tpo":
        kw["extra"] = {"shared_tokens": torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]], dtype=D),
                       "ref_token_logps": kw["ref_logps"][..., None].expand(B, K, T) / T}
    return SequenceStats(**kw)


def test_the_rank_objectives_are_the_ones_expected():
    # a new objective that takes ranks joins the test below through the registry; this pins today's list
    assert RANK_OBJECTIVES == [
        "adpa", "aligndistil", "all_pairs", "asft", "bt", "bt_margin", "bt_pl", "cdpo", "cpo", "distill", "dpo",
        "fdpo", "gated_bt", "gpm", "hinge", "ipo", "jpo", "lcpo", "lipo", "listnet", "mixture", "orpo", "pal", "plackett_luce", "poft", "prm",
        "rdpo", "rpo", "sft", "simpo", "soft_dpo", "tpo", "unlikelihood",
    ]  # fmt: skip


@pytest.mark.parametrize("name", RANK_OBJECTIVES)
def test_integer_and_float_ranks_give_the_same_loss_and_gradient(name):
    spec = get_objective(name)
    results = []
    for dtype in RANK_DTYPES:
        stats = stats_for(spec, dtype)
        assert stats.ranks.dtype == (D if not dtype.is_floating_point else dtype)
        out = spec(stats)
        leaf = stats.logps if stats.logps is not None else stats.rewards
        (grad,) = torch.autograd.grad(out.loss, leaf, allow_unused=True)
        results.append((dtype, out.loss.detach(), grad))
    base_loss = results[-1][1]
    assert torch.isfinite(base_loss)
    for dtype, loss, grad in results:
        assert torch.equal(loss, base_loss), (name, dtype, loss, base_loss)
        assert (grad is None) == (results[-1][2] is None)
        if grad is not None:
            assert torch.equal(grad, results[-1][2]), (name, dtype)


def test_integer_scores_and_bool_labels_become_floats_of_the_statistics_dtype():
    logps = torch.zeros(1, 3, dtype=D)
    s = SequenceStats(logps=logps, scores=torch.tensor([[3, 1, 2]]), labels=torch.tensor([[True, False, True]]))
    assert (s.scores.dtype, s.scores.tolist()) == (D, [[3.0, 1.0, 2.0]])
    assert (s.labels.dtype, s.labels.tolist()) == (D, [[1.0, 0.0, 1.0]])
    # plackett_luce on integer scores equals float scores (key = -scores, padded slots +inf)
    ref = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D)
    pl = get_objective("plackett_luce")
    a = pl(SequenceStats(logps=torch.tensor([[-1.5, -1.0, -2.0]], dtype=D), ref_logps=ref, scores=torch.tensor([[3, 1, 2]])))
    b = pl(SequenceStats(logps=torch.tensor([[-1.5, -1.0, -2.0]], dtype=D), ref_logps=ref,
                         scores=torch.tensor([[3.0, 1.0, 2.0]], dtype=D)))
    assert torch.equal(a.loss, b.loss)
