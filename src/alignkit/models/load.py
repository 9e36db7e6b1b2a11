"""Loading tokenizers and causal LMs the transformers way: a local folder or a Hub id (`alignkit.models.hub`
resolves both to one local folder: downloaded and cached when online, the cache only when offline).

``trust_remote_code`` is off unless the caller asks; weights load through safetensors where the
checkpoint provides them. LoRA adapters come from `peft`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from alignkit.errors import ConfigError, ModelError
from alignkit.models import attention
from alignkit.models.attention import FLEX, use_unfused_on_cpu
from alignkit.models.hub import resolve_model

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
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = resolve_model(path, weights=False, trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ModelError(f"tokenizer at {path} has neither a pad nor an eos token; add a pad token")
        tok.pad_token = tok.eos_token
    return tok


def attention_implementation(config, requested: str | None = "auto", task: str = "causal-lm") -> str | None:
    """The attention backend to load a model with; every one of them takes alignkit's shared-prompt masks.

    ``auto``: FlexAttention on CUDA where the model class supports it and its layers are ones a block mask
    expresses (`flex_pays`: block-sparse masks skip the tiles a response never sees); else SDPA where the model
    class supports it, else eager (Gemma-2 refuses SDPA: it soft-caps attention scores). ``flex`` is short for
    ``flex_attention``. Anything else is the user's explicit choice and is passed on as it is."""
    if requested == "flex":
        requested = FLEX
    cls = model_class(config, task)
    if requested == FLEX or (requested in (None, "auto") and torch.cuda.is_available() and flex_pays(config, cls)):
        if cls is not None and not getattr(cls, "_supports_flex_attn", False):
            raise ConfigError(f"attn_implementation=flex_attention: {cls.__name__} does not support FlexAttention "
                              "in this transformers; use attn_implementation=auto")
        use_unfused_on_cpu()  # CPU runs of it go unfused (alignkit.models.attention)
        return FLEX
    if requested not in (None, "auto"):
        return requested
    if cls is not None and not getattr(cls, "_supports_sdpa", True):
        logger.info("%s does not support SDPA attention: loading it with eager attention", cls.__name__)
        return "eager"
    return "sdpa"


def flex_pays(config, cls) -> bool:
    """Whether ``auto`` picks FlexAttention on CUDA for a model: torch has it with its GPU compiler (triton), the
    model class supports it, and a block mask expresses every layer (else batches are padded rows, where flex
    attention only adds its compile time)."""
    return (attention.flex_available(gpu=True) and cls is not None
            and getattr(cls, "_supports_flex_attn", False) and attention.attention_windows(config) is not None)


def model_class(config, task: str = "causal-lm"):
    """The transformers class ``AutoModelForCausalLM`` (``task="causal-lm"``) or
    ``AutoModelForSequenceClassification`` (``"seq-cls"``) would build for ``config``; None if unknown."""
    from transformers.models.auto import modeling_auto as auto

    mapping = auto.MODEL_FOR_CAUSAL_LM_MAPPING if task == "causal-lm" else auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    try:
        return mapping[type(config)]
    except (KeyError, ValueError):
        return None


def load_model(
    path: str,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = "auto",
    trust_remote_code: bool = False,
    lora: LoraConfig | None = None,
):
    """``AutoModelForCausalLM.from_pretrained`` with dtype, attention backend (`attention_implementation`)
    and optional LoRA."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(path, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn := attention_implementation(config, attn_implementation):
        kwargs["attn_implementation"] = attn
    model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    if lora is not None:
        model = apply_lora(model, lora)
    return model


def is_router(module: torch.nn.Module, name: str = "", parent: torch.nn.Module | None = None) -> bool:
    """An MoE router: a ``*Router`` module (transformers 5), or a linear ``gate`` beside an ``experts`` list."""
    if "router" in type(module).__name__.lower():
        return True
    return name.rsplit(".", 1)[-1] in ("gate", "router") and parent is not None and hasattr(parent, "experts")


def lora_targets(model: torch.nn.Module) -> tuple[list[str], list[str], list[str]]:
    """What ``lora_target_modules=all-linear`` adapts in ``model``: (module names, fused expert parameter names,
    excluded router modules). Every linear layer (``nn.Linear``, GPT-2's ``Conv1D``) but the output and
    classification heads; MoE experts stored as 3D parameters (transformers 5) through peft's
    ``target_parameters``; routers are left alone (a low-rank update to the routing logits shifts which
    experts see which tokens, which LoRA recipes for MoE models avoid). Works on a meta-device model too."""
    from transformers.pytorch_utils import Conv1D

    skip = {id(m) for m in (model.get_output_embeddings(), getattr(model, "score", None)) if m is not None}
    modules, params, routers = set(), set(), []
    named = dict(model.named_modules())
    for name, mod in named.items():
        parent = named.get(name.rsplit(".", 1)[0]) if "." in name else None
        if is_router(mod, name, parent):
            routers.append(name)
        elif id(mod) in skip or any(name.startswith(r + ".") for r in routers):
            continue
        elif isinstance(mod, (torch.nn.Linear, Conv1D)):
            modules.add(name.rsplit(".", 1)[-1])
        elif "expert" in type(mod).__name__.lower():
            params.update(n for n, p in mod.named_parameters(recurse=False) if p.dim() == 3)
    return sorted(modules), sorted(params), routers


def apply_lora(model, lora: LoraConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: dict = {"target_modules": lora.target_modules}
    if lora.target_modules == "all-linear":
        modules, params, routers = lora_targets(model)
        targets = {"target_modules": modules, "target_parameters": params or None,
                   "exclude_modules": routers or None}
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        task_type=task_type,
        **targets,
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


def disable_dropout(model: torch.nn.Module) -> int:
    """Dropout off in ``model`` whatever mode it is in: every ``nn.Dropout``'s ``p`` and the float attention
    dropout rates attention modules keep (``attention_dropout``, passed to SDPA in training mode) set to 0.
    Returns how many were non-zero. The config is left as it was (a saved model keeps its dropout)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p, changed = 0.0, changed + 1
        for name in ("attention_dropout", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float) and value:
                setattr(module, name, 0.0)
                changed += 1
    return changed


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
