"""Loading tokenizers and causal LMs the transformers way (local folders or locally cached Hub names).

``trust_remote_code`` is off unless the caller asks; weights load through safetensors where the
checkpoint provides them. LoRA adapters come from `peft`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("alignkit")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoraConfig:
    """LoRA settings (peft). ``target_modules="all-linear"`` adapts every linear layer but the head."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    extra: dict = field(default_factory=dict)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an eos token; add a pad token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    lora: LoraConfig | None = None,
):
    """``AutoModelForCausalLM.from_pretrained`` with dtype, attention backend and optional LoRA."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if lora is not None:
        model = apply_lora(model, lora)
    return model


def apply_lora(model, lora: LoraConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        **lora.extra,
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def frozen_copy(model):
    """A frozen, eval-mode deep copy (the 'copy of the initial policy' reference strategy)."""
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def enable_activation_checkpointing(model, lora: bool = False) -> None:
    """Recompute decoder activations in backward (non-reentrant), by transformers' current name for it
    (``activation_checkpointing_enable`` since 5.x; ``gradient_checkpointing_enable`` before). With LoRA the
    frozen embeddings' outputs must require grad, or the checkpointed blocks would get no gradient."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model.enable_input_require_grads()
