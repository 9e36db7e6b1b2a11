"""FlexAttention for the shared-prompt layout: the batch's block mask as a block-sparse `BlockMask`.

SDPA and eager attention take a shared-prompt row as a dense additive ``[R, 1, L, L]`` mask: every query-key
pair is computed, then masked out. FlexAttention (`torch.nn.attention.flex_attention`; transformers'
``attn_implementation="flex_attention"``) takes a `BlockMask` of 128 x 128 tiles instead: a tile where no pair
is allowed is skipped, a tile where every pair is allowed skips the mask function, and only tiles on a boundary
evaluate it. In a row of K responses after one prompt most tiles are empty (response i never sees response j).

Every query ``q`` of an alignkit row sees the union of at most two runs of keys (`allowed`):

* ``[start, prefix_end)`` — its record's prompt (empty for prompt tokens: their run is their own);
* ``[own_start, q]`` — its own segment up to itself (the prompt for a prompt token, its response for a
  response token, itself alone for padding);

and, in a layer with a sliding window ``w``, only keys whose position id is less than ``w`` before its own (the
rule of `Batch.additive_mask`). `runs_of` derives the three ``[R, L]`` vectors from the batch's own bool mask, and
`block_mask` checks that `allowed` gives that mask back exactly before it builds the `BlockMask` from them; a
mask of any other shape goes to flex attention as the dense additive mask, which it also takes (exact, not sparse).

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

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError

logger = logging.getLogger("alignkit")

FLEX = "flex_attention"  # transformers' name for the backend
BLOCK = 128  # flex attention's default tile; the vectors are padded to a multiple of it
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


def allowed(q: Tensor, kv: Tensor, start: Tensor, prefix_end: Tensor, own_start: Tensor) -> Tensor:
    """Whether query ``q`` sees key ``kv``: ``kv`` in ``[start, prefix_end) ∪ [own_start, q]`` (broadcasting)."""
    return (kv <= q) & (kv >= start) & ((kv < prefix_end) | (kv >= own_start))


def runs_of(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(start, prefix_end, own_start)``, each ``[R, L]``, of a bool mask ``[R, 1, L, L]`` in which every query
    sees itself: the first key it sees, the end of the first run of keys it sees, the start of the run that ends
    at itself. Exact for masks of the shape in the module docstring (`block_mask` checks)."""
    m = mask[:, 0]
    L = m.shape[-1]
    before = torch.nn.functional.pad(m[..., :-1], (1, 0))  # m shifted one key to the right
    idx = torch.arange(L, device=m.device)
    start = m.to(torch.uint8).argmax(-1)
    ends = before & ~m
    prefix_end = torch.where(ends.any(-1), ends.to(torch.uint8).argmax(-1), L)
    run_starts = m & ~before & (idx[None, None, :] <= idx[None, :, None])
    own_start = torch.where(run_starts, idx, -1).amax(-1)
    return start, prefix_end, own_start


def _pad_to_block(t: Tensor, fill: Tensor) -> Tensor:
    """``[R, L]`` -> ``[R, ceil(L / BLOCK) * BLOCK]``: a kernel may evaluate the mask function on a tile's
    out-of-range rows, which must index something (``fill``: the padded positions' own indices)."""
    L = t.shape[-1]
    extra = -L % BLOCK
    if not extra:
        return t
    return torch.cat([t, fill[L:].expand(t.shape[0], -1)], dim=-1)


def block_mask(batch: Batch, window: int | None = None):
    """The `BlockMask` of ``batch``'s shared-prompt rows (with a layer's sliding ``window``), or — for a mask
    `allowed` does not reproduce — None. Built once per batch and window (kept beside its additive masks)."""
    key = (FLEX, window)
    if key in batch.float_masks:
        return batch.float_masks[key]
    from torch.nn.attention.flex_attention import create_block_mask

    mask = batch.attention_mask
    R, L = mask.shape[0], mask.shape[-1]
    start, prefix_end, own_start = runs_of(mask)
    idx = torch.arange(L, device=mask.device)
    rebuilt = allowed(idx[:, None], idx[None, :], start[..., None], prefix_end[..., None], own_start[..., None])
    if not torch.equal(rebuilt[:, None], mask):
        logger.warning("the batch's attention mask is not prompt-plus-own-segment per query: flex attention gets "
                       "the dense mask for it (exact, not block-sparse)")
        batch.float_masks[key] = None
        return None
    fill = torch.arange(L + (-L % BLOCK), device=mask.device)
    start, prefix_end, own_start, pos = (_pad_to_block(t, fill) for t in (start, prefix_end, own_start,
                                                                            batch.position_ids))

    def mask_mod(b, h, q, kv):
        return allowed(q, kv, start[b, q], prefix_end[b, q], own_start[b, q])

    def windowed_mask_mod(b, h, q, kv):
        return mask_mod(b, h, q, kv) & (pos[b, q] - pos[b, kv] < window)

    batch.float_masks[key] = create_block_mask(windowed_mask_mod if window else mask_mod, R, None, L, L,
                                               device=mask.device, BLOCK_SIZE=BLOCK)
    return batch.float_masks[key]


def flex_masks(batch: Batch, windows: dict[str, int | None], dtype: torch.dtype) -> dict:
    """``{layer type: BlockMask}`` for shared-prompt rows (the dense additive mask where `block_mask` gives
    None)."""
    out = {}
    for layer_type, window in windows.items():
        sparse = block_mask(batch, window)
        out[layer_type] = sparse if sparse is not None else batch.additive_mask(dtype, window)
    return out


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
