"""What `Trainer.__init__` does before training: the precision setting, the policy (or reward model) load,
and the start-up check that the executor reads what the model's own forward gives."""

from __future__ import annotations

import torch

from alignkit.data.dataset import data_shape
from alignkit.engine import distributed as dist
from alignkit.engine.logging import logger
from alignkit.engine.score import checked_layout
from alignkit.executor import reward_model as rm
from alignkit.executor.logprobs import unwrap, verify_against_forward
from alignkit.models.checks import check_tokenizer_fits
from alignkit.models.load import LoraConfig, disable_dropout, enable_activation_checkpointing, load_model


def mixed_precision(setting: str) -> str:
    """accelerate's setting for ``mixed_precision``: ``auto`` is bf16 on a GPU that has it, else no."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def lora_config(c) -> LoraConfig | None:
    """The run's LoRA settings (None without ``lora=true``), for the policy and a recipe's value model alike."""
    return LoraConfig(c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target_modules) if c.lora else None


def load_policy(c, objective, tokenizer, train_data):
    """(model, reward head size or None, load kwargs): the causal LM, or for a reward-model objective the
    backbone with a head of the size the objective and the data's score vectors need; LoRA and activation
    checkpointing as configured."""
    load_kwargs = dict(dtype=c.dtype, attn_implementation=c.attn_implementation, trust_remote_code=c.trust_remote_code)
    lora = lora_config(c)
    head = None
    if objective.inputs == "rewards":
        head = rm.head_size(objective, data_shape(train_data.records)[3])  # (outputs, gate)
        policy = rm.load_reward_model(c.model, *head, lora=lora, pad_token_id=tokenizer.pad_token_id, **load_kwargs)
    else:
        policy = load_model(c.model, lora=lora, **load_kwargs)
    check_tokenizer_fits(tokenizer, unwrap(policy).config, c.model, train_data)
    if c.disable_dropout and (n := disable_dropout(unwrap(policy))):
        logger.info("dropout disabled in %d places of the model (disable_dropout=false keeps it)", n)
    if c.gradient_checkpointing:
        enable_activation_checkpointing(unwrap(policy), lora=c.lora)
    return policy, head, load_kwargs


def check_executor(c, acc, policy, scorer, tokenizer, data, layout: str, attn_weight, reward_model: bool) -> str:
    """The batch layout to train with, checked by `checked_layout` on ``data`` through the executor of
    ``policy`` (under FSDP through the prepared ``scorer``, on every process) in the training precision of the
    run's config ``c`` and accelerator ``acc``; ``reward_model``: a reward head is checked instead of log-probs."""
    rtol = 1e-4 if c.dtype in ("float32", "fp32") and mixed_precision(c.mixed_precision) == "no" else 3e-2
    check = rm.verify_against_forward if reward_model else verify_against_forward
    sharded = {"scorer": scorer} if dist.sharding(acc) else {}

    def verify(batch):
        with acc.autocast():
            return check(policy, batch, rtol, **sharded)

    was_training = policy.training
    policy.eval()
    try:
        return checked_layout(verify, data, tokenizer.pad_token_id, layout, c.max_row_tokens, attn_weight, acc.device,
                              type(unwrap(policy)).__name__)
    finally:
        policy.train(was_training)
