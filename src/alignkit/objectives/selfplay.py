"""Self-play objectives for general (possibly intransitive) preferences (METHODS.md section 6): SPPO and
Nash-MD. Both read, per sampled response y, a preference probability in [0, 1] — ``stats.rewards``
[B, K] in online training (else scalar ``scores``) — made by the rollout rewards of
``rewards/preference.py``:

* ``reward=winrate:PREF_SPEC`` → ``P̂(y ≻ π | x)``, y's mean win probability against the policy's other
  K − 1 samples of the prompt (SPPO's estimate);
* ``reward=mixture:PREF_SPEC`` → ``P(y ≻ y' | x)`` with y' from the geometric mixture
  ``πθ^{1−α}·π_ref^{α}`` (Nash-MD's opponent, rewards/opponents.py).

Both are pure functions of sequence log-probs: ``ρ(y) = log πθ(y|x) − log π_ref(y|x)`` (``stats.logratios``,
summed over completion tokens); every valid slot of a record counts, padded slots and NaN rewards are
masked, and records are combined with their weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

SELFPLAY = {"label_kinds": ("scores",), "needs_reference": True, "min_responses": 1}


def preference_inputs(stats: SequenceStats, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """(P [B, K] detached, ρ [B, K], mask [B, K]) with P and ρ 0 outside the mask; P must lie in [0, 1]."""
    p = stats.rewards if stats.rewards is not None and stats.rewards.dim() == 2 else stats.scores
    if p is None or p.dim() != 2:
        raise ConfigError(f"objective '{name}' needs one preference probability per response [B, K] "
                         "(online: reward=winrate:PREF_SPEC or reward=mixture:PREF_SPEC; offline: scalar scores)")
    rho = stats.logratios
    p = p.detach().to(rho.dtype)
    mask = stats.valid & ~torch.isnan(p)
    seen = p[mask]
    if seen.numel() and ((seen < 0) | (seen > 1)).any():
        raise ConfigError(f"objective '{name}' reads preference probabilities in [0, 1] (win rates), got values in "
                         f"[{float(seen.min()):.4g}, {float(seen.max()):.4g}]; use reward=winrate:PREF_SPEC or "
                         "reward=mixture:PREF_SPEC, not a raw reward, and an unfinished_penalty in [0, 1] if any")
    zero = torch.zeros_like(rho)
    return torch.where(mask, p, zero), torch.where(mask, rho, zero), mask


def _per_record(per_sample: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over each record's counted samples [B], and which records have one."""
    n = mask.sum(1)
    return per_sample.sum(1) / n.clamp(min=1), n > 0


def _mean(x: Tensor, mask: Tensor) -> float:
    return float(torch.where(mask, x.detach(), torch.zeros_like(x)).sum() / mask.sum().clamp(min=1))


@register("sppo", **SELFPLAY)
def sppo(stats: SequenceStats, eta: float = 10.0) -> LossOutput:
    """Self-Play Preference Optimization, Wu et al. 2024, https://arxiv.org/abs/2405.00675.

    Per response: ``ℓ(y) = (ρ(y) − η·(P̂(y ≻ π) − ½))²``, ρ the sequence log-ratio to the reference (the
    previous iterate π_t: online, the frozen start policy of the run; iterated with ``rounds=N``, the
    previous round) and P̂ the win rate from the rewards. Its minimiser is the SPPO update
    ``π_{t+1}(y) ∝ π_t(y)·exp(η·P̂(y ≻ π_t))`` (the ½ stands in for the log-partition). A record's loss is
    the mean over its K responses (the paper's objective over all samples; its code trains on the
    best and worst only), records are weight-averaged. Gradient in ρ: ``2(ρ − η(P̂ − ½))``. TRL's
    ``sppo_hard`` is this loss with P̂ = 1 for the chosen and 0 for the rejected response and η = 1/β.

    Args:
        eta: η > 0, the step size of the multiplicative-weights update.

    Metrics: ``winrate/mean``, ``winrate/max`` (mean over records of the best win rate), ``logratio/mean``,
    ``target/mean`` (η(P̂ − ½)), ``residual`` (mean |ρ − target|).
    """
    if not eta > 0:
        raise ConfigError(f"sppo hyper-parameter eta must be > 0, got {eta}")
    p, rho, mask = preference_inputs(stats, "sppo")
    target = eta * (p - 0.5)
    sq = torch.where(mask, (rho - target).square(), torch.zeros_like(rho))
    per, rows = _per_record(sq, mask)
    best = torch.where(mask, p, torch.full_like(p, -1.0)).amax(1)
    metrics = {"winrate/mean": _mean(p, mask), "logratio/mean": _mean(rho, mask), "target/mean": _mean(target, mask),
               "residual": _mean((rho - target).abs(), mask),
               "winrate/max": float(torch.where(rows, best, torch.zeros_like(best)).sum() / rows.sum().clamp(min=1))}
    return LossOutput(weighted_mean(per, stats, rows), per, metrics)


@register("nash_md", **SELFPLAY)
def nash_md(stats: SequenceStats, beta: float = 0.1) -> LossOutput:
    """Nash Mirror Descent, policy-gradient form (Nash-MD-PG), Munos et al. 2023,
    https://arxiv.org/abs/2312.00886; as TRL's NashMDTrainer.

    Per response y ~ πθ with preference ``P = P(y ≻ y')`` against a mixture opponent y' (the rewards):
    ``ℓ(y) = −(P − ½)·log πθ(y|x) + (β/2)·ρ(y)²``. Its gradient, ``−(P − ½ − β·ρ(y))·∇log πθ(y|x)``, is the
    REINFORCE estimate of ``∇[P(πθ ≻ π_mix) − β·KL(πθ ‖ π_ref)]`` (½ a control variate; ∇KL =
    E[ρ(y)∇log πθ(y)] for y ~ πθ). TRL writes the KL term per token, ``Σ_t sg(ρ_t)·log πθ(y_t)`` (each
    token's ratio times its own log-prob only), a biased estimate of the same gradient; the
    sequence-level form here is unbiased and needs no token log-probs. Records: mean over their K
    samples, weight-averaged.

    Args:
        beta: β ≥ 0, the KL regulariser toward the reference.

    Metrics: ``preference/mean`` (mean P), ``kl`` (mean ρ, a sequence KL(πθ ‖ π_ref) estimate on
    on-policy samples), ``logp/mean`` (mean log πθ(y)).
    """
    if not beta >= 0:
        raise ConfigError(f"nash_md hyper-parameter beta must be >= 0, got {beta}")
    p, rho, mask = preference_inputs(stats, "nash_md")
    logp = torch.where(mask, stats.logps, torch.zeros_like(rho))
    per_sample = torch.where(mask, -(p - 0.5) * logp + 0.5 * beta * rho.square(), torch.zeros_like(rho))
    per, rows = _per_record(per_sample, mask)
    metrics = {"preference/mean": _mean(p, mask), "kl": _mean(rho, mask), "logp/mean": _mean(logp, mask)}
    return LossOutput(weighted_mean(per, stats, rows), per, metrics)
