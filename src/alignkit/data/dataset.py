"""Tokenized training data with a deterministic, resumable, shard-aware order.

The order of micro-batches is a pure function of (seed, epoch): micro-batch ``m`` of the run is
micro-batch ``m % per_epoch`` of the permutation for epoch ``m // per_epoch``. Resuming at optimizer
step ``s`` therefore needs only ``s`` — no iterator state. With several processes, each takes its
slice of every global micro-batch (``batch_size`` records per process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch, collate
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig, TokenizedRecord, tokenize_records
from alignkit.errors import ConfigError, DataError

logger = logging.getLogger("alignkit")


@dataclass
class TokenizedDataset:
    records: list[PreferenceRecord]
    items: list[TokenizedRecord]
    skipped: Counter = dataclasses.field(default_factory=Counter)  # records left out (on_bad_row=skip), by reason

    def __len__(self) -> int:
        return len(self.records)

    @property
    def k_range(self) -> tuple[int, int]:
        ks = [r.k for r in self.records]
        return min(ks), max(ks)

    @property
    def slots(self) -> int:
        """Response slots per record including auxiliary ones (>= ``k_range[1]``)."""
        return max(tr.k for tr in self.items)

    @classmethod
    def build(cls, records: list[PreferenceRecord], tokenizer, config: TokenizeConfig, name: str = "data",
              extras: tuple[str, ...] = (), seed: int = 0, on_bad_row: str = "error"):
        """Tokenize ``records``. A record with text the tokenizer cannot encode (it would become the unknown
        token) is an error naming its file, line and field, or with ``on_bad_row="skip"`` is left out, counted
        in ``skipped`` and logged. ``extras`` (an objective's needs, see `objectives.registry.EXTRAS`):

        * ``kl_logratios`` — each record gains one auxiliary completion: the first response of another
          record with a different prompt (a fixed seeded derangement), scored under this record's prompt in
          the same packed segment, so the prompt is encoded once and the reference cache covers it too;
        * ``shared_tokens`` — for each response, how many leading completion tokens it shares with another
          response of the same record (preference trees).
        """
        records, skipped = _encodable(records, tokenizer, name, on_bad_row)
        kinds = {r.label_kind for r in records}
        if len(kinds) > 1:
            raise DataError(f"{name}: records mix label kinds {sorted(kinds)}; one dataset needs one kind")
        if "step_mask" in extras:  # process supervision: a record's responses are the steps of one solution
            return dataclasses.replace(cls._build_steps(records, tokenizer, config, name), skipped=skipped)
        to_tokenize = records
        if "kl_logratios" in extras:
            partners = mismatched_partners(records, seed)
            to_tokenize = [_with_extra_response(r, records[j].responses[0]) for r, j in zip(records, partners)]
        items, report = tokenize_records(to_tokenize, tokenizer, config)
        logger.info("%s: %s", name, report.summary())
        if "kl_logratios" in extras:
            for tr in items:
                tr.aux = 1
        if "shared_tokens" in extras:
            for tr in items:
                tr.shared = shared_completion_tokens(tr)
        return cls(records, items, skipped)

    @classmethod
    def _build_steps(cls, records, tokenizer, config, name):
        return _steps_build(cls, records, tokenizer, config, name)

    def collate(self, indices: list[int], pad_id: int, layout: str, max_row_tokens: int,
                attn_weight: float = 0.0) -> Batch:
        items = [self.items[i] for i in indices]  # item.index is the record's position (set by tokenize)
        return collate(items, [self.records[i] for i in indices], pad_id, layout, max_row_tokens, attn_weight)


def _texts(record: PreferenceRecord):
    """(field, text) of every text of a record: prompt, responses[k] (``(chosen)``/``(rejected)`` for a ranked
    pair, as the paired layout names them), system; message contents for chats."""
    order = record.ranks if record.k == 2 and record.ranks is not None and record.ranks[0] != record.ranks[1] else None
    role = {} if order is None else {int(order[0] > order[1]): " (chosen)", int(order[0] < order[1]): " (rejected)"}
    names = [f"'responses[{k}]'{role.get(k, '')}" for k in range(record.k)]
    for name, value in (("'prompt'", record.prompt), *zip(names, record.responses)):
        yield from ((name, m["content"]) for m in value) if isinstance(value, list) else ((name, value),)
    if record.system is not None:
        yield "'system'", record.system


def unencodable(records: list[PreferenceRecord], tokenizer) -> dict[int, tuple[str, str]]:
    """``{record index: ("'field'", detail)}`` for texts that this tokenizer turns (partly) into its unknown token:
    a vocabulary without byte fallback meeting characters it has never seen. One batched encoding; none at
    all for tokenizers without an unknown token (byte-level BPE)."""
    unk, unk_text = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk is None or not records:
        return {}
    where = [(i, f, t) for i, r in enumerate(records) for f, t in _texts(r) if not (unk_text and unk_text in t)]
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer([t for _, _, t in where], add_special_tokens=False, return_offsets_mapping=fast)
    bad: dict[int, tuple[str, str]] = {}
    for n, (i, f, text) in enumerate(where):
        ids = enc["input_ids"][n]
        if i in bad or unk not in ids:
            continue
        spans = [text[a:b] for tok, (a, b) in zip(ids, enc["offset_mapping"][n]) if tok == unk] if fast else []
        shown = ", ".join(repr(x) for x in dict.fromkeys(spans[:3])) or "part of it"
        bad[i] = (f, f"the tokenizer cannot encode {shown}: it would become the unknown token {unk_text!r}")
    return bad


def _encodable(records: list[PreferenceRecord], tokenizer, name: str, on_bad_row: str):
    """``records`` without the ones `unencodable` finds: an error at the first, or (skip) counted and logged."""
    bad = unencodable(records, tokenizer)
    if not bad:
        return records, Counter()
    where = {i: records[i].origin or f"{name} record {i}" + (f" (id={records[i].id})" if records[i].id else "")
             for i in bad}
    if on_bad_row != "skip":
        i = min(bad)
        raise DataError(f"{where[i]}, field {bad[i][0]}: {bad[i][1]}; fix the text, use a tokenizer that "
                        "covers it, or set on_bad_row=skip")
    kept = [r for i, r in enumerate(records) if i not in bad]
    shown = "; ".join(where[i] for i in sorted(bad)[:5]) + ("; ..." if len(bad) > 5 else "")
    logger.warning("%s: skipped %d record%s with text the tokenizer cannot encode (unencodable): %s", name,
                   len(bad), "s" if len(bad) != 1 else "", shown)
    if not kept:
        raise DataError(f"{name}: no records left: the tokenizer cannot encode any of the {len(records)}")
    return kept, Counter(unencodable=len(bad))


STEP_SEPARATOR = "\n"


def _steps_build(cls, records, tokenizer, config, name):
    """Records whose ``responses`` are the S consecutive steps of one solution and whose ``labels`` judge
    each step (TRL's stepwise layout): each becomes one response, the steps joined by ``STEP_SEPARATOR``,
    labelled with its outcome (every step good), and remembers where each step's last token is."""
    joined, prefixes = [], []
    for i, r in enumerate(records):
        if r.label_kind != "labels":
            raise DataError(f"{name}: record {i} (id={r.id}): process supervision needs per-step `labels`, "
                             f"got {r.label_kind}")
        texts = [STEP_SEPARATOR.join(r.responses[: s + 1]) for s in range(r.k)]
        prefixes.append(dataclasses.replace(r, responses=texts, labels=list(r.labels)))
        joined.append(dataclasses.replace(r, responses=[texts[-1]], labels=[all(r.labels)],
                                          meta={**r.meta, "step_labels": list(r.labels)}))
    untruncated = dataclasses.replace(config, max_length=None)
    items, report = tokenize_records(prefixes, tokenizer, untruncated)
    out, _ = tokenize_records(joined, tokenizer, config)
    dropped = 0
    for tr, pre, rec in zip(out, items, prefixes):
        full = pre.full_ids(pre.k - 1)
        start = len(pre.prompt_ids) + pre.score_start[-1]
        n = len(tr.segments[0]) - tr.score_start[0]  # completion tokens kept after truncation
        ends = []
        for s in range(pre.k):  # each prefix ends with the token that ends a completion (EOS, or a chat
            ids = pre.full_ids(s)  # template's end of turn), as the whole solution does: a step ends before it
            ids = ids[:-1] if ids[-1:] == full[-1:] else ids
            ends.append(_lcp(ids, full) - 1 - start)
        tr.steps = [e for e in ends if 0 <= e < n]
        tr.step_labels = [float(x) for x, e in zip(rec.labels, ends) if 0 <= e < n]
        dropped += len(ends) - len(tr.steps)
    logger.info("%s: %d records of %d steps in all; %d steps cut by max_length are not scored", name, len(out),
                sum(r.k for r in records), dropped)
    return cls(joined, out)


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def mismatched_partners(records: list[PreferenceRecord], seed: int) -> list[int]:
    """For each record, another record whose prompt differs (seeded; a derangement where possible)."""
    keys = [prompt_key(r) for r in records]
    if len(set(keys)) < 2:
        raise DataError("the KL baseline pairs each prompt with another prompt's response, but the data has "
                         f"{len(set(keys))} distinct prompt(s); it needs at least 2")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    partners = [0] * len(records)
    for pos, i in enumerate(order):  # the next record in a shuffled cycle whose prompt differs
        step = 1
        while keys[order[(pos + step) % len(order)]] == keys[i]:
            step += 1
        partners[i] = order[(pos + step) % len(order)]
    return partners


def _with_extra_response(record: PreferenceRecord, response) -> PreferenceRecord:
    labels = {record.label_kind: getattr(record, record.label_kind) + [getattr(record, record.label_kind)[0]]}
    return dataclasses.replace(record, responses=record.responses + [response], **labels)


def shared_completion_tokens(tr: TokenizedRecord) -> list[int]:
    """Leading completion tokens of each response that another response of the record also starts with."""
    n = tr.k - tr.aux
    out = []
    for k in range(n):
        full = tr.segments[k]
        common = 0
        for j in range(n):
            if j != k:
                other = tr.segments[j]
                m = 0
                while m < min(len(full), len(other)) and full[m] == other[m]:
                    m += 1
                common = max(common, m)
        out.append(max(0, min(common - tr.score_start[k], len(full) - tr.score_start[k])))
    return out


def data_shape(records: list[PreferenceRecord]) -> tuple[str, int, int, int | None]:
    """(label kind, min K, max K, score-vector length or None): what `Objective.check_data` needs."""
    ks = [r.k for r in records]
    first = records[0]
    dim = len(first.scores[0]) if first.label_kind == "scores" and isinstance(first.scores[0], list) else None
    return first.label_kind, min(ks), max(ks), dim


def prompt_key(record: PreferenceRecord) -> str:
    """A stable key of a record's prompt (and system prompt): what splits hold out."""
    return prompt_text_key(record.prompt, record.system)


def prompt_text_key(prompt, system: str | None = None) -> str:
    """`prompt_key` of a bare prompt (a prompt row of online training)."""
    return hashlib.sha1(json.dumps([system, prompt], sort_keys=True).encode()).hexdigest()


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

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.shuffle = shuffle  # False: the data's own order every epoch (e.g. a curriculum)
        self.global_batch = batch_size * world
        if n < self.global_batch:
            raise ConfigError(
                f"the dataset has {n} records but one step needs {self.global_batch} "
                f"(batch_size={batch_size} x {world} processes); lower batch_size"
            )
        self.per_epoch = n // self.global_batch  # records past the last full batch sit this epoch out
        self._cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
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
