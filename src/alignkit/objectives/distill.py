"""Token-level distillation to a teacher from its top-k log-probs per position.

At each completion position t the teacher keeps its k most likely next tokens S_t; everything else is one
"rest" bucket. Teacher and student each give k + 1 log-probs per position (`topk_buckets`): the k tokens'
``log p(v)`` and the rest's ``log(1 − Σ_{v∈S_t} p(v))``, computed from the logits as a log-sum-exp over the
tokens outside S_t (exact, −inf when S_t is the whole vocabulary). The KL is taken between these
(k+1)-bucket distributions (`topk_kl`):

* forward  ``KL(T‖S) = Σ_b p_T(b)·(log p_T(b) − log p_S(b))`` (mode covering, word-level KD,
  Kim & Rush 2016, https://arxiv.org/abs/1606.07947);
* reverse  ``KL(S‖T) = Σ_b p_S(b)·(log p_S(b) − log p_T(b))`` (mode seeking, MiniLLM,
  https://arxiv.org/abs/2306.08543).

Merging tokens into one bucket can only lose information, so each is a lower bound on the full-vocabulary
KL (data-processing inequality) and equals it when S_t is the whole vocabulary. With student = teacher both
are 0 with zero gradient in the student's logits. These per-token terms are the building blocks of the
seeds' distillation-for-alignment losses (advantage-weighted or token-adaptive mixtures reweight them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.registry import register
from alignkit.objectives.sft import sft_targets
from alignkit.objectives.stats import LossOutput, SequenceStats, weighted_mean

DIRECTIONS = ("forward", "reverse")


def topk_buckets(logits: Tensor, ids: Tensor) -> Tensor:
    """[..., k+1] log-probs of the tokens ``ids`` [..., k] under ``logits`` [..., V] (fp32 log-softmax), then
    the log-mass of every other token (−inf when ``ids`` cover the vocabulary). ``ids`` must be distinct."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, ids) - log_z
    if ids.shape[-1] >= logits.shape[-1]:  # nothing left: −inf without a gradient path (logsumexp would give NaN)
        rest = torch.full_like(log_z, -torch.inf)
    else:
        rest = torch.logsumexp(logits.scatter(-1, ids, -torch.inf), dim=-1, keepdim=True) - log_z
    return torch.cat([picked, rest], dim=-1)


def teacher_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The teacher's k most likely tokens per position: (ids [..., k], bucket log-probs [..., k+1])."""
    ids = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return ids, topk_buckets(logits, ids)


def bucket_kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """``Σ_b p(b)(log p(b) − log q(b))`` over the last dim; buckets with p(b) = 0 (log −inf) add 0."""
    keep = torch.isfinite(p_log)
    zero = torch.zeros_like(p_log)
    p_safe, q_safe = torch.where(keep, p_log, zero), torch.where(keep, q_log, zero)  # finite gradients
    return torch.where(keep, p_safe.exp() * (p_safe - q_safe), zero).sum(-1)


def topk_kl(student: Tensor, teacher: Tensor, direction: str = "forward") -> Tensor:
    """Per-position KL between teacher and student over the teacher's top-k tokens plus the rest bucket.

    Args:
        student: [..., k+1] the student's bucket log-probs at the teacher's top-k ids (`topk_buckets`, with
            gradient).
        teacher: [..., k+1] the teacher's bucket log-probs (detached here).
        direction: ``forward`` KL(teacher ‖ student) or ``reverse`` KL(student ‖ teacher).

    Returns:
        [...] per-position KL (≥ 0 up to rounding).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher bucket log-probs differ in shape: {tuple(student.shape)} vs "
                         f"{tuple(teacher.shape)}")
    teacher = teacher.detach().to(student.dtype)
    return bucket_kl(teacher, student) if direction == "forward" else bucket_kl(student, teacher)


def token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_token`` [B, K, T] over each response's tokens (``mask``), then over the row's responses
    that have any -> [B] (0 for a row without tokens)."""
    m = mask.to(per_token.dtype)
    n = m.sum(-1)
    per_response = (per_token * m).sum(-1) / n.clamp(min=1)
    has = n > 0
    return (per_response * has).sum(-1) / has.sum(-1).clamp(min=1)


RESPONSES = ("all", "targets", "rejected")


def distilled_tokens(stats: SequenceStats, name: str, responses: str, extras: tuple[str, ...]) -> Tensor:
    """[B, K, T] bool: the completion tokens of the ``responses`` an objective ``name`` distils on (``all`` valid
    ones, the ``targets`` `sft` would pick, or the ``rejected`` rest); checks that the executor gave ``extras``."""
    if responses not in RESPONSES:
        raise ConfigError(f"{name} responses must be one of {RESPONSES}, got {responses!r}")
    missing = [e for e in extras if e not in stats.extra]
    if missing or stats.token_mask is None:
        raise ValueError(f"objective {name!r} needs stats.extra {missing or list(extras)} [B, K, T, k+1] and "
                         "token_mask; the trainer computes them when a teacher model is set (teacher=PATH)")
    chosen = stats.valid
    if responses != "all":
        targets = sft_targets(stats)
        chosen = targets if responses == "targets" else stats.valid & ~targets
    return stats.token_mask.bool() & chosen[..., None]


def masked_token_loss(per_token: Tensor, mask: Tensor, stats: SequenceStats) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, per-row values [B], per_token with 0 off ``mask``): the token mean of each response, the mean over a
    row's responses, then the record-weighted mean over rows with a distilled token."""
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    per = token_mean(per_token, mask)
    return weighted_mean(per, stats, mask.flatten(1).any(dim=1)), per, per_token


def token_average(values: Tensor, mask: Tensor) -> float:
    """Plain mean of ``values`` [B, K, T] over the ``mask``ed tokens (a metric)."""
    return float(torch.where(mask, values.detach(), torch.zeros_like(values)).sum() / mask.sum().clamp(min=1))


@register("distill", label_kinds=("ranks", "scores", "labels"), min_responses=1, needs_token_logps=True,
          extras=("teacher_buckets", "student_buckets"))
def distill(stats: SequenceStats, direction: str = "forward", responses: str = "all") -> LossOutput:
    """Token-level distillation: the mean over completion tokens of ``KL(teacher ‖ student)`` (``forward``,
    word-level KD, https://arxiv.org/abs/1606.07947) or ``KL(student ‖ teacher)`` (``reverse``, MiniLLM,
    https://arxiv.org/abs/2306.08543), each over the teacher's top-k tokens plus one rest bucket
    (module docstring; exact when k covers the vocabulary).

    The teacher is the run's ``teacher`` model and k its ``teacher_top_k``; the executor computes both
    sides' bucket log-probs from chunked logits (``extra["teacher_buckets"]``, ``extra["student_buckets"]``
    [B, K, T, k+1]). Per row: the mean over its chosen responses of each response's token-mean KL; ``loss``
    is the record-weighted mean over rows with a response. With student = teacher it is 0 with zero gradient.

    Args:
        stats: ``token_mask`` [B, K, T]; the two bucket extras; ranks, scores or labels for ``targets``.
        direction: ``forward`` or ``reverse``.
        responses: ``all`` valid responses, ``targets`` (the best / desirable ones, as `sft` picks them) or
            ``rejected`` (the others).

    Returns:
        LossOutput; metrics ``kl`` (mean per-token KL over the distilled tokens), ``teacher_mass`` (mean
        probability the teacher's top-k hold).
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"distill direction must be one of {DIRECTIONS}, got {direction!r}")
    mask = distilled_tokens(stats, "distill", responses, ("teacher_buckets", "student_buckets"))
    teacher, student = stats.extra["teacher_buckets"], stats.extra["student_buckets"]
    loss, per, per_token = masked_token_loss(topk_kl(student, teacher, direction), mask, stats)
    metrics = {"kl": token_average(per_token, mask), "teacher_mass": token_average(1 - teacher[..., -1].exp(), mask)}
    return LossOutput(loss, per, metrics)
