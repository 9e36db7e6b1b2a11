"""What a model's attention is, read from its config, and the attention backends alignkit can load it with.

`attention_windows`: each attention layer type's sliding window (the shared-prompt block mask applies them).
FlexAttention (`alignkit.executor.flex` builds its block-sparse masks): whether torch has it, and its CPU path.

On CPU, alignkit runs flex attention unfused (`use_unfused_on_cpu`): torch's compiled CPU kernel pays a 20-35 s
compile per new shape, its template targets inference, and with torch 2.13 it returned wrong outputs for head
dims 8 and 16 (compared with SDPA: errors of 1.5 and 1.9; 4, 24, 32 and 64 matched). The unfused implementation
is the same computation (same `BlockMask`, same score modification) with the scores materialised, so it checks
the masks exactly, which is what CPU runs are for; CUDA keeps transformers' compiled kernel. `flex_attention`
refuses a backward on CPU, so where a gradient is needed `unfused_with_grad` runs the same unfused computation
through autograd: CPU training and gradient checks work too (slowly: scores are materialised).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from alignkit.errors import ConfigError

logger = logging.getLogger("alignkit")

MASKABLE_LAYER_TYPES = ("full_attention", "sliding_attention")


def attention_windows(config) -> dict[str, int | None] | None:
    """The sliding window of each attention layer type of a model (None: full attention), as transformers
    applies them: ``layer_types`` where the config has it (Gemma-2/3 alternate local and global layers),
    else one ``sliding_window`` for every layer (Mistral, Mixtral, Phi-3). None when a layer type is not
    one a block mask can express."""
    window = getattr(config, "sliding_window", None) or None
    if getattr(config, "use_sliding_window", True) is False and not getattr(config, "layer_types", None):
        window = None  # Qwen2-style configs without layer_types (older transformers)
    types = getattr(config, "layer_types", None)
    if not types:
        return {"full_attention": window}
    if any(t not in MASKABLE_LAYER_TYPES for t in types):
        return None
    return {t: window if t == "sliding_attention" else None for t in dict.fromkeys(types)}


FLEX = "flex_attention"  # transformers' name for the backend
CPU_BACKWARD = ("attn_implementation=flex_attention cannot train on CPU with this torch (FlexAttention has no "
                "backward there): train with attn_implementation=auto")


def flex_available(gpu: bool = False) -> bool:
    """Whether this torch has `torch.nn.attention.flex_attention` (``gpu``: and triton, which compiles its GPU
    kernel)."""
    import importlib.util

    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return not gpu or importlib.util.find_spec("triton") is not None


def is_flex(config) -> bool:
    return getattr(config, "_attn_implementation", None) == FLEX


def unfused_with_grad(query: Tensor, key: Tensor, value: Tensor, score_mod=None, block_mask=None, scale=None,
                      kernel_options=None, **_) -> Tensor:
    """Flex attention on CPU with gradients: torch's own unfused computation (``math_attention``, what
    `flex_attention` runs on CPU without them) called directly, so autograd differentiates its plain tensor
    ops — `flex_attention` itself refuses a CPU backward. Same forward numerics; GQA by repeating key/value
    heads; a `ConfigError` where this torch has no such function."""
    try:
        from torch._higher_order_ops.flex_attention import math_attention
        from torch.nn.attention.flex_attention import create_block_mask, noop_mask
    except ImportError:
        raise ConfigError(CPU_BACKWARD) from None
    if block_mask is None:
        block_mask = create_block_mask(noop_mask, None, None, query.shape[-2], key.shape[-2], device=query.device)
    out, _, _ = math_attention(query, key, value, score_mod or (lambda score, b, h, q, kv: score),
                               block_mask.as_tuple(), scale if scale is not None else query.shape[-1] ** -0.5,
                               kernel_options or {})
    return out


_PATCHED = "_alignkit_unfused_on_cpu"


def use_unfused_on_cpu() -> bool:
    """Make transformers' flex attention run unfused on CPU tensors (see the module docstring), and build its own
    block masks there without compiling; CUDA calls go on to transformers' compiled path unchanged. Idempotent;
    returns whether the hooks are in place (False where this transformers lays flex attention out differently:
    CPU runs then compile, slowly, and the start-up check still compares them with the model's own forward)."""
    try:
        from transformers import masking_utils
        from transformers.integrations import flex_attention as hf_flex
    except ImportError:
        return False
    if getattr(hf_flex.compile_friendly_flex_attention, _PATCHED, False):
        return True
    if not (callable(getattr(hf_flex, "compile_friendly_flex_attention", None))
            and callable(getattr(masking_utils, "create_block_mask", None))):
        logger.info("transformers' flex attention module has no compile_friendly_flex_attention: flex attention "
                    "on CPU compiles")
        return False
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    compiled, make_mask = hf_flex.compile_friendly_flex_attention, masking_utils.create_block_mask
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

    def attention(query, key, value, training=False, **kwargs):
        if query.device.type == "cpu" and not torch.compiler.is_compiling():
            if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
                return unfused_with_grad(query, key, value, **kwargs)
            return flex_attention(query, key, value, **kwargs)
        return compiled(query, key, value, training=training, **kwargs)

    def create_mask(*args, device=None, _compile=False, **kwargs):
        on_cpu = device is not None and torch.device(device).type == "cpu"
        return make_mask(*args, device=device, _compile=_compile and not on_cpu, **kwargs)

    setattr(attention, _PATCHED, True)
    hf_flex.compile_friendly_flex_attention = attention
    masking_utils.create_block_mask = create_mask
    return True
