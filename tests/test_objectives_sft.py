"""sft: mean-token NLL of the target responses, checked by hand and against transformers' LM loss."""

import math

import pytest
import torch
from closed_forms import D, T
from transformers.loss.loss_utils import ForCausalLMLoss

from alignkit.objectives import SequenceStats, get_objective
from alignkit.objectives.sft import sft_targets


def mk(logps, lengths=None, ranks=None, scores=None, labels=None, weights=None, valid=None):
    return SequenceStats(
        logps=T(logps, requires_grad=True),
        lengths=T(lengths),
        ranks=T(ranks),
        scores=T(scores),
        labels=T(labels),
        weights=T(weights),
        valid=None if valid is None else torch.tensor(valid),
    )


def run(stats, **hp):
    out = get_objective("sft")(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    return out, grad


def test_length_normalized_mean_over_rows_of_best_response():
    # row 0 best is column 1 (rank 0); row 1 best is column 0.
    st = mk([[-9.0, -6.0], [-2.0, -8.0]], lengths=[[3.0, 4.0], [5.0, 2.0]], ranks=[[1.0, 0.0], [0.0, 1.0]])
    out, g = run(st)
    assert out.loss.item() == pytest.approx((6 / 4 + 2 / 5) / 2, rel=1e-15)
    torch.testing.assert_close(out.per_example, T([1.5, 0.4]))
    torch.testing.assert_close(g, T([[0.0, -1 / 4 / 2], [-1 / 5 / 2, 0.0]]))
    assert out.metrics["nll"] == pytest.approx(0.95) and out.metrics["tokens"] == 9.0


def test_token_level_mean_when_not_length_normalized():
    st = mk([[-9.0, -6.0], [-2.0, -8.0]], lengths=[[3.0, 4.0], [5.0, 2.0]], ranks=[[1.0, 0.0], [0.0, 1.0]])
    out, g = run(st, length_normalize=False)
    assert out.loss.item() == pytest.approx((6 + 2) / (4 + 5), rel=1e-15)
    torch.testing.assert_close(out.per_example, T([1.5, 0.4]))  # each row's own token mean
    torch.testing.assert_close(g, T([[0.0, -1 / 9], [-1 / 9, 0.0]]))


def test_equals_transformers_causal_lm_loss_on_the_same_tokens():
    gen = torch.Generator().manual_seed(0)
    B, K, L, V = 3, 2, 7, 11
    logits = torch.randn(B, K, L, V, generator=gen, dtype=D)
    ids = torch.randint(0, V, (B, K, L), generator=gen)
    prompt_len, ends = 2, torch.tensor([[7, 5], [4, 6], [6, 7]])  # completion = ids[prompt_len:end]
    pos = torch.arange(L)
    completion = (pos >= prompt_len) & (pos < ends[..., None])  # [B, K, L]
    token_logps = torch.log_softmax(logits[..., :-1, :], -1).gather(-1, ids[..., 1:, None]).squeeze(-1)
    tmask = completion[..., 1:]
    logps = (token_logps * tmask).sum(-1)
    ranks = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    st = SequenceStats(logps=logps, lengths=tmask.sum(-1).to(D), ranks=ranks)
    best = ranks.argmin(1)
    labels = torch.where(completion, ids, -100)[torch.arange(B), best]
    ref = ForCausalLMLoss(logits[torch.arange(B), best], labels, vocab_size=V)
    out = get_objective("sft")(st, length_normalize=False)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)  # transformers computes in fp32
    per_seq = torch.stack(
        [ForCausalLMLoss(logits[b, best[b]][None], labels[b][None], vocab_size=V) for b in range(B)]
    )
    torch.testing.assert_close(get_objective("sft")(st).loss.float(), per_seq.mean(), rtol=1e-6, atol=0)


def test_targets_scores_labels_ties_padding_and_sft_data():
    tgt = sft_targets(SequenceStats(logps=T([[0.0, 0.0, 0.0]]), scores=T([[0.1, 0.7, 0.3]])))
    assert tgt.tolist() == [[False, True, False]]
    tgt = sft_targets(SequenceStats(logps=T([[0.0, 0.0, 0.0]]), ranks=T([[0.0, 0.0, 1.0]])))
    assert tgt.tolist() == [[True, True, False]]  # tied best responses are all targets
    padded = SequenceStats(logps=T([[0.0, 0.0]]), ranks=T([[1.0, 0.0]]), valid=torch.tensor([[True, False]]))
    assert sft_targets(padded).tolist() == [[True, False]]  # best among valid slots
    lab = SequenceStats(logps=T([[0.0, 0.0]]), labels=T([[0.0, 1.0]]), valid=torch.tensor([[True, False]]))
    assert sft_targets(lab).tolist() == [[False, False]]  # a padded slot is never a target
    assert sft_targets(SequenceStats(logps=T([[0.0], [0.0]]))).tolist() == [[True], [True]]
    with pytest.raises(ValueError, match="ranks, scalar scores or labels"):
        sft_targets(SequenceStats(logps=T([[0.0, 0.0]])))


def test_ties_average_targets_labels_mask_empty_rows_and_weights():
    tie, _ = run(mk([[-2.0, -6.0]], lengths=[[1.0, 2.0]], ranks=[[0.0, 0.0]]))
    assert tie.loss.item() == pytest.approx((2.0 + 3.0) / 2)
    st = mk(
        [[-2.0, -6.0], [-1.0, -1.0], [-4.0, -9.0]],
        lengths=[[1.0, 2.0], [1.0, 1.0], [2.0, 3.0]],
        labels=[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]],
        weights=[1.0, 5.0, 3.0],
    )
    out, g = run(st)
    torch.testing.assert_close(out.per_example, T([2.0, 0.0, (2.0 + 3.0) / 2]))
    assert out.loss.item() == pytest.approx((1 * 2.0 + 3 * 2.5) / 4, rel=1e-15)
    torch.testing.assert_close(g, T([[-1 / 4, 0.0], [0.0, 0.0], [-3 / 4 / 2 / 2, -3 / 4 / 2 / 3]]))
    tok, gt = run(st, length_normalize=False)
    assert tok.loss.item() == pytest.approx((1 * 2 + 3 * 13) / (1 * 1 + 3 * 5), rel=1e-15)
    torch.testing.assert_close(gt, T([[-1 / 16, 0.0], [0.0, 0.0], [-3 / 16, -3 / 16]]))


def test_finite_for_extreme_log_probs():
    out, g = run(mk([[-1e4, -1.0], [0.0, -1e4]], ranks=[[0.0, 1.0], [0.0, 1.0]]))
    assert out.loss.item() == pytest.approx(1e4 / 2) and torch.isfinite(g).all()
    assert math.isfinite(out.metrics["logps/chosen"])
