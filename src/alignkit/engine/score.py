"""Log-probs of every response of every record (`alignkit logprobs`): reference caches, ranking checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig
from alignkit.engine.dataset import TokenizedDataset
from alignkit.engine.logprobs import LogProbModel, attention_cost_weight, build_stats, supports_packing


def iter_logprobs(
    model,
    tokenizer,
    records: list[PreferenceRecord],
    batch_size: int = 8,
    tokenize: TokenizeConfig | None = None,
    chunk_size: int = 0,
    max_row_tokens: int = 256,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "response_index", "logp", "n_tokens"}`` for each response, in record order.

    ``id`` is the record's ``id`` or, when it has none, its 0-based position in ``records``.
    """
    from tqdm.auto import tqdm

    data = TokenizedDataset.build(records, tokenizer, tokenize or TokenizeConfig(), "data")
    layout = "auto" if supports_packing(model) else "padded"
    attn_weight = attention_cost_weight(model)
    scorer = LogProbModel(model, chunk_size)
    device = next(model.parameters()).device
    model.eval()
    with tqdm(total=len(records), desc="logprobs", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            idx = list(range(start, min(start + batch_size, len(records))))
            batch = data.collate(idx, tokenizer.pad_token_id, layout, max_row_tokens, attn_weight).to(device)
            with torch.no_grad():
                stats = build_stats(batch, scorer(batch))
            for row, i in enumerate(idx):
                rec = records[i]
                for k in range(rec.k):
                    yield {
                        "id": rec.id if rec.id is not None else i,
                        "response_index": k,
                        "logp": float(stats.logps[row, k]),
                        "n_tokens": int(stats.lengths[row, k]),
                    }
            bar.update(len(idx))
