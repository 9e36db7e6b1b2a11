"""Reward transforms: log-sigmoid centring (LSC), per-prompt normalisation, combining several rewards.

(METHODS.md section 5; Z. Wang et al., "Transforming and Combining Rewards for Aligning Large
Language Models", 2024, https://arxiv.org/abs/2402.00742.)

* ``lsc(r, r_ref) = logσ(r − r_ref)`` — the log-probability, under Bradley–Terry, that the response
  beats a reference response of the same prompt (reward ``r_ref``). It is monotone in ``r``, always
  ``< 0``, ``−log 2`` at ``r = r_ref`` and flattens to 0 once ``r ≫ r_ref``: improving a response that
  is already much better than the reference gains almost nothing, while a response that is worse
  than the reference is penalised roughly linearly.
* ``combine(..., mode="lsc_sum")`` sums LSC-transformed rewards: the log-probability that the
  response beats the reference on *every* reward (independent Bradley–Terry models), a soft AND.
  A plain weighted sum lets an excellent score on one reward buy back a bad score on another.
* ``normalize_per_prompt`` z-scores rewards within each prompt's group of responses.

All functions are pure and differentiable; they compute in the dtype of their input.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError

COMBINE_MODES = ("sum", "lsc_sum")


def _as_tensor(x: Tensor | Sequence[float] | float) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    return t if t.is_floating_point() else t.double()


def lsc(r: Tensor | Sequence[float], r_ref: Tensor | Sequence[float] | float) -> Tensor:
    """Log-sigmoid centring ``u = logσ(r − r_ref)``, elementwise.

    Args:
        r: rewards, any shape (e.g. ``[N]`` one per response).
        r_ref: the reward of a reference response for the same prompt, broadcastable to ``r``
            (a float, ``[N]``, or ``[N, 1]`` against ``[N, K]``).

    Returns:
        ``u`` with the broadcast shape, in ``(−∞, 0)``; ``u = −log 2`` where ``r = r_ref``.
        (In floating point ``u`` rounds to 0 once ``r − r_ref`` exceeds ~37 in float64.)
    """
    return F.logsigmoid(_as_tensor(r) - _as_tensor(r_ref))


def _group_index(group_ids: Tensor | Sequence[Hashable], n: int) -> Tensor:
    """Map arbitrary hashable group ids (prompt ids, strings, ints) to ``0..G-1`` in order of first use."""
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if len(ids) != n:
        raise ValueError(
            f"group_ids has {len(ids)} entries but there are {n} rewards; give one id per response"
        )
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in ids], dtype=torch.long)


def normalize_per_prompt(
    r: Tensor | Sequence[float], group_ids: Tensor | Sequence[Hashable], eps: float = 1e-8
) -> Tensor:
    """Per-prompt z-score: ``(r − mean_g) / max(std_g, eps)`` within each group ``g`` of responses.

    Args:
        r: ``[N]`` rewards, one per response.
        group_ids: ``[N]`` the prompt (or record ``group``) each response belongs to; any hashable ids.
        eps: floor on the group std so constant groups do not divide by zero.

    Returns:
        ``[N]``; within each group mean 0 and (population, ``unbiased=False``) std 1. A group of one
        response, or a group whose rewards are all equal, maps to 0: it carries no within-prompt
        preference signal.
    """
    r = _as_tensor(r)
    if r.dim() != 1:
        raise ValueError(f"r must be 1-D [N], got shape {tuple(r.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    idx = _group_index(group_ids, r.numel()).to(r.device)
    g = int(idx.max()) + 1 if idx.numel() else 0
    count = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, torch.ones_like(r))
    mean = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, r) / count
    centred = r - mean[idx]
    var = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, centred.square()) / count
    return centred / var.sqrt().clamp_min(eps)[idx]


def combine(
    rewards: Tensor | Sequence[Sequence[float]],
    weights: Tensor | Sequence[float] | None = None,
    mode: str = "sum",
    r_ref: Tensor | Sequence[float] | float | None = None,
) -> Tensor:
    """Combine ``n_rewards`` rewards per response into one.

    * ``"sum"``: ``Σ_j w_j r_j`` (``r_ref`` is ignored);
    * ``"lsc_sum"``: ``Σ_j w_j logσ(r_j − r_ref_j)`` — a soft AND: a response scores well only if it
      beats the reference on every reward.

    Args:
        rewards: ``[N, n_rewards]``.
        weights: ``[n_rewards]``, default all ones.
        mode: ``"sum"`` or ``"lsc_sum"``.
        r_ref: for ``"lsc_sum"`` (required): the reference response's rewards, broadcastable to
            ``[N, n_rewards]`` — ``[n_rewards]`` for one reference per reward, ``[N, n_rewards]`` for
            one per prompt and reward (the paper uses a per-prompt reference, e.g. the SFT policy's
            median-reward sample).

    Returns:
        ``[N]`` combined rewards.
    """
    if mode not in COMBINE_MODES:
        raise ConfigError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
    rewards = _as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be 2-D [N, n_rewards], got shape {tuple(rewards.shape)}")
    n_rewards = rewards.shape[1]
    if weights is None:
        w = torch.ones(n_rewards, dtype=rewards.dtype, device=rewards.device)
    else:
        w = _as_tensor(weights).to(dtype=rewards.dtype, device=rewards.device)
        if w.shape != (n_rewards,):
            raise ValueError(f"weights must have shape [{n_rewards}] (one per reward), got {tuple(w.shape)}")
    if mode == "sum":
        return rewards @ w
    if r_ref is None:
        raise ValueError("mode='lsc_sum' needs r_ref: the reference response's reward(s), e.g. [n_rewards]")
    ref = _as_tensor(r_ref).to(dtype=rewards.dtype, device=rewards.device)
    try:
        u = lsc(rewards, torch.broadcast_to(ref, rewards.shape))
    except RuntimeError as e:
        raise ValueError(
            f"r_ref of shape {tuple(ref.shape)} does not broadcast to rewards {tuple(rewards.shape)}; "
            f"use [{n_rewards}] or [N, {n_rewards}]"
        ) from e
    return u @ w
