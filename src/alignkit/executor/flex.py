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

On CPU, flex attention runs unfused (`alignkit.models.attention.use_unfused_on_cpu`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from alignkit.data.collate import Batch
from alignkit.models.attention import FLEX

logger = logging.getLogger("alignkit")

BLOCK = 128  # flex attention's default tile; the vectors are padded to a multiple of it


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


