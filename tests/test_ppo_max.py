"""PPO-max's stabilisers as PPO options (Zheng et al. 2023, algorithms/ppo.py, algorithms/value.py): running
reward statistics that equal the statistics of every reward seen, normalisation and clipping by hand,
advantage clipping, and the statistics kept in checkpoints (a resumed run matches the uninterrupted one)."""

import pytest
import torch
from test_online_ppo import cfg

from alignkit.algorithms.value import merge_moments, shape_rewards
from alignkit.config import ConfigError, TrainConfig, from_dict


def test_running_moments_equal_the_moments_of_everything_seen():
    torch.manual_seed(0)
    parts = [torch.randn(3, 4) * 2 + 1, torch.randn(1, 2), torch.tensor([[float("nan"), 5.0]]), torch.randn(8, 4)]
    moments = None
    for x in parts:
        moments = merge_moments(moments, x)
    seen = torch.cat([x.flatten() for x in parts]).double()
    seen = seen[~seen.isnan()]
    n, mean, m2 = moments.tolist()
    assert n == seen.numel() and mean == pytest.approx(float(seen.mean()))
    assert m2 / (n - 1) == pytest.approx(float(seen.var()))
    assert merge_moments(moments, torch.tensor([float("nan")])) is moments  # nothing new


def test_rewards_are_standardised_then_clipped():
    r = torch.tensor([[0.0, 1.0], [2.0, 7.0]])
    moments = merge_moments(None, torch.tensor([1.0, 3.0]))  # mean 2, std √2
    out = shape_rewards(r, moments, 2.0)
    expected = ((r - 2) / 2 ** 0.5).clamp(-2, 2)
    torch.testing.assert_close(out, expected)
    assert shape_rewards(r, None, 0.0) is r  # off: unchanged
    torch.testing.assert_close(shape_rewards(r, merge_moments(None, torch.ones(3)), 0.0), r - 1)  # σ = 0: centred only


@pytest.mark.parametrize("key", ["reward_clip", "advantage_clip"])
def test_negative_clips_name_the_key(key):
    with pytest.raises(ConfigError, match=f"'{key}' must be >= 0"):
        from_dict(TrainConfig, {key: -1.0})


PPO_MAX = dict(reward_normalize=True, reward_clip=1.0, advantage_clip=0.5)


def test_ppo_max_statistics_cover_every_reward_and_resume_exactly(tiny_path, tmp_path):
    from alignkit.algorithms.online import OnlineTrainer

    straight = OnlineTrainer(cfg(tiny_path, tmp_path, "a", **PPO_MAX))
    history = straight.train().history
    means = [h["reward/mean"] for h in history]  # every step scores 4 prompts x 2 samples
    for i, h in enumerate(history):
        assert h["reward/running_mean"] == pytest.approx(sum(means[: i + 1]) / (i + 1), abs=1e-6)
        assert 0 <= h["reward/clip_fraction"] <= 1 and 0 < h["advantages/clip_fraction"] < 1
    (state,) = straight.objective.state_dict().values()
    assert int(state["reward_moments"][0]) == 3 * 4 * 2
    first = OnlineTrainer(cfg(tiny_path, tmp_path, "b", **PPO_MAX))
    first.step()
    first.save()
    del first
    resumed = OnlineTrainer(cfg(tiny_path, tmp_path, "b", resume_from="latest", **PPO_MAX)).train().history
    keys = ("loss", "vf_loss", "pg_loss", "reward/running_mean", "reward/running_std", "reward/shaped_mean")
    assert [[h[k] for k in keys] for h in resumed] == [[h[k] for k in keys] for h in history[1:]]
