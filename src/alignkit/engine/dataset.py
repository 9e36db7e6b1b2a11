"""Tokenized training data with a deterministic, resumable, shard-aware order.

The order of micro-batches is a pure function of (seed, epoch): micro-batch ``m`` of the run is
micro-batch ``m % per_epoch`` of the permutation for epoch ``m // per_epoch``. Resuming at optimizer
step ``s`` therefore needs only ``s`` — no iterator state. With several processes, each takes its
slice of every global micro-batch (``batch_size`` records per process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch, collate
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig, TokenizedRecord, tokenize_records

logger = logging.getLogger("alignkit")


@dataclass
class TokenizedDataset:
    records: list[PreferenceRecord]
    items: list[TokenizedRecord]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def k_range(self) -> tuple[int, int]:
        ks = [r.k for r in self.records]
        return min(ks), max(ks)

    @classmethod
    def build(cls, records: list[PreferenceRecord], tokenizer, config: TokenizeConfig, name: str = "data"):
        kinds = {r.label_kind for r in records}
        if len(kinds) > 1:
            raise ValueError(f"{name}: records mix label kinds {sorted(kinds)}; one dataset needs one kind")
        items, report = tokenize_records(records, tokenizer, config)
        logger.info("%s: %s", name, report.summary())
        return cls(records, items)

    def collate(self, indices: list[int], pad_id: int, layout: str, max_row_tokens: int,
                attn_weight: float = 0.0) -> Batch:
        items = [self.items[i] for i in indices]  # item.index is the record's position (set by tokenize)
        return collate(items, [self.records[i] for i in indices], pad_id, layout, max_row_tokens, attn_weight)


def prompt_key(record: PreferenceRecord) -> str:
    text = json.dumps([record.system, record.prompt], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def split_by_prompt(records: list[PreferenceRecord], fraction: float, seed: int):
    """Hold out ``fraction`` of the distinct prompts; no prompt lands in both parts."""
    keys = sorted({prompt_key(r) for r in records})
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(fraction * len(keys))) if fraction > 0 else 0
    held = set(keys[:n_eval])
    train = [r for r in records if prompt_key(r) not in held]
    evals = [r for r in records if prompt_key(r) in held]
    return train, evals


class BatchOrder:
    """Which record indices form micro-batch ``m`` for process ``rank`` of ``world``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.global_batch = batch_size * world
        if n < self.global_batch:
            raise ValueError(
                f"the dataset has {n} records but one step needs {self.global_batch} "
                f"(batch_size={batch_size} x {world} processes); lower batch_size"
            )
        self.per_epoch = n // self.global_batch  # records past the last full batch sit this epoch out
        self._cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._cache[epoch]

    def epoch_of(self, micro: int) -> int:
        return micro // self.per_epoch

    def indices(self, micro: int) -> list[int]:
        perm = self._perm(micro // self.per_epoch)
        start = (micro % self.per_epoch) * self.global_batch + self.rank * self.batch_size
        return perm[start : start + self.batch_size]
