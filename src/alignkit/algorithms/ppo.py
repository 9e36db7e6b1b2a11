"""PPO (https://arxiv.org/abs/1707.06347) as in RLHF (InstructGPT, https://arxiv.org/abs/2203.02155).

    alignkit train objective=ppo model=PATH prompts=P.jsonl reward=rm:RM kl_coef=0.05 num_samples=2

Per-token advantages come from a value model instead of the group. The recipe owns the value model
(`alignkit.algorithms.value`): it loads it at setup (``value_model=PATH``, default the policy's checkpoint)
and hands it to the trainer to train beside the policy — one optimizer (its own parameter group at
``value_lr``), one gradient clip, the same checkpoints; ``final/value/`` at the end.

Each step, without gradient: the behaviour policy's token log-probs, the reference's (for the KL penalty
``kl_coef`` in the reward), the old values; then token rewards, GAE(``gamma``, ``gae_lambda``), returns and
``whiten_advantages`` (`value.rollout_targets`). With gradient, per update: the current values. The loss
is the registered ``ppo`` objective (clipped policy and value losses, ``objectives/rl_ppo.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from alignkit.algorithms.recipe import Recipe, Rollout, RunContext, Targets, register_recipe
from alignkit.algorithms.value import VALUE, ValueModel, load_value_model, rollout_targets, save_value_model
from alignkit.data.collate import Batch
from alignkit.engine import distributed as dist
from alignkit.engine.startup import lora_config
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import pad_per_slot, unwrap
from alignkit.models.load import disable_dropout, enable_activation_checkpointing

logger = logging.getLogger("alignkit")


class PPO(Recipe):
    family = "ppo"
    behaviour_logps = True
    targets_read_old = True  # the KL in the reward reads them, whatever updates_per_batch is
    value: ValueModel | None = None

    def check(self, config, objective) -> None:
        if config.rollout_workers:
            raise ConfigError("objective=ppo samples in-process for now: set rollout_workers=0")

    def needs_reference(self, config, objective) -> bool:
        return config.kl_coef > 0  # the KL penalty in the reward reads the reference (the initial policy)

    def setup(self, ctx: RunContext) -> dict[str, tuple[nn.Module, float]]:
        """Load the value model; every process starts from the same trainable weights."""
        c, acc = ctx.config, ctx.accelerator
        if dist.sharding(acc):  # DDP is fine: the trainer averages the value gradients itself
            raise ConfigError("objective=ppo runs on one process or under DDP (its value model is not sharded by "
                             "FSDP/DeepSpeed); launch with a DDP config, or use grpo / rloo")
        path = c.value_model or c.model
        value = load_value_model(path, ctx.policy.config.vocab_size, ctx.tokenizer.pad_token_id, lora=lora_config(c),
                                 **ctx.load_kwargs).to(acc.device)
        if c.disable_dropout:
            disable_dropout(unwrap(value.model))
        if c.gradient_checkpointing:
            enable_activation_checkpointing(unwrap(value.model), lora=c.lora)
        if acc.num_processes > 1:  # a fresh head, LoRA: the same start everywhere
            from accelerate.utils import broadcast

            for p in value.parameters():
                if p.requires_grad:  # frozen weights come from the same checkpoint everywhere
                    p.data.copy_(broadcast(p.data.clone(), from_process=0))
        lr = c.value_lr if c.value_lr is not None else c.lr
        logger.info("ppo: value model from %s (%d trainable parameters, lr %g); KL reference for the reward: %s",
                    path, sum(p.numel() for p in value.parameters() if p.requires_grad), lr,
                    getattr(ctx.reference, "strategy", "none"))
        self.value = value
        return {VALUE: (value, lr)}

    def targets(self, ctx: RunContext, rollout: Rollout) -> Targets:
        c, device = ctx.config, ctx.accelerator.device
        rewards = [rollout.exp.rewards[ch].to(device) for ch in rollout.chunks]
        extra, metrics = rollout_targets(self.value, ctx.reference, rollout.batches, rollout.old, rewards, c.kl_coef,
                                         c.gamma, c.gae_lambda, c.whiten_advantages)
        return Targets(extra, metrics)

    def live(self, batch: Batch) -> dict[str, Tensor]:
        return {"values": pad_per_slot(self.value(batch), batch)[0]}

    def save(self, folder: Path, tokenizer) -> None:
        save_value_model(self.value, folder, tokenizer)


register_recipe("ppo", PPO())
