"""`SequenceStats` (what the log-prob executor returns) and `LossOutput` (what every objective returns)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class SequenceStats:
    """Statistics of B prompts x K responses. Padded response slots have ``valid == False``.

    logps:        [B, K] summed log-prob of each response's completion tokens, s(y); None for
                  reward-model objectives, which read ``rewards`` instead.
    rewards:      reward-model outputs read at each response's last completion token: [B, K] (one
                  head), [B, K, m] (m outputs: attributes, mixture heads, GPM embeddings), or
                  [B, K, S] per-step rewards for process reward models (with ``extra["step_mask"]``).
    ref_logps:    [B, K] the same under the reference model, or None.
    lengths:      [B, K] number of completion tokens n(y) (>= 1 for valid slots).
    valid:        [B, K] bool, False for padded slots (K varies per prompt).
    token_logps:  [B, K, T] per-token log-probs (0 on padding), with ``token_mask``; optional.
    ranks:        [B, K] 0 = best, ties allowed; integer (or bool) ranks are converted to float here,
                  once for every objective (listwise losses fill padded slots with +inf).
    scores:       [B, K] or [B, K, m] scores (integers converted to float, as ranks).
    labels:       [B, K] 1.0 desirable / 0.0 undesirable (bools or integers converted to float).
    weights:      [B] per-record loss weights.
    extra:        named extra tensors (e.g. ``ref_token_logps``) for methods that need them.
    """

    logps: Tensor | None
    ref_logps: Tensor | None = None
    lengths: Tensor | None = None
    valid: Tensor | None = None
    token_logps: Tensor | None = None
    token_mask: Tensor | None = None
    ranks: Tensor | None = None
    scores: Tensor | None = None
    labels: Tensor | None = None
    weights: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    rewards: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logps is None and self.rewards is None:
            raise ValueError("SequenceStats needs logps (policy objectives) or rewards (reward-model objectives)")
        if self.logps is not None and self.logps.dim() != 2:
            raise ValueError(f"logps must be [B, K], got shape {tuple(self.logps.shape)}")
        if self.rewards is not None and self.rewards.dim() not in (2, 3):
            raise ValueError(f"rewards must be [B, K] or [B, K, m], got shape {tuple(self.rewards.shape)}")
        ref = self.logps if self.logps is not None else self.rewards
        shape = ref.shape[:2]
        if self.rewards is not None and self.rewards.shape[:2] != shape:
            raise ValueError(f"rewards must start with shape {tuple(shape)}, got {tuple(self.rewards.shape)}")
        for name in ("ranks", "scores", "labels"):  # the one place labels enter: every objective sees floats
            t = getattr(self, name)
            if t is not None and not t.is_floating_point():
                setattr(self, name, t.to(ref.dtype if ref.is_floating_point() else torch.get_default_dtype()))
        if self.lengths is None:
            self.lengths = torch.ones(shape, dtype=ref.dtype, device=ref.device)
        if self.valid is None:
            self.valid = torch.ones(shape, dtype=torch.bool, device=ref.device)
        for name in ("ref_logps", "lengths", "valid", "ranks", "labels"):
            t = getattr(self, name)
            if t is not None and t.shape != shape:
                raise ValueError(f"{name} must have shape {tuple(shape)} like logps, got {tuple(t.shape)}")
        if self.scores is not None and self.scores.shape[:2] != shape:
            raise ValueError(f"scores must start with shape {tuple(shape)}, got {tuple(self.scores.shape)}")
        if self.weights is not None and self.weights.shape != shape[:1]:
            raise ValueError(f"weights must be [B]={shape[0]}, got {tuple(self.weights.shape)}")

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def num_responses(self) -> int:
        return self.valid.shape[1]

    @property
    def mean_logps(self) -> Tensor:
        """m(y) = s(y) / n(y), [B, K]."""
        return self.logps / self.lengths.clamp(min=1)

    @property
    def nll(self) -> Tensor:
        """Mean token negative log-likelihood, [B, K]."""
        return -self.mean_logps

    @property
    def logratios(self) -> Tensor:
        """rho(y) = s(y) - s_ref(y), [B, K]."""
        if self.ref_logps is None:
            raise ValueError("this objective needs reference log-probs (ref_logps is None)")
        return self.logps - self.ref_logps

    def to(self, device: torch.device | str) -> SequenceStats:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in moved.items()}
        moved["extra"] = {k: v.to(device) for k, v in self.extra.items()}
        return replace(self, **moved)


@dataclass
class LossOutput:
    """loss: scalar; per_example: [B]; metrics: floats for logging (detached)."""

    loss: Tensor
    per_example: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def weighted_mean(per_example: Tensor, stats: SequenceStats, mask: Tensor | None = None) -> Tensor:
    """Mean of ``per_example`` [B] weighted by record weights, over rows where ``mask`` [B] holds."""
    w = torch.ones_like(per_example) if stats.weights is None else stats.weights.to(per_example.dtype)
    if mask is not None:
        w = w * mask.to(per_example.dtype)
    denom = w.sum()
    return (per_example * w).sum() / denom.clamp(min=torch.finfo(per_example.dtype).tiny)
