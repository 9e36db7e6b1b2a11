"""Cached reference log-probs: one no-grad pass over the data, then no reference model at all.

The reference's summed log-prob of every response is computed once, stored on disk as safetensors
under a key that hashes what the numbers depend on — the reference weights, the exact token ids of
every prompt and response (which covers the data, the tokenizer, the chat template and the
truncation settings) and the autocast precision — and reused by every later run with the same key (e.g. a sweep over beta).
Training with the cache holds no reference model in memory.

Objectives that read per-token reference log-probs cannot use the sequence-level cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.engine.dataset import TokenizedDataset
from alignkit.engine.reference import Reference
from alignkit.engine.score import iter_batch_logps

logger = logging.getLogger("alignkit")


def weights_digest(model: nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (adapters excluded: disabled in the reference)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        t = p.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(data: TokenizedDataset) -> str:
    h = hashlib.sha256()
    for tr in data.items:
        h.update(repr((tr.prompt_ids, tr.segments, tr.score_start)).encode())
    return h.hexdigest()


class CachedReference(Reference):
    """Serves ``ref_logps [B, K]`` for a batch from a precomputed ``[N, K_max]`` table (by record index)."""

    strategy = "cache"

    def __init__(self, table: Tensor):
        self.table = table

    def sequence_logps(self, batch: Batch) -> Tensor:
        idx = torch.tensor(batch.indices, dtype=torch.long)
        B, K = batch.shape
        out = self.table.index_select(0, idx)[:, :K].to(batch.valid.device)
        return out.masked_fill(~batch.valid, 0.0)


def compute_table(reference: Reference, data: TokenizedDataset, pad_id: int, layout: str, max_row_tokens: int,
                  batch_size: int, device, progress: bool = True) -> Tensor:
    table = torch.zeros(len(data), data.k_range[1], dtype=torch.float32)
    batches = iter_batch_logps(reference.sequence_logps, data, pad_id, layout, batch_size, device, max_row_tokens,
                               desc="reference log-probs" if progress else None)
    for idx, _, seq in batches:
        table[idx, : seq.shape[1]] = seq
    return table


def cached_reference(reference: Reference, ref_weights: nn.Module, data: TokenizedDataset, cache_dir: Path,
                     name: str, pad_id: int, layout: str, max_row_tokens: int, batch_size: int, device,
                     progress: bool = True, write: bool = True, precision: str = "no") -> CachedReference:
    """Load the table for this (reference, data, autocast precision) from ``cache_dir``, or compute and store it."""
    parts = weights_digest(ref_weights) + data_digest(data) + f"autocast={precision}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{name}-{key}.safetensors"
    if path.exists():
        table = load_file(path)["ref_logps"]
        logger.info("%s: reference log-probs from cache %s", name, path)
        return CachedReference(table)
    table = compute_table(reference, data, pad_id, layout, max_row_tokens, batch_size, device, progress)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")  # concurrent runs never share a temp file
        save_file({"ref_logps": table}, tmp)
        tmp.replace(path)
        logger.info("%s: reference log-probs cached in %s", name, path)
    return CachedReference(table)

