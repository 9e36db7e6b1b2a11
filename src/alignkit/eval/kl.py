"""Sampled estimates of ``KL(π ‖ π_ref)`` from log-ratios of samples, with normal confidence intervals.

For y ~ π with ``logr = log π(y) − log π_ref(y)`` (per sequence: summed log-probs from
`alignkit.engine.score.score_logps`; per token works the same) and ``u = π_ref(y)/π(y) = exp(−logr)``:

* ``k1 = logr`` — unbiased for KL, high variance, can be negative for a single sample;
* ``k2 = ½ logr²`` — biased, low variance (exact to second order when π ≈ π_ref);
* ``k3 = u − 1 − logr = exp(−logr) − 1 + logr`` — unbiased (``E_π[u] = 1``) and non-negative
  (``e^x ≥ 1 + x``), usually far lower variance than k1 when π is close to π_ref.

(METHODS.md section 6; J. Schulman, "Approximating KL divergence", 2020.) ``mean_ci`` reports a
mean with the half-width of a normal-approximation confidence interval, ``z · s / √n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import Tensor


def _tensor(x: Tensor | Sequence[float]) -> Tensor:
    return (x if isinstance(x, Tensor) else torch.as_tensor(x)).double().flatten()


def kl_k1(logr: Tensor) -> Tensor:
    """``k1 = logr``, elementwise."""
    return logr.clone()


def kl_k2(logr: Tensor) -> Tensor:
    """``k2 = ½ logr²``, elementwise."""
    return 0.5 * logr.square()


def kl_k3(logr: Tensor) -> Tensor:
    """``k3 = exp(−logr) − 1 + logr``, elementwise and >= 0 (``expm1`` keeps it exact near 0)."""
    return torch.expm1(-logr) + logr


def mean_ci(x: Tensor | Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a normal-approximation CI: ``z_{(1+level)/2} · std(x, ddof=1) / √n``.

    One value gives a half-width of NaN (no spread to estimate); NaN entries are dropped.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = _tensor(x)
    x = x[~torch.isnan(x)]
    n = x.numel()
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    return mean, float(z * x.std(unbiased=True) / math.sqrt(n))


def kl_estimates(
    policy_logps: Tensor | Sequence[float], ref_logps: Tensor | Sequence[float], level: float = 0.95
) -> dict[str, float]:
    """KL(π ‖ π_ref) from samples y ~ π: mean and CI half-width of k1, k2 and k3.

    Args:
        policy_logps: ``log π(y)`` of each sample, any shape (e.g. ``[B, K]`` summed log-probs).
        ref_logps: ``log π_ref(y)`` of the same samples, same shape. NaN pairs (missing slots) are dropped.

    Returns:
        ``{"k1": mean, "k1_ci": half-width, "k2": ..., "k2_ci": ..., "k3": ..., "k3_ci": ..., "n": count}``.
    """
    logr = _tensor(policy_logps) - _tensor(ref_logps)
    logr = logr[~torch.isnan(logr)]
    out: dict[str, float] = {"n": logr.numel()}
    for name, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        out[name], out[f"{name}_ci"] = mean_ci(fn(logr), level)
    return out
