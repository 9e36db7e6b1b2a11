"""f-DPG: distributional policy gradient toward a target energy-based model with any f-divergence.

Go et al. 2023, "Aligning language models with preferences through f-divergence minimization",
https://arxiv.org/abs/2302.08215. The target is the EBM ``p(y) = a(y)·exp(r(y)/β) / Z`` with ``a = π_ref``
(the KL-regularised RLHF optimum; a reward ``r = log b(y)`` with β = 1 gives the paper's ``a(y)·b(y)``
constraint targets). The policy minimises ``D_f(πθ ‖ p) = E_{y~p}[f(πθ(y)/p(y))]``, whose gradient is

    ∇θ D_f(πθ ‖ p) = E_{y~πθ}[ f'(πθ(y)/p(y)) · ∇θ log πθ(y) ],

a policy gradient with the pseudo-reward ``R(y) = −f'(πθ(y)/p(y))``. On a record of n samples of πθ (online:
fresh samples scored by the run's reward, ``stats.rewards``): ``log(πθ/p)(y_k) = ρ_k − r_k/β + log Ẑ`` with
ρ the sequence log-ratio to the reference and ``Ẑ = (1/n) Σ_k exp(r_k/β − ρ_k)`` (importance sampling
of Z from the same samples); the loss is ``−(1/n) Σ_k A_k·log πθ(y_k)`` with the leave-one-out advantage
``A_k = R_k − mean_{j≠k} R_j`` (R and Ẑ without gradient; the baseline keeps the estimate unbiased).

The divergences (``divergence=``), t = πθ/p:

* ``forward_kl`` KL(p ‖ πθ): f(t) = −log t, R = p/πθ — the original DPG (Khalifa et al. 2021);
* ``reverse_kl`` KL(πθ ‖ p): f(t) = t·log t, R = −log(πθ/p) − 1 — RL with the KL-regularised reward r − β·ρ
  (up to β and a constant);
* ``tv`` total variation ½ Σ|πθ − p|: f(t) = ½|t − 1|, R = −½·sign(t − 1);
* ``js`` Jensen–Shannon: f(t) = ½[t·log(2t/(1 + t)) + log(2/(1 + t))], R = −½·log(2t/(1 + t)) (the paper
  finds it a good balance between alignment and diversity: the default).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.rl import sample_rewards
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean


def _js(t: Tensor) -> Tensor:
    return 0.5 * (t * torch.log(2 * t / (1 + t)) + torch.log(2 / (1 + t)))


# name -> (f(t), f'(t) as a function of log t)
DIVERGENCES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "forward_kl": (lambda t: -torch.log(t), lambda lt: -torch.exp(-lt)),
    "reverse_kl": (lambda t: t * torch.log(t), lambda lt: lt + 1),
    "tv": (lambda t: 0.5 * (t - 1).abs(), lambda lt: 0.5 * torch.sign(lt)),
    "js": (_js, lambda lt: 0.5 * (math.log(2) + lt - torch.logaddexp(torch.zeros_like(lt), lt))),
}


def f_divergence(pi: Tensor, p: Tensor, divergence: str) -> Tensor:
    """``D_f(π ‖ p) = Σ_y p(y)·f(π(y)/p(y))`` of two full distributions over the last dimension (for checks)."""
    f = DIVERGENCES[divergence][0]
    return (p * f(pi / p)).sum(-1)


def log_density_ratio(rho: Tensor, r: Tensor, mask: Tensor, beta: float) -> Tensor:
    """``log(πθ/p)(y_k) = ρ_k − r_k/β + log Ẑ`` per sample [B, K] (module docstring), 0 outside ``mask``."""
    energy = torch.where(mask, r / beta - rho, torch.full_like(rho, -torch.inf))
    n = mask.sum(1, keepdim=True).clamp(min=1).to(rho.dtype)
    log_z = torch.logsumexp(energy, 1, keepdim=True) - torch.log(n)
    return torch.where(mask, rho - r / beta + log_z, torch.zeros_like(rho))


@register("fdpg", label_kinds=("scores",), needs_reference=True, min_responses=2)
def fdpg(stats: SequenceStats, beta: float = 0.1, divergence: str = "js") -> LossOutput:
    """f-DPG (Go et al. 2023, https://arxiv.org/abs/2302.08215): policy gradient with pseudo-reward
    ``−f'(πθ(y)/p(y))`` toward ``p ∝ π_ref·exp(r/β)`` (module docstring). For samples of πθ (online);
    records need ≥ 2 counted samples (padded slots and NaN rewards masked), weight-averaged.

    Args:
        beta: β > 0, the temperature of the target (its KL regularisation).
        divergence: ``forward_kl``, ``reverse_kl``, ``tv`` or ``js``.

    Metrics: ``fdpg/divergence`` (the sampled estimate ``mean_k f(t_k)/t_k`` of D_f(πθ ‖ p)),
    ``fdpg/log_ratio`` (mean log(πθ/p) of the samples), ``logratio/mean`` (mean ρ).
    """
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"fdpg hyper-parameter beta must be finite and > 0, got {beta}")
    if divergence not in DIVERGENCES:
        raise ConfigError(f"fdpg hyper-parameter divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    f, f_prime = DIVERGENCES[divergence]
    rho = stats.logratios
    r = sample_rewards(stats, "fdpg").detach().to(rho.dtype)
    mask = stats.valid & ~torch.isnan(r)
    zero = torch.zeros_like(rho)
    r = torch.where(mask, r, zero)
    lt = log_density_ratio(rho.detach(), r, mask, beta)
    reward = torch.where(mask, -f_prime(lt), zero)
    n = mask.sum(1, keepdim=True).to(rho.dtype)
    others = (reward.sum(1, keepdim=True) - reward) / (n - 1).clamp(min=1)
    adv = torch.where(mask, reward - others, zero)
    logp = torch.where(mask, stats.logps, zero)
    rows = n.squeeze(1) >= 2
    per = -(adv * logp).sum(1) / n.squeeze(1).clamp(min=1)
    t = torch.exp(lt)
    count = mask.sum().clamp(min=1)
    metrics = {"fdpg/divergence": float(torch.where(mask, f(t) / t, zero).sum() / count),
               "fdpg/log_ratio": float(lt.sum() / count), "logratio/mean": float(torch.where(mask, rho.detach(), zero).sum() / count)}
    return LossOutput(weighted_mean(per, stats, rows), per, metrics)
