"""MaxMin-RLHF (Chakraborty et al. 2024, "MaxMin-RLHF: alignment with diverse human preferences",
https://arxiv.org/abs/2402.08925): learn one reward per user group, then train the policy for the worst group.

* :func:`em_user_groups` — the paper's first stage: the users' group memberships are unknown, so EM alternates
  a hard assignment of each user to the group whose Bradley–Terry reward explains that user's pairs best
  (E-step, :func:`assign_users`) with refitting each group's reward on its users' pairs (M-step). Here the
  rewards are linear in given pair features (``r_g(x, y) = θ_g·φ(x, y)``), a pure function of tensors; with
  transformer reward models it is ``alignkit train objective=bt user_groups=G`` (`engine/user_groups.py`).
* :class:`MaxMinReward` — the second stage as a reward spec, ``reward="maxmin(rm:A, rm:B)"``: every step
  scores the batch with each group's reward and hands the policy the reward of the group whose batch mean is
  lowest, ``max_π min_g E_π[r_g]`` by the paper's alternation (one policy step on the current worst group).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.rewards.protocol import GroupReward, RewardOutput


def _fit(theta: Tensor, diff: Tensor, weight: Tensor, steps: int, lr: float, l2: float) -> Tensor:
    """``steps`` of gradient descent on ``Σ_n weight_n·(−logσ(θ·diff_n)) / Σ weight + l2/2·‖θ‖²``."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=lr, max_iter=steps, line_search_fn="strong_wolfe")
    norm = weight.sum().clamp(min=1)

    def closure():
        opt.zero_grad()
        loss = (weight * -F.logsigmoid(diff @ theta)).sum() / norm + 0.5 * l2 * theta.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def assign_users(pair_loglik: Tensor, users: Tensor, n_users: int) -> Tensor:
    """The E-step: ``[U]`` each user's group ``argmax_g Σ_{n of u} pair_loglik[n, g]``, from ``pair_loglik``
    [N, G] the log-likelihood ``logσ(r_g(x, y_w) − r_g(x, y_l))`` of each pair under each group's
    Bradley–Terry reward and ``users`` [N] the labelling user of each pair (``0..n_users−1``). A user
    without pairs joins group 0."""
    onehot = F.one_hot(users.long(), n_users).to(pair_loglik.dtype)  # [N, U]
    return (onehot.T @ pair_loglik).argmax(1)


def em_user_groups(diff: Tensor, users: Tensor, num_groups: int, iters: int = 20, steps: int = 50,
                   lr: float = 1.0, l2: float = 1e-3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """EM over user groups (MaxMin-RLHF, Algorithm 1, stage 1) for linear Bradley–Terry rewards.

    Args:
        diff: ``φ(x, y_w) − φ(x, y_l)`` [N, D] of N labelled pairs (chosen minus rejected features).
        users: [N] the labelling user of each pair, integers ``0..U−1``.
        num_groups: G ≥ 1.
        iters: EM rounds (stops early once no user changes group).
        steps, lr, l2: the M-step's L-BFGS iterations, step size and ridge penalty (keeps θ finite when a
            group's pairs are separable).
        seed: the random initial assignment of users to groups.

    Returns:
        ``(theta [G, D], group [U])``: each group's reward weights and each user's group. E-step: user u joins
        ``argmax_g Σ_{n of u} logσ(θ_g·diff_n)``; M-step: θ_g maximises the likelihood of its users' pairs.
    """
    if num_groups < 1 or users.numel() != diff.shape[0]:
        raise ConfigError(f"em_user_groups needs num_groups >= 1 and one user per pair, got {num_groups} groups, "
                          f"{users.numel()} users for {diff.shape[0]} pairs")
    diff = diff.double()
    n_users = int(users.max()) + 1
    onehot = F.one_hot(users.long(), n_users).double()  # [N, U]
    group = torch.randint(num_groups, (n_users,), generator=torch.Generator().manual_seed(seed))
    theta = torch.zeros(num_groups, diff.shape[1], dtype=torch.float64)
    for _ in range(iters):
        member = onehot @ F.one_hot(group, num_groups).double()  # [N, G]: pair n belongs to group g
        theta = torch.stack([_fit(theta[g], diff, member[:, g], steps, lr, l2) for g in range(num_groups)])
        new = assign_users(F.logsigmoid(diff @ theta.T), users, n_users)
        if torch.equal(new, group):
            break
        group = new
    return theta.float(), group


class MaxMinReward(GroupReward):
    """``maxmin(spec_1, …, spec_G)``: each step, the reward of the group whose batch mean is lowest.

    Metrics: ``maxmin/group{g}`` (each group's batch mean) and ``maxmin/worst`` (the index optimised).
    """

    def __init__(self, parts: list[GroupReward]):
        if len(parts) < 2:
            raise ConfigError(f"reward maxmin(...) needs the rewards of two or more groups, got {len(parts)}")
        self.parts = parts
        self.needs_models = any(p.needs_models for p in parts)

    def __call__(self, prompts, groups, rows, models=None) -> RewardOutput:
        outs = [p(prompts, groups, rows, models) for p in self.parts]
        means = [sum(map(sum, o.rewards)) / max(1, sum(map(len, o.rewards))) for o in outs]
        worst = min(range(len(means)), key=means.__getitem__)
        metrics = {f"maxmin/group{g}": m for g, m in enumerate(means)}
        metrics["maxmin/worst"] = float(worst)
        return RewardOutput(outs[worst].rewards, metrics)
