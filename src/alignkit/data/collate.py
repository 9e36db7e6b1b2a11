"""Batches of tokenized records -> model inputs, with shared-prompt packing.

``shared_prompt`` layout (default): one record becomes one segment
``[prompt | response_1 | ... | response_K]``; a block attention mask lets every response attend to
the prompt and causally to itself only, and position ids restart after the prompt for each
response, so each response sees exactly the context it would see alone. Segments of several
records are packed into rows of at most ``max_row_tokens`` tokens (padding-free apart from the
tail of each row). The prompt is encoded once for all K responses.

``padded`` layout (fallback for attention backends that cannot take a 4D mask, e.g. flash-attention):
one row per (record, response), right-padded, with an ordinary 2D mask.

Either way the batch names, for every scored completion token, the flat index of the hidden state
that predicts it (``pred_index``), its id (``targets``) and its response slot (``slot``, = b * K + k),
so the executor never needs logits at other positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.errors import DataError
from alignkit.objectives.personal import user_ids


@dataclass
class Batch:
    input_ids: Tensor  # [R, L]
    position_ids: Tensor  # [R, L]
    attention_mask: Tensor  # [R, 1, L, L] bool (shared_prompt) or [R, L] long (padded)
    pred_index: Tensor  # [N] flat index r * L + t of the hidden state predicting each scored token
    targets: Tensor  # [N]
    slot: Tensor  # [N] response slot b * K + k
    token_pos: Tensor  # [N] position of the token within its completion (0-based)
    lengths: Tensor  # [B, K] completion tokens per response (0 for padded slots)
    valid: Tensor  # [B, K]
    labels: dict[str, Tensor] = field(default_factory=dict)  # ranks / scores / labels [B, K(, m)]
    weights: Tensor | None = None  # [B]
    indices: list[int] = field(default_factory=list)  # record indices in the dataset
    layout: str = "shared_prompt"
    num_tokens: int = 0  # real (non-padding) input tokens, for throughput
    float_masks: dict = field(default_factory=dict, repr=False)  # additive 4D masks by dtype, built once
    aux_slot: Tensor | None = None  # [B] slot of each record's auxiliary (KL) completion, -1 if none
    last_index: Tensor | None = None  # [B, K] flat index r * L + t of each response's last token (reward models)
    prompt_index: Tensor | None = None  # [B] flat index of each record's last prompt token (prompt gates)
    extra: dict[str, Tensor] = field(default_factory=dict)  # per-slot extras, e.g. shared_tokens [B, K]

    def additive_mask(self, dtype: torch.dtype, window: int | None = None) -> Tensor:
        """The 4D bool mask as 0 / dtype-min floats; shared by the policy and reference passes of a batch.

        ``window``: a sliding window as transformers applies it (a query sees keys less than ``window``
        positions back). Position ids restart per response after its prompt, so the distance of any pair
        the block mask allows is its distance in the response's own sequence."""
        if (dtype, window) not in self.float_masks:
            m = self.attention_mask
            if window is not None:
                pos = self.position_ids
                m = m & ((pos[:, :, None] - pos[:, None, :]) < window)[:, None]
            self.float_masks[dtype, window] = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(
                ~m, torch.finfo(dtype).min)
        return self.float_masks[dtype, window]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.valid.shape)

    def to(self, device) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        moved["labels"] = {k: v.to(device) for k, v in self.labels.items()}
        moved["extra"] = {k: v.to(device) for k, v in self.extra.items()}
        moved["float_masks"] = {}
        return Batch(**moved)


def label_tensors(records: list[PreferenceRecord], k: int) -> tuple[dict[str, Tensor], Tensor]:
    """Labels of B records padded to K responses, and record weights."""
    kind = records[0].label_kind
    if any(r.label_kind != kind for r in records):
        raise ValueError("a batch mixes label kinds; every record of a dataset needs the same kind")
    weights = torch.tensor([r.weight for r in records], dtype=torch.float32)
    if kind == "ranks":
        t = torch.full((len(records), k), float("inf"))
        for b, r in enumerate(records):
            t[b, : r.k] = torch.tensor(r.ranks)
    elif kind == "labels":
        t = torch.zeros(len(records), k)
        for b, r in enumerate(records):
            t[b, : r.k] = torch.tensor([float(x) for x in r.labels])
    else:
        first = records[0].scores[0]
        dims = (len(first),) if isinstance(first, list) else ()
        t = torch.full((len(records), k, *dims), float("-inf"))
        for b, r in enumerate(records):
            t[b, : r.k] = torch.tensor(r.scores, dtype=torch.float32)
    return {kind: t}, weights


def _scored_tokens(tr: TokenizedRecord, k: int) -> range:
    return range(tr.score_start[k], len(tr.segments[k]))


def pack_rows(items: list[TokenizedRecord], max_row_tokens: int) -> tuple[list[list[int]], list[int]]:
    """First-fit, in order: record positions per row and each row's token count."""
    rows: list[list[int]] = []
    sizes: list[int] = []
    for i, tr in enumerate(items):
        n = tr.num_tokens
        for r, size in enumerate(sizes):
            if size + n <= max_row_tokens:
                rows[r].append(i)
                sizes[r] += n
                break
        else:
            rows.append([i])
            sizes.append(n)
    return rows, sizes


def layout_cost(items: list[TokenizedRecord], layout: str, max_row_tokens: int, attn_weight: float) -> float:
    """Estimated forward cost in units of one token's linear layers: rows x length, plus the dense
    attention every row pays (``attn_weight`` per query-key pair, see `attention_cost_weight`)."""
    if layout == "shared_prompt":
        _, sizes = pack_rows(items, max_row_tokens)
        R, L = len(sizes), max(sizes)
    else:
        R, L = sum(tr.k for tr in items), max(len(tr.full_ids(k)) for tr in items for k in range(tr.k))
    return R * L + attn_weight * R * L * L


def choose_layout(items: list[TokenizedRecord], max_row_tokens: int, attn_weight: float) -> str:
    """Shared-prompt rows save the repeated prompt but attend densely over all K responses; with long
    completions padded rows can be cheaper. Pick the cheaper of the two for this batch."""
    packed = layout_cost(items, "shared_prompt", max_row_tokens, attn_weight)
    padded = layout_cost(items, "padded", max_row_tokens, attn_weight)
    return "shared_prompt" if packed <= padded else "padded"


def collate_shared_prompt(
    items: list[TokenizedRecord], pad_id: int, max_row_tokens: int = 256
) -> Batch:
    """Pack records into rows; each record is one segment with a block mask."""
    K = max(tr.k for tr in items)
    rows, sizes = pack_rows(items, max_row_tokens)
    R, L = len(rows), max(sizes)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.full((R, L), -1, dtype=torch.long)
    mask = torch.zeros((R, L, L), dtype=torch.bool)
    pred, targets, slots, tpos = [], [], [], []
    lengths = torch.zeros(len(items), K, dtype=torch.long)
    last = torch.zeros(len(items), K, dtype=torch.long)
    prompt_at = torch.zeros(len(items), dtype=torch.long)
    for r, members in enumerate(rows):
        off = 0
        for b in members:
            tr = items[b]
            P = len(tr.prompt_ids)
            input_ids[r, off : off + P] = torch.tensor(tr.prompt_ids, dtype=torch.long)
            position_ids[r, off : off + P] = torch.arange(P)
            mask[r, off : off + P, off : off + P] = torch.ones(P, P, dtype=torch.bool).tril()
            prompt_at[b] = r * L + off + P - 1
            start = off + P
            for k, seg in enumerate(tr.segments):
                S = len(seg)
                input_ids[r, start : start + S] = torch.tensor(seg, dtype=torch.long)
                position_ids[r, start : start + S] = torch.arange(P, P + S)
                mask[r, start : start + S, off : off + P] = True
                mask[r, start : start + S, start : start + S] = torch.ones(S, S, dtype=torch.bool).tril()
                for j in _scored_tokens(tr, k):
                    prev = start + j - 1 if j > 0 else off + P - 1
                    pred.append(r * L + prev)
                    targets.append(seg[j])
                    slots.append(b * K + k)
                    tpos.append(j - tr.score_start[k])
                lengths[b, k] = S - tr.score_start[k]
                last[b, k] = r * L + start + S - 1
                start += S
            off = start
        for t in range(off, L):  # padding attends to itself only (no empty softmax rows)
            mask[r, t, t] = True
    batch = _batch(input_ids, position_ids.clamp(min=0), mask[:, None], (pred, targets, slots, tpos), lengths,
                   "shared_prompt", sum(sizes))
    batch.last_index, batch.prompt_index = last, prompt_at
    return batch


def collate_padded(items: list[TokenizedRecord], pad_id: int) -> Batch:
    """One right-padded row per (record, response); works with any attention backend."""
    K = max(tr.k for tr in items)
    seqs, owners = [], []
    for b, tr in enumerate(items):
        for k in range(tr.k):
            seqs.append(tr.full_ids(k))
            owners.append((b, k))
    R, L = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    attn = torch.zeros((R, L), dtype=torch.long)
    pred, targets, slots, tpos = [], [], [], []
    lengths = torch.zeros(len(items), K, dtype=torch.long)
    last = torch.zeros(len(items), K, dtype=torch.long)
    prompt_at = torch.zeros(len(items), dtype=torch.long)
    for r, (seq, (b, k)) in enumerate(zip(seqs, owners)):
        tr = items[b]
        input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[r, : len(seq)] = 1
        P = len(tr.prompt_ids)
        for j in _scored_tokens(tr, k):
            pred.append(r * L + P + j - 1)
            targets.append(seq[P + j])
            slots.append(b * K + k)
            tpos.append(j - tr.score_start[k])
        lengths[b, k] = len(tr.segments[k]) - tr.score_start[k]
        last[b, k] = r * L + len(seq) - 1
        if k == 0:
            prompt_at[b] = r * L + P - 1
    batch = _batch(input_ids, (attn.cumsum(-1) - 1).clamp(min=0), attn, (pred, targets, slots, tpos), lengths,
                   "padded", int(attn.sum()))
    batch.last_index, batch.prompt_index = last, prompt_at
    return batch


def _batch(input_ids, position_ids, mask, scored: tuple[list[int], ...], lengths, layout, num_tokens) -> Batch:
    pred, targets, slots, tpos = (torch.tensor(x, dtype=torch.long) for x in scored)
    return Batch(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, pred_index=pred,
                 targets=targets, slot=slots, token_pos=tpos, lengths=lengths, valid=lengths > 0,
                 layout=layout, num_tokens=num_tokens)


def _check_context(items: list[TokenizedRecord]) -> None:
    """Every scored token needs at least one token before it to be predicted from."""
    for tr in items:
        if not tr.prompt_ids and 0 in tr.score_start:
            raise DataError(
                f"record {tr.index}: the prompt tokenizes into the first completion token (or is empty), so "
                "that token has no context; give the prompt a separator (e.g. end it with a newline) or use "
                "a tokenizer that adds a BOS token"
            )


def collate(
    items: list[TokenizedRecord],
    records: list[PreferenceRecord],
    pad_id: int,
    layout: str = "shared_prompt",
    max_row_tokens: int = 256,
    attn_weight: float = 0.0,
) -> Batch:
    """``layout``: shared_prompt, padded, or auto (the cheaper per batch, by `choose_layout`)."""
    _check_context(items)
    if layout == "auto":
        layout = choose_layout(items, max_row_tokens, attn_weight)
    if layout == "shared_prompt":
        batch = collate_shared_prompt(items, pad_id, max_row_tokens)
    elif layout == "padded":
        batch = collate_padded(items, pad_id)
    else:
        raise ValueError(f"unknown packing layout {layout!r}; use 'auto', 'shared_prompt' or 'padded'")
    batch.labels, batch.weights = label_tensors(records, batch.valid.shape[1])
    batch.indices = [tr.index for tr in items]
    batch.extra["record_index"] = torch.tensor(batch.indices, dtype=torch.long)  # keys per-record objective state
    K = batch.valid.shape[1]
    if any(tr.aux for tr in items):
        batch.aux_slot = torch.tensor([tr.k - 1 if tr.aux else -1 for tr in items], dtype=torch.long)
    for name in ("margin", "p"):  # per-record numbers from meta: a margin / soft label, NaN where absent
        values = [r.meta.get(name) for r in records]
        if any(isinstance(m, (int, float)) for m in values):
            batch.extra[name] = torch.tensor([float(m) if isinstance(m, (int, float)) else float("nan")
                                              for m in values])
    if any(r.meta.get("user") is not None for r in records):  # who labelled each record, as a stable id
        batch.extra["user"] = user_ids([r.meta.get("user") for r in records])
    if items[0].steps is not None:  # process reward models: positions and labels of each step's last token
        S = max(1, max(len(tr.steps) for tr in items))
        pos, lab, mask = (torch.zeros(len(items), K, S, dtype=d) for d in (torch.long, torch.float32, torch.bool))
        for b, tr in enumerate(items):
            n = len(tr.steps)
            pos[b, 0, :n], lab[b, 0, :n], mask[b, 0, :n] = torch.tensor(tr.steps), torch.tensor(tr.step_labels), True
        batch.extra.update(step_pos=pos, step_labels=lab, step_mask=mask)
    if items[0].shared is not None:
        batch.extra["shared_tokens"] = torch.tensor([tr.shared + [0] * (K - len(tr.shared)) for tr in items],
                                                    dtype=torch.float32)
    return batch
