"""Distillation for alignment: a DPO-aligned teacher weighed against a second model, token by token.

Both objectives read, per completion position t, three (k+1)-bucket log-prob vectors over the teacher's top-k
tokens S_t plus one rest bucket (`alignkit.objectives.distill`): the teacher's ``l_T`` (a DPO-aligned model,
``teacher=PATH``), the ``teacher_ref`` model's ``l_R`` (``teacher_ref=PATH``: the teacher's reference, or for
AlignDistil's contrastive teacher a reverse-DPO model; default the run's reference) and the student's ``l_θ``
(with gradient). With k = V every formula below is the paper's over the full vocabulary.

* **ADPA** (Gao et al. 2025, "Advantage-Guided Distillation for Preference Alignment in Small Language
  Models", https://arxiv.org/abs/2502.17927): the DPO teacher's implicit token reward is an advantage
  ``A_t(a) = β log π_T(a|s_t)/π_R(a|s_t)``, and the student maximises its expected advantage under its own
  next-token distribution, ``L_t = −Σ_a π_θ(a|s_t) A_t(a)`` — a distribution-level reward for every token, not
  only the one in the data. Its DCKD baseline (KL to the DPO teacher on chosen and rejected responses) is
  `distill` with ``responses=all``; ``kd > 0`` adds it here (ADPA+ trains DCKD first, then ADPA).
* **AlignDistil** (Zhang et al. 2025, "AlignDistil: Token-Level Language Model Alignment as Adaptive Policy
  Distillation", https://arxiv.org/abs/2503.02832, code https://github.com/songmzhang/AlignDistil): RLHF with
  the DPO reward ``β log π_T/π_R`` and a KL penalty β/w to the reference is token-level distillation to
  ``π*_t ∝ exp((1 − w) z_R + w z_T)`` (logits linearly combined); with a reverse-DPO model as ``R`` the
  contrastive teacher extrapolates, ``π*_t ∝ exp(z_T + w (z_T − z_R))``. The token-adaptive weight grows with
  the two models' disagreement, ``w_t = scale · ‖π_T − π_R‖₁ + 10⁻³``, and the loss is
  ``(β / w_t) · KL(π_θ ‖ π*_t)``, averaged over each response's tokens.

On buckets the rest's target log-mass is the same combination of the two models' rest log-masses (Hölder: an
upper bound of the merged mass when 0 ≤ w ≤ 1), renormalised; exact at w = 0 and 1 and when k = V. The
disagreement is the L1 distance between the two bucket distributions (a lower bound of the full one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.distill import (
    DIRECTIONS,
    bucket_kl,
    distilled_tokens,
    masked_token_loss,
    token_average,
    topk_kl,
)
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats

EXTRAS = ("teacher_buckets", "teacher_ref_buckets", "student_buckets")
TARGETS = ("mixture", "extrapolate")
ADAPTIVE_EPS = 1e-3  # AlignDistil's floor on the adaptive weight (w_t = scale · L1 + 1e-3)


def _both_finite(a: Tensor, b: Tensor) -> Tensor:
    return torch.isfinite(a) & torch.isfinite(b)


def bucket_advantage(teacher: Tensor, ref: Tensor, beta: float) -> Tensor:
    """``β (l_T − l_R)`` per bucket [..., k+1]; 0 for a bucket both models give no mass (an empty rest)."""
    both = _both_finite(teacher, ref)
    zero = torch.zeros_like(teacher)
    return beta * (torch.where(both, teacher, zero) - torch.where(both, ref, zero))


def adpa_term(student: Tensor, teacher: Tensor, ref: Tensor, beta: float) -> Tensor:
    """Per position ``−Σ_b p_θ(b) A(b)`` with ``A = β (l_T − l_R)`` (teacher and ref detached) -> [...]."""
    advantage = bucket_advantage(teacher.detach(), ref.detach(), beta).to(student.dtype)
    return -(student.exp() * advantage).sum(-1)


def bucket_l1(teacher: Tensor, ref: Tensor) -> Tensor:
    """``Σ_b |p_T(b) − p_R(b)|`` per position (twice the total variation over the buckets)."""
    return (teacher.exp() - ref.exp()).abs().sum(-1)


def mixed_target(teacher: Tensor, ref: Tensor, lam: Tensor | float) -> Tensor:
    """log π* over the buckets: ``log_softmax(l_R + λ (l_T − l_R))`` (λ per position, broadcast over the buckets);
    λ = 0 gives the reference, λ = 1 the teacher, λ > 1 extrapolates past the teacher. A bucket both models give
    no mass stays at −inf."""
    lam = torch.as_tensor(lam, dtype=teacher.dtype, device=teacher.device)
    lam = lam[..., None] if lam.dim() else lam
    both = _both_finite(teacher, ref)
    zero = torch.zeros_like(teacher)
    t, r = torch.where(both, teacher, zero), torch.where(both, ref, zero)
    mixed = torch.where(both, r + lam * (t - r), torch.full_like(teacher, -torch.inf))
    return mixed.log_softmax(-1)


def aligndistil_weight(teacher: Tensor, ref: Tensor, weight: float | str, scale: float) -> Tensor:
    """w per position: the fixed ``weight``, or ``adaptive``: ``scale · ‖p_T − p_R‖₁ + 10⁻³`` (AlignDistil)."""
    if weight == "adaptive":
        return scale * bucket_l1(teacher, ref) + ADAPTIVE_EPS
    return torch.full(teacher.shape[:-1], float(weight), dtype=teacher.dtype, device=teacher.device)


@register("adpa", label_kinds=("ranks", "scores", "labels"), min_responses=1, needs_token_logps=True, extras=EXTRAS)
def adpa(stats: SequenceStats, beta: float = 0.1, kd: float = 0.0, direction: str = "forward",
         responses: str = "all") -> LossOutput:
    """ADPA, advantage-guided distillation (https://arxiv.org/abs/2502.17927): per completion token
    ``−Σ_a π_θ(a|s_t) · β log(π_T(a|s_t) / π_R(a|s_t))`` over the teacher's top-k tokens and the rest bucket,
    plus ``kd · KL`` to the teacher (DCKD; ``direction`` forward KL(T‖θ) or reverse), averaged over each
    response's tokens, then its row's responses, then rows (record weights).

    The advantage comes from the DPO-aligned ``teacher`` and the model it was aligned from, ``teacher_ref``; with
    zero advantage (teacher = teacher_ref) the loss is ``kd`` times `distill`'s. The first term is linear in the
    student's probabilities: alone it drives each position towards its highest-advantage token, so keep the
    steps few, or add ``kd`` or an `sft` term. A public implementation built on the authors' code computes it on
    the dispreferred responses only (``responses=rejected``).

    Args:
        stats: ``token_mask`` [B, K, T]; the three bucket extras [B, K, T, k+1]; ranks, scores or labels when
            ``responses`` is not ``all``.
        beta: the DPO teacher's β (scales the advantage).
        kd: weight of the DCKD term, KL between teacher and student (0: ADPA alone).
        direction: of that KL, ``forward`` or ``reverse``.
        responses: ``all``, ``targets`` (the best / desirable ones) or ``rejected`` (the others).

    Returns:
        LossOutput; metrics ``advantage`` (the student's expected advantage per token), ``teacher_advantage``
        (the teacher's: β·KL(T‖R) over the buckets), ``kl`` (to the teacher).
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"adpa direction must be one of {DIRECTIONS}, got {direction!r}")
    if kd < 0:
        raise ConfigError(f"adpa kd must be >= 0, got {kd}")
    mask = distilled_tokens(stats, "adpa", responses, EXTRAS)
    teacher, ref, student = (stats.extra[e] for e in EXTRAS)
    term = adpa_term(student, teacher, ref, beta)
    kl = topk_kl(student, teacher, direction)
    loss, per, _ = masked_token_loss(term + kd * kl if kd else term, mask, stats)
    teacher_adv = -adpa_term(teacher, teacher, ref, beta)
    metrics = {"advantage": token_average(-term, mask), "teacher_advantage": token_average(teacher_adv, mask),
               "kl": token_average(kl, mask)}
    return LossOutput(loss, per, metrics)


@register("aligndistil", label_kinds=("ranks", "scores", "labels"), min_responses=1, needs_token_logps=True,
          extras=EXTRAS)
def aligndistil(stats: SequenceStats, beta: float = 0.1, weight: float | str = "adaptive", scale: float = 10.0,
                target: str = "extrapolate", direction: str = "reverse", responses: str = "targets") -> LossOutput:
    """AlignDistil, token-adaptive policy distillation (https://arxiv.org/abs/2503.02832): per completion token
    ``(β / w_t) · KL(π_θ ‖ π*_t)`` with ``π*_t = softmax(l_R + λ_t (l_T − l_R))`` over the teacher's top-k tokens
    and the rest bucket, ``λ_t = w_t`` (``target=mixture``: teacher_ref is the reference, RLHF with the DPO
    reward) or ``1 + w_t`` (``extrapolate``: teacher_ref is a reverse-DPO model, the contrastive teacher), and
    ``w_t = scale · ‖π_T − π_R‖₁ + 10⁻³`` (``weight=adaptive``) or a fixed ``weight`` (β_DPO / β_RLHF).
    Averaged over each response's tokens (the authors' length-normalised form), then responses and rows.

    The target is the reference at λ = 0 and the teacher at λ = 1; the loss and its gradient vanish when the
    student's buckets are the target's. The authors train off-policy on the chosen responses
    (``responses=targets``, the default) with the reverse KL (``direction=reverse``).

    Args:
        stats: ``token_mask`` [B, K, T]; the three bucket extras [B, K, T, k+1]; ranks, scores or labels when
            ``responses`` is not ``all``.
        beta: the DPO reward's β (the KL coefficient is β / w).
        weight: ``adaptive`` or a fixed w > 0.
        scale: the adaptive weight's slope on the two models' L1 distance (the code's ``beta2``, 10 there).
        target: ``extrapolate`` or ``mixture``.
        direction: ``reverse`` KL(θ ‖ π*) (the paper's) or ``forward`` KL(π* ‖ θ).
        responses: ``targets``, ``all`` or ``rejected``.

    Returns:
        LossOutput; metrics ``kl`` (to the target, per token), ``weight`` (mean w_t), ``teacher_l1`` (mean
        ‖π_T − π_R‖₁ over the buckets).
    """
    if target not in TARGETS:
        raise ConfigError(f"aligndistil target must be one of {TARGETS}, got {target!r}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"aligndistil direction must be one of {DIRECTIONS}, got {direction!r}")
    if weight != "adaptive" and not (isinstance(weight, (int, float)) and weight > 0):
        raise ConfigError(f"aligndistil weight must be 'adaptive' or a number > 0, got {weight!r}")
    mask = distilled_tokens(stats, "aligndistil", responses, EXTRAS)
    teacher, ref, student = (stats.extra[e].detach() if e != "student_buckets" else stats.extra[e] for e in EXTRAS)
    w = aligndistil_weight(teacher, ref, weight, scale)
    goal = mixed_target(teacher, ref, w if target == "mixture" else 1 + w).to(student.dtype)
    kl = bucket_kl(student, goal) if direction == "reverse" else bucket_kl(goal, student)
    loss, per, _ = masked_token_loss(beta / w * kl, mask, stats)
    metrics = {"kl": token_average(kl, mask), "weight": token_average(w, mask),
               "teacher_l1": token_average(bucket_l1(teacher, ref), mask)}
    return LossOutput(loss, per, metrics)
