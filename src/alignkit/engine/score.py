"""Log-probs of every response of every record, batch by batch, without gradients.

`iter_batch_logps` is the one loop behind the reference cache (`engine/refcache.py`), scoring
sampled completions (`score_logps`) and `alignkit logprobs` (`iter_logprobs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from alignkit.data.collate import Batch
from alignkit.data.dataset import TokenizedDataset
from alignkit.data.schema import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizeConfig, completion_end, tokenize_records, uses_template
from alignkit.executor.logprobs import (
    ExecutorMismatch,
    LogProbModel,
    attention_cost_weight,
    sum_per_slot,
    supports_packing,
    verify_against_forward,
)
from alignkit.generation import completion_record

logger = logging.getLogger("alignkit")


def iter_batch_logps(
    score: Callable[[Batch], Tensor],
    data: TokenizedDataset,
    pad_id: int,
    layout: str,
    batch_size: int,
    device,
    max_row_tokens: int = 256,
    attn_weight: float = 0.0,
    desc: str | None = None,
) -> Iterator[tuple[list[int], Batch, Tensor]]:
    """Yield ``(record indices, batch, summed log-probs [b, K] as float32 on CPU)`` over ``data`` in order.

    ``score`` maps a batch to its ``[b, K]`` summed log-probs; ``desc`` shows a progress bar.
    """
    from tqdm.auto import tqdm

    with tqdm(total=len(data), desc=desc, disable=desc is None, dynamic_ncols=True) as bar, torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = data.collate(idx, pad_id, layout, max_row_tokens, attn_weight).to(device)
            yield idx, batch, score(batch).float().cpu()
            bar.update(len(idx))


def longest_record(data: TokenizedDataset) -> int:
    """Index of the record with the longest prompt + response: where a sliding window, if any, binds first."""
    return max(range(len(data.items)), key=lambda i: max(len(data.items[i].full_ids(k)) for k in range(data.items[i].k)))


def checked_layout(verify: Callable[[Batch], float], data: TokenizedDataset, pad_id: int, layout: str,
                   max_row_tokens: int, attn_weight: float, device, model_name: str) -> str:
    """The batch layout to score ``data`` with, checked: every response of its longest record through the
    executor and through the model's own forward (``verify(batch)`` -> largest difference, or raises
    `ExecutorMismatch`). Shared-prompt rows that disagree (a family whose attention the block mask does not
    express) fall back to padded rows, said once; padded rows that disagree, or shared-prompt rows asked for
    explicitly (``layout="shared_prompt"``), raise."""
    candidates = ("padded",) if layout == "padded" else ("shared_prompt", "padded")
    results = layout_checks(verify, data, pad_id, candidates, max_row_tokens, attn_weight, device)
    for candidate, result in results.items():
        if not isinstance(result, ExecutorMismatch):
            continue
        if candidate == "padded" or layout == "shared_prompt":
            raise result
        logger.warning("shared-prompt packing does not reproduce %s's own forward (%s): using padded rows",
                       model_name, str(result).split(";")[0])
        layout = "padded"
    item = data.items[longest_record(data)]
    logger.info("executor matches the model's forward on the longest record (%d responses, up to %d tokens; "
                "|diff| %.2e)", item.k, max(len(item.full_ids(k)) for k in range(item.k)),
                max(r for r in results.values() if not isinstance(r, ExecutorMismatch)))
    return layout


def layout_checks(verify: Callable[[Batch], float], data: TokenizedDataset, pad_id: int, layouts: tuple[str, ...],
                  max_row_tokens: int, attn_weight: float, device) -> dict[str, float | ExecutorMismatch]:
    """``{layout: largest difference, or the ExecutorMismatch}`` of every response of the longest record of
    ``data`` in each of ``layouts`` (all of them run: under FSDP every process must make the same calls)."""
    index, out = longest_record(data), {}
    for candidate in layouts:
        batch = data.collate([index], pad_id, candidate, max_row_tokens, attn_weight).to(device)
        try:
            out[candidate] = verify(batch)
        except ExecutorMismatch as e:
            out[candidate] = e
    return out


def model_layout(model, data: TokenizedDataset, pad_id: int, layout: str, max_row_tokens: int = 256,
                 chunk_size: int = 0) -> str:
    """`checked_layout` for a plain (unprepared) causal LM in eval mode, at its own precision."""
    rtol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    scorer = LogProbModel(model, chunk_size)
    return checked_layout(lambda b: verify_against_forward(model, b, rtol, scorer), data, pad_id, layout,
                          max_row_tokens, attention_cost_weight(model), next(model.parameters()).device,
                          type(model).__name__)


def model_scorer(model, chunk_size: int = 0) -> tuple[Callable[[Batch], Tensor], str, float]:
    """A ``score`` function for `iter_batch_logps` from a causal LM, with its layout and attention weight."""
    scorer = LogProbModel(model, chunk_size)
    layout = "auto" if supports_packing(model) else "padded"
    return (lambda batch: sum_per_slot(scorer(batch), batch)), layout, attention_cost_weight(model)


def iter_logprobs(
    model,
    tokenizer,
    records: list[PreferenceRecord],
    batch_size: int = 8,
    tokenize: TokenizeConfig | None = None,
    chunk_size: int = 0,
    max_row_tokens: int = 256,
    progress: bool = True,
    verify: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "response_index", "logp", "n_tokens"}`` for each response, in record order.

    ``id`` is the record's ``id`` or, when it has none, its 0-based position in ``records``.
    """
    data = TokenizedDataset.build(records, tokenizer, tokenize or TokenizeConfig(), "data")
    score, layout, attn_weight = model_scorer(model, chunk_size)
    device = next(model.parameters()).device
    model.eval()
    if verify:
        layout = model_layout(model, data, tokenizer.pad_token_id, layout, max_row_tokens, chunk_size)
    batches = iter_batch_logps(score, data, tokenizer.pad_token_id, layout, batch_size, device, max_row_tokens,
                               attn_weight, desc="logprobs" if progress else None)
    for idx, batch, logps in batches:
        for row, i in enumerate(idx):
            rec = records[i]
            for k in range(rec.k):
                yield {
                    "id": rec.id if rec.id is not None else i,
                    "response_index": k,
                    "logp": float(logps[row, k]),
                    "n_tokens": int(batch.lengths[row, k]),
                }


def score_logps(
    model,
    tokenizer,
    prompts: list[Text],
    completions: list[list[str]],
    finished: list[list[bool]] | None = None,
    batch_size: int = 32,
    chat_template: str = "auto",
    chunk_size: int = 0,
    chat_template_kwargs: dict | None = None,
) -> Tensor:
    """Summed log-probs ``s(y) = Σ_t log π(y_t | x, y_<t)`` of completions, ``[B, K]`` float32 on CPU.

    ``completions[b]`` are the K_b completions of ``prompts[b]`` (ragged K is allowed: missing slots
    are NaN). Each completion is scored with its end token appended (the template's end of turn for a chat
    prompt, else EOS), as the trainer scores responses; where ``finished[b][k]`` is False (a sample cut at
    ``max_new_tokens``) that token is not scored.
    No gradients; the model is put in eval mode while scoring.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} rows of completions")
    records = [completion_record(p, c) for p, c in zip(prompts, completions)]
    config = TokenizeConfig(max_length=None, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs)
    items, _ = tokenize_records(records, tokenizer, config)
    for b, item in enumerate(items):
        end = completion_end(tokenizer, uses_template(records[b], config), config)
        for j in range(item.k):
            if finished is not None and not finished[b][j] and item.segments[j][-1:] == [end]:
                if len(item.segments[j]) - item.score_start[j] <= 1:
                    raise ValueError(f"completion {j} of prompt {b} is empty and unfinished: nothing to score")
                item.segments[j] = item.segments[j][:-1]
    score, layout, attn_weight = model_scorer(model, chunk_size)
    device = next(model.parameters()).device
    k_max = max(len(c) for c in completions)
    out = torch.full((len(prompts), k_max), float("nan"))
    was_training = model.training
    model.eval()
    try:
        data = TokenizedDataset(records, items)
        for idx, batch, logps in iter_batch_logps(score, data, tokenizer.pad_token_id, layout, batch_size, device,
                                                  attn_weight=attn_weight):
            out[idx, : logps.shape[1]] = torch.where(batch.valid.cpu(), logps, float("nan"))
    finally:
        model.train(was_training)
    return out
