"""PPO's value model and the per-token targets of a rollout (METHODS.md section 6).

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
policy-and-value wrapper). It is registered as the submodule ``alignkit_value`` of the policy, so the
trainer's checkpoints hold its weights and optimizer state (exact resume) without any special case;
it is taken out again for the final ``save_pretrained``, and written to ``final/value/`` (a
sequence-classification folder: reusable as ``value_model=`` or as a reward model). With ``lora=true``
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
from alignkit.engine.logprobs import decoder_mask, pad_per_slot, unwrap
from alignkit.engine.reward_model import load_reward_model, reward_head
from alignkit.errors import ConfigError, ModelError
from alignkit.objectives.rl_ppo import gae, kl_estimate, token_rewards, whiten

logger = logging.getLogger("alignkit")
VALUE = "alignkit_value"  # the value model's attribute on the policy (its checkpoint prefix)
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


def setup_value_model(trainer) -> ValueModel:
    """Load the value model, register it on the policy, give it a parameter group; rebuild the schedule."""
    from alignkit.engine import distributed as dist
    from alignkit.engine.reference import build_reference, resolve_strategy
    from alignkit.engine.schedule import build_scheduler
    from alignkit.engine.startup import lora_config
    from alignkit.models.load import disable_dropout, enable_activation_checkpointing

    c, acc = trainer.config, trainer.accelerator
    if dist.sharding(acc):  # DDP is fine: the online trainer averages the value gradients itself
        raise ConfigError("objective=ppo runs on one process or under DDP (its value model is not sharded by "
                         "FSDP/DeepSpeed); launch with a DDP config, or use grpo / rloo")
    if getattr(c, "rollout_workers", 0):
        raise ConfigError("objective=ppo samples in-process for now: set rollout_workers=0")
    strategy = "none"
    if c.kl_coef > 0:  # the KL penalty in the reward reads the reference (built from the initial policy)
        strategy = resolve_strategy(c.ref_strategy, True, c.lora, c.ref_model)
        trainer.reference = build_reference(strategy, trainer.policy, c.ref_model, acc.device, c.chunk_size,
                                            trainer.load_kwargs)
    path = c.value_model or c.model
    value = load_value_model(path, unwrap(trainer.policy).config.vocab_size, trainer.tokenizer.pad_token_id,
                             lora=lora_config(c), **trainer.load_kwargs).to(acc.device)
    if c.disable_dropout:
        disable_dropout(unwrap(value.model))
    if c.gradient_checkpointing:
        enable_activation_checkpointing(unwrap(value.model), lora=c.lora)
    if acc.num_processes > 1:  # every process starts from the same trainable weights (a fresh head, LoRA)
        from accelerate.utils import broadcast

        for p in value.parameters():
            if p.requires_grad:  # frozen weights come from the same checkpoint everywhere
                p.data.copy_(broadcast(p.data.clone(), from_process=0))
    setattr(trainer.policy, VALUE, value)
    lr = c.value_lr if c.value_lr is not None else c.lr
    params = [p for p in value.parameters() if p.requires_grad]
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    optimizer.add_param_group({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": c.weight_decay})
    trainer.scheduler = build_scheduler(optimizer, c.scheduler, c.warmup, trainer._optimizer_steps())
    logger.info("ppo: value model from %s (%d trainable parameters, lr %g); KL reference for the reward: %s", path,
                sum(p.numel() for p in params), lr, strategy)
    return value


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
def rollout_targets(trainer, batches: list[Batch], old: list[Tensor], rewards: list[Tensor]):
    """Per-batch extras for the ``ppo`` objective (advantages, old_values, returns) and the rollout's metrics.

    ``old``: the behaviour policy's flat token log-probs per batch; ``rewards``: [B, K] per batch."""
    c = trainer.config
    value = getattr(trainer.policy, VALUE)
    use_ref = c.kl_coef > 0
    parts, kls, vals, rets, advs, masks = [], [], [], [], [], []
    for batch, old_t, score in zip(batches, old, rewards):
        old_lp, mask = pad_per_slot(old_t, batch)
        ref_lp = pad_per_slot(trainer.reference.token_logps(batch), batch)[0] if use_ref else None
        v_old = pad_per_slot(value(batch), batch)[0]
        adv, ret, kl = ppo_targets(old_lp, ref_lp, v_old, mask, score, c.kl_coef, c.gamma, c.gae_lambda)
        parts.append({"old_values": v_old, "returns": ret})
        kls.append(kl), vals.append(v_old), rets.append(ret), advs.append(adv), masks.append(mask)
    white = whiten_all(advs, masks) if c.whiten_advantages else advs
    for part, a in zip(parts, white):
        part["advantages"] = a
    m = torch.cat([x.flatten() for x in masks])
    kl, v, ret, adv = (torch.cat([x.flatten() for x in xs])[m] for xs in (kls, vals, rets, advs))
    seqs = sum(int(x.any(-1).sum()) for x in masks)
    scores = torch.cat([s.flatten() for s in rewards]).float()
    metrics = {"kl": float(kl.mean()), "kl/sequence": float(kl.sum()) / max(seqs, 1),
               "reward/penalised": float(scores.mean()) - c.kl_coef * float(kl.sum()) / max(seqs, 1),
               "values/old": float(v.mean()), "returns/mean": float(ret.mean()), "advantages/mean": float(adv.mean()),
               "explained_variance": explained_variance(v, ret, torch.ones_like(v, dtype=torch.bool))}
    return parts, metrics
