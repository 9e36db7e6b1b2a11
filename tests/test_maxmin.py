"""MaxMin-RLHF (`rewards/maxmin.py`): EM recovers known user groups; the maxmin(...) reward spec hands the
policy the worst group's reward."""

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.maxmin import MaxMinReward, em_user_groups


def test_em_recovers_known_groups_and_their_rewards():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[2.0, 0.5, 0.0], [-2.0, 0.5, 1.0]])  # group 0 and group 1 disagree on feature 0
    n_users, per_user = 20, 30
    member = torch.arange(n_users) % 2
    users = torch.arange(n_users).repeat_interleave(per_user)
    x = torch.randn(users.numel(), 3, generator=g)
    p = torch.sigmoid((x * truth[member[users]]).sum(-1))
    flip = torch.rand(users.numel(), generator=g) > p  # label by the user's group's Bradley–Terry model
    diff = torch.where(flip[:, None], -x, x)
    theta, group = em_user_groups(diff, users, 2)
    if group[0] != 0:  # groups are found up to a permutation
        theta, group = theta.flip(0), 1 - group
    assert torch.equal(group, member)
    cos = torch.nn.functional.cosine_similarity(theta, truth, dim=-1)
    assert cos.min() > 0.95, (theta, cos)
    one, _ = em_user_groups(diff, users, 1)  # one group cannot fit both: feature 0 cancels out
    assert one[0, 0].abs() < 0.5 < theta[:, 0].abs().min()


def test_maxmin_spec_scores_every_group_and_returns_the_worst():
    reward = build_group_reward("maxmin(rule:regex:a, rule:regex:b)")
    assert isinstance(reward, MaxMinReward)
    out = reward(["p", "q"], [["a", "ab"], ["b", "x"]], [{}, {}])  # group a mean 0.5, group b mean 0.5 -> first
    assert out.rewards == [[1.0, 1.0], [0.0, 0.0]] and out.metrics["maxmin/worst"] == 0.0
    out = reward(["p"], [["a", "ab"]], [{}])  # a: 1.0, b: 0.5 -> b is the worst
    assert out.rewards == [[0.0, 1.0]] and out.metrics == {"maxmin/group0": 1.0, "maxmin/group1": 0.5,
                                                           "maxmin/worst": 1.0}


def test_maxmin_needs_two_groups_and_no_options():
    with pytest.raises(ConfigError, match="two or more"):
        build_group_reward("maxmin(rule:regex:a)")
    with pytest.raises(ConfigError, match="unknown option"):
        build_group_reward("maxmin(rule:regex:a, rule:regex:b, k=1)")
