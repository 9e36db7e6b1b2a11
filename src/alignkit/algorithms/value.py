"""PPO's value model and the per-token targets of a rollout (METHODS.md section 6); the recipe is `ppo.py`.

**The value model** is a separate transformer with a scalar head (an ``AutoModelForSequenceClassification``
with one output, like a reward model), read at *every* completion position: ``V_t = V(x, y_<t)``, the
hidden state at the position that predicts token ``y_t`` (``Batch.pred_index``, the positions the
log-prob executor reads), so the value of the state before each sampled token sits next to that token's
log-prob, in packed and padded batches alike. It starts from ``value_model=PATH`` — a trained reward
model (its head is kept, as TRL and OpenRLHF do) or any causal LM (a new head) — and by default from
the policy's own checkpoint (a second copy with its own parameters; nothing is shared with the policy).

**Training.** The value model is trained jointly with the policy: one optimizer, the value parameters
in their own parameter group (learning rate ``value_lr``, default ``lr``; the same schedule), one loss
``pg_loss + vf_coef · vf_loss`` (the ``ppo`` objective), one gradient clip over both (as TRL's
policy-and-value wrapper). The recipe owns it and hands it to the trainer as a module trained beside the
policy (`Trainer.train_beside`, named ``alignkit_value``), so checkpoints hold its weights and optimizer
state (exact resume); the policy's own ``save_pretrained`` never sees it, and it is written to
``final/value/`` (a sequence-classification folder: reusable as ``value_model=`` or as a reward model). With ``lora=true``
it gets its own LoRA adapters (its head fully trained), so both models train adapters only.

**Targets of a rollout** (no grad, behaviour policy πold, reference π_ref, old values V):

    kl_t   = log πold(y_t) − log π_ref(y_t)                       (k1, per sampled token)
    r_t    = −kl_coef · kl_t  (+ the sequence reward r(x, y) at the last token)   (token_rewards)
    δ_t    = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1}        (gae; V, A = 0 after the last token)
    R_t    = A_t + V_t                                             (value targets)
    A_t   ← (A_t − mean) / std  over every token of the batch      (whiten_advantages=true)

Logged: ``kl`` (token mean of kl_t), ``kl/sequence`` (mean Σ_t kl_t), ``reward/penalised`` (mean Σ_t r_t),
``values/old``, ``returns/mean``, ``advantages/mean`` (before whitening), ``explained_variance``
(``1 − Var(R − V)/Var(R)`` over tokens, for the values that made the targets).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ModelError
from alignkit.executor.logprobs import decoder_mask, pad_per_slot, unwrap
from alignkit.executor.reward_model import load_reward_model, reward_head
from alignkit.objectives.rl_ppo import gae, kl_estimate, token_rewards, whiten

logger = logging.getLogger("alignkit")
VALUE = "alignkit_value"  # the value model's name in checkpoints (its parameters' prefix)
VALUE_DIR = "value"  # final/value/


class ValueModel(nn.Module):
    """Sequence-classification model -> ``V`` [N] at the positions predicting each completion token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        base = unwrap(self.model)
        head = reward_head(self.model)
        mask = decoder_mask(batch, base.config, head.weight.dtype)
        hidden = getattr(base, base.base_model_prefix)(input_ids=batch.input_ids, attention_mask=mask,
                                                       position_ids=batch.position_ids,
                                                       use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.pred_index)
        return head(hidden).float().squeeze(-1)


def load_value_model(path: str, policy_vocab: int, pad_token_id: int | None, lora=None, **load_kwargs) -> ValueModel:
    """A `ValueModel` from a reward-model or causal-LM checkpoint; refuses a different vocabulary."""
    model = load_reward_model(path, 1, lora=lora, pad_token_id=pad_token_id, **load_kwargs)
    vocab = unwrap(model).config.vocab_size
    if vocab != policy_vocab:
        raise ModelError(f"value_model {path} has a vocabulary of {vocab} tokens, the policy {policy_vocab}: the "
                         "value model must share the policy's tokenizer (it reads the sampled token ids)")
    return ValueModel(model)


def save_value_model(value: ValueModel, final: Path, tokenizer) -> Path:
    """Write the value model to ``final/value/`` (LoRA: merged; call it after training, the merge is in place)."""
    model = value.model
    if hasattr(model, "merge_and_unload"):  # LoRA: the adapters merged into a plain model
        model = model.merge_and_unload()
    out = Path(final) / VALUE_DIR
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- targets of a rollout (pure)
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 − Var(R − V) / Var(R)`` over the tokens of ``mask``: 1 for perfect values, 0 for a constant
    at the mean, negative for worse; NaN when the returns do not vary."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    if r.numel() < 2 or float(r.var()) == 0.0:
        return float("nan")
    return float(1 - (r - v).var() / r.var())


def ppo_targets(old_logps: Tensor, ref_logps: Tensor | None, old_values: Tensor, mask: Tensor, scores: Tensor,
                kl_coef: float, gamma: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """(advantages, returns, per-token KL) [B, K, T] for one batch; see the module docstring.

    ``old_logps``, ``ref_logps`` (None: no KL penalty), ``old_values``, ``mask`` [B, K, T] (padded per slot);
    ``scores`` [B, K] the sequence rewards."""
    mask = mask.bool()
    zero = torch.zeros_like(old_logps)
    kl = zero if ref_logps is None else torch.where(mask, kl_estimate(old_logps, ref_logps, "k1"), zero)
    rewards_t = token_rewards(scores.to(old_logps.dtype), kl, mask, kl_coef if ref_logps is not None else 0.0)
    adv, ret = gae(rewards_t, old_values, mask, gamma, lam)
    return adv, ret, kl


def whiten_all(advs: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
    """`whiten` over the tokens of several batches together (the whole rollout), each back in its shape."""
    flat = torch.cat([a[m.bool()] for a, m in zip(advs, masks)])
    white = whiten(flat, torch.ones_like(flat, dtype=torch.bool))
    out, start = [], 0
    for a, m in zip(advs, masks):
        m = m.bool()
        n = int(m.sum())
        w = torch.zeros_like(a)
        w[m] = white[start:start + n]
        out.append(w)
        start += n
    return out


@torch.no_grad()
def rollout_targets(value: ValueModel, reference, batches: list[Batch], old: list[Tensor], rewards: list[Tensor],
                    kl_coef: float, gamma: float, lam: float, whiten_advantages: bool):
    """Per-batch extras for the ``ppo`` objective (advantages, old_values, returns) and the rollout's metrics.

    ``reference``: read for the KL in the reward when ``kl_coef`` > 0; ``old``: the behaviour policy's flat token
    log-probs per batch; ``rewards``: [B, K] per batch."""
    use_ref = kl_coef > 0
    parts, kls, vals, rets, advs, masks = [], [], [], [], [], []
    for batch, old_t, score in zip(batches, old, rewards):
        old_lp, mask = pad_per_slot(old_t, batch)
        ref_lp = pad_per_slot(reference.token_logps(batch), batch)[0] if use_ref else None
        v_old = pad_per_slot(value(batch), batch)[0]
        adv, ret, kl = ppo_targets(old_lp, ref_lp, v_old, mask, score, kl_coef, gamma, lam)
        parts.append({"old_values": v_old, "returns": ret})
        kls.append(kl), vals.append(v_old), rets.append(ret), advs.append(adv), masks.append(mask)
    white = whiten_all(advs, masks) if whiten_advantages else advs
    for part, a in zip(parts, white):
        part["advantages"] = a
    m = torch.cat([x.flatten() for x in masks])
    kl, v, ret, adv = (torch.cat([x.flatten() for x in xs])[m] for xs in (kls, vals, rets, advs))
    seqs = sum(int(x.any(-1).sum()) for x in masks)
    scores = torch.cat([s.flatten() for s in rewards]).float()
    metrics = {"kl": float(kl.mean()), "kl/sequence": float(kl.sum()) / max(seqs, 1),
               "reward/penalised": float(scores.mean()) - kl_coef * float(kl.sum()) / max(seqs, 1),
               "values/old": float(v.mean()), "returns/mean": float(ret.mean()), "advantages/mean": float(adv.mean()),
               "explained_variance": explained_variance(v, ret, torch.ones_like(v, dtype=torch.bool))}
    return parts, metrics
