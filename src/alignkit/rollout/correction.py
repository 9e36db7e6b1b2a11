"""The train/rollout mismatch of an inference engine's samples, and its truncated importance-sampling fix.

An engine such as vLLM samples with its own kernels, so the probability it gave a sampled token,
``π_rollout(y_t)``, differs slightly from the trainer's ``π_old(y_t)`` on the same weights. Logged
every step (``rollout_backend=vllm``): ``rollout/logp_diff``, the mean ``|log π_old − log π_rollout|``
over sampled tokens, and ``rollout/logp_diff_max``. With ``rollout_is=tis`` the policy-gradient term
of each token is multiplied by the truncated importance weight

    w_t = min(π_old(y_t) / π_rollout(y_t), C),   C = rollout_is_cap

(Yao et al., "Your efficient RL framework secretly brings you off-policy RL training", 2025; verl's
and TRL's vLLM importance-sampling correction), detached. The clipped surrogate is positively
homogeneous in the advantage (``−min(r·wA, clip(r)·wA) = w·(−min(r·A, clip(r)·A))`` for w > 0), so
the correction is applied as per-token advantages ``w_t·A``: the KL term is left unweighted, as in
verl and TRL. Logged with it: ``rollout/is_weight`` (mean w_t) and ``rollout/is_truncated`` (share
of tokens at the cap).
"""

from __future__ import annotations

import torch
from torch import Tensor

ROLLOUT_LOGPS = "rollout_token_logps"  # Experience.extra key: [B, K, L] engine log-probs, NaN past a sample's end


def tis_weights(old: Tensor, rollout: Tensor, cap: float) -> Tensor:
    """Per-token ``min(exp(old − rollout), cap)`` (no gradient)."""
    return torch.exp(old.detach() - rollout.detach()).clamp(max=cap)


def dense_rollout_logps(per_sample: list[list[list[float]]]) -> Tensor:
    """B x K lists of per-token log-probs -> [B, K, L] float32, NaN-padded (L: the longest sample)."""
    width = max((len(s) for row in per_sample for s in row), default=0)
    out = torch.full((len(per_sample), max((len(r) for r in per_sample), default=0), width), float("nan"))
    for b, row in enumerate(per_sample):
        for k, s in enumerate(row):
            out[b, k, : len(s)] = torch.tensor(s, dtype=torch.float32)
    return out


def join_rollout_logps(parts: list[Tensor]) -> Tensor:
    """[B_i, K, L_i] engine log-probs of consecutive chunks of one rollout -> [ΣB_i, K, max L_i], NaN-padded."""
    width = max(p.shape[-1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=float("nan")) for p in parts])


class RolloutCorrection:
    """Per step: compares each batch's behaviour log-probs with the engine's and, with ``mode="tis"``,
    reweights the advantages. Metrics cover the first update of the step (the behaviour log-probs do
    not change across ``updates_per_batch``)."""

    def __init__(self, mode: str = "none", cap: float = 2.0):
        self.mode, self.cap = mode, cap
        self.sums: dict[str, float] = {}
        self.tokens = 0.0
        self.seen: set[int] = set()

    def __call__(self, adv: Tensor, old: Tensor, mask: Tensor, rollout: Tensor | None, key: int) -> Tensor:
        """``adv`` [B, K] or [B, K, T]; ``old`` [B, K, T] and ``mask`` [B, K, T] (counted tokens) of one batch;
        ``rollout`` [B, K, L ≥ T] the engine's log-probs of the same samples (None: returns ``adv``).
        ``key`` names the batch (its metrics are counted once)."""
        if rollout is None:
            return adv
        T = old.shape[-1]
        rollout = rollout[..., :T].to(old.device, old.dtype)
        if rollout.shape != old.shape:
            raise ValueError(f"engine log-probs {tuple(rollout.shape)} do not match the batch's {tuple(old.shape)}")
        mask = mask & ~torch.isnan(rollout)
        zero = torch.zeros_like(old)
        old, rollout = torch.where(mask, old.detach(), zero), torch.where(mask, rollout, zero)
        w = torch.where(mask, tis_weights(old, rollout, self.cap), torch.ones_like(old))
        if key not in self.seen:
            self.seen.add(key)
            diff = (old - rollout).abs()
            n = float(mask.sum())
            self.tokens += n
            self._add("rollout/logp_diff", float(diff.sum()))
            self.sums["rollout/logp_diff_max"] = max(self.sums.get("rollout/logp_diff_max", 0.0), float(diff.max()))
            self._add("rollout/is_weight", float(w[mask].sum()))
            self._add("rollout/is_truncated", float((w[mask] >= self.cap).sum()))
        if self.mode != "tis":
            return adv
        full = adv[..., None].expand_as(old) if adv.dim() == 2 else adv
        return full * w.to(full.dtype)

    def apply(self, stats, extra: dict, rows: list[int], key: int) -> None:
        """Reweight ``stats.extra["advantages"]`` of the batch of rollout ``rows`` (``extra``: the rollout's
        `Experience.extra`; nothing happens without the engine's log-probs in it)."""
        rollout = extra.get(ROLLOUT_LOGPS)
        if rollout is None or "advantages" not in stats.extra:
            return
        mask = stats.token_mask.bool() & stats.valid[..., None]
        stats.extra["advantages"] = self(stats.extra["advantages"], stats.extra["old_token_logps"], mask,
                                         rollout[rows], key)

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def metrics(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {k: (v if k.endswith("_max") else v / n) for k, v in self.sums.items()}
