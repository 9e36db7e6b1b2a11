"""Checks that a tokenizer and a model belong together, run once the model is loaded and before any training.

A tokenizer with more tokens than the model's embedding has rows (another family's tokenizer, or one with
added tokens and no ``resize_token_embeddings``) otherwise fails deep inside the embedding lookup, as an
``IndexError`` on CPU or a device-side assert on a GPU, at the first batch that holds such a token.
"""

from __future__ import annotations

from alignkit.errors import ModelError


def embedding_rows(model_config) -> int | None:
    """The rows of the model's token embedding as its config states them (``vocab_size``; a multimodal config's
    text part), None if the config does not say."""
    rows = getattr(model_config, "vocab_size", None)
    if rows is None and hasattr(model_config, "get_text_config"):
        rows = getattr(model_config.get_text_config(), "vocab_size", None)
    return rows


def check_tokenizer_fits(tokenizer, model_config, source: str, data=None) -> None:
    """Raise a one-line `ModelError` when ``tokenizer`` (``len(tokenizer)`` ids) does not fit the embedding of
    the model ``model_config`` describes, or when a token id of ``data`` (a `TokenizedDataset`, or a list of
    `TokenizedRecord`) is outside it. ``source`` names the model for the message."""
    rows = embedding_rows(model_config)
    if rows is None:
        return
    fix = ("use the tokenizer saved with this model, or resize the model's embeddings to the tokenizer "
           "(model.resize_token_embeddings(len(tokenizer)), then save both to one folder)")
    if len(tokenizer) > rows:
        raise ModelError(f"model {source}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{rows} rows; {fix}")
    items = data if isinstance(data, list) else getattr(data, "items", None)
    top = -1
    for tr in items if isinstance(items, list) else []:  # online prompt rows hold no token ids yet
        top = max(top, max(tr.prompt_ids, default=-1), *(max(s, default=-1) for s in tr.segments))
    if top >= rows:
        raise ModelError(f"model {source}: the data holds token id {top} but the model's embedding has {rows} rows "
                         f"(ids 0-{rows - 1}); {fix}")


def position_limit(model_config) -> tuple[str, int] | None:
    """``(config key, positions)`` the model can attend over (a multimodal config's text part), None if the config
    does not say."""
    text = getattr(model_config, "text_config", None) or model_config
    for key in ("max_position_embeddings", "n_positions"):
        limit = getattr(text, key, None)
        if isinstance(limit, int):
            return key, limit
    return None
