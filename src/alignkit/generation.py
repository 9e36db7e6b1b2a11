"""Sampling completions from a causal LM and scoring them under any model.

* `generate` — batched ``model.generate`` with left padding: K samples per prompt, stopping at EOS,
  reproducible for a given seed. It returns token ids, texts and whether each sample ended with EOS.
* `sample` — the same, texts only: ``list[list[str]]`` of B prompts x K completions.
* `generate_conditioned` — `generate` at a chosen trade-off for a model trained with ``condition_weights``.
* `score_logps` — ``[B, K]`` summed log-probs of given completions under a model, computed by the
  alignkit executor (`alignkit.data.tokenize` exact boundaries, shared-prompt packing,
  `alignkit.engine.logprobs`), i.e. exactly the ``s(y)`` the trainer uses. Scoring sampled completions
  under the policy and the reference gives the log-ratios that KL estimates (`alignkit.eval.kl`) need.

Prompts are plain strings, or chats (lists of ``{"role", "content"}`` messages) rendered with the
tokenizer's chat template — the same rendering `alignkit.data.tokenize` uses, so a sampled completion
is scored in exactly the context it was sampled in. The completion's EOS is not part of its text;
`score_logps` scores it (as the trainer does) unless told the sample was cut at ``max_new_tokens``.

Texts are re-tokenized for scoring. For a model that emits the tokenizer's own segmentation (any model
trained on tokenized text, almost always) this is the sampled token sequence; a sample written with an
unusual segmentation of the same text is scored by the canonical one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.data.schema import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizeConfig, encode, render, tokenize_records
from alignkit.engine.dataset import TokenizedDataset
from alignkit.engine.score import iter_batch_logps, model_scorer


@dataclass
class Generation:
    """B prompts x K samples. ``token_ids[b][k]`` excludes padding and EOS; ``finished[b][k]`` says
    whether the sample stopped at EOS (False: cut at ``max_new_tokens``)."""

    prompts: list[Text]
    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    finished: list[list[bool]]
    stop_ids: list[list[int | None]] | None = None  # the stop token each sample ended with (None: cut)

    @property
    def num_unfinished(self) -> int:
        return sum(not f for row in self.finished for f in row)


def _record(prompt: Text, completions: list[str]) -> PreferenceRecord:
    # Built with placeholder responses, then given the real ones: a sampled completion may be empty
    # (EOS first), which a data record rejects but scoring must handle.
    record = PreferenceRecord(prompt=prompt, responses=["x"] * len(completions), ranks=[0.0] * len(completions))
    record.responses = list(completions)
    return record


def prompt_ids(tokenizer, prompt: Text, chat_template: str = "auto") -> list[int]:
    """Token ids of a prompt as the trainer and `score_logps` see it (chat template for message lists)."""
    text, _, used_template = render(_record(prompt, ["x"]), tokenizer, TokenizeConfig(chat_template=chat_template))
    return encode(tokenizer, text, used_template)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[Text],
    k: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    chat_template: str = "auto",
) -> Generation:
    """Sample ``k`` completions for each prompt (``temperature=0``: greedy, and ``k`` identical copies).

    Sampling is pure ancestral sampling from ``softmax(logits / temperature)`` restricted to the top-p
    nucleus (no top-k, no repetition penalty), so at ``temperature=1, top_p=1`` the samples are exact
    draws from the model — what unbiased KL and reward estimates need. ``batch_size`` prompts are
    generated together (left-padded); the torch RNG is seeded with ``seed`` inside a forked RNG
    state, so results depend only on the arguments and the global RNG is left untouched.
    """
    from transformers import GenerationConfig

    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    greedy = temperature == 0
    gen_config = GenerationConfig(
        do_sample=not greedy, max_new_tokens=max_new_tokens, num_return_sequences=1 if greedy else k,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None,
        **({} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}),
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts, ids_out, finished, stops = [], [], [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = [prompt_ids(tokenizer, p, chat_template) for p in prompts[start:start + batch_size]]
                width = max(len(ids) for ids in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, ids in enumerate(chunk):
                    input_ids[i, width - len(ids):] = torch.tensor(ids)
                    mask[i, width - len(ids):] = 1
                out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gen_config)
                new = out[:, width:].tolist()
                if greedy:
                    new = [row for row in new for _ in range(k)]
                for b in range(len(chunk)):
                    row_ids, row_done, row_stop = [], [], []
                    for seq in new[b * k:(b + 1) * k]:
                        stop = next((t for t, tok in enumerate(seq) if tok in eos), None)
                        row_ids.append(seq if stop is None else seq[:stop])
                        row_done.append(stop is not None)
                        row_stop.append(None if stop is None else seq[stop])
                    ids_out.append(row_ids)
                    finished.append(row_done)
                    stops.append(row_stop)
                    texts.append(tokenizer.batch_decode(row_ids, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return Generation(prompts=list(prompts), texts=texts, token_ids=ids_out, finished=finished, stop_ids=stops)


def sample(
    model,
    tokenizer,
    prompts: list[Text],
    k: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[str]]:
    """``k`` sampled completions (text, without EOS) per prompt: ``out[b][j]``. See `generate`."""
    return generate(model, tokenizer, prompts, k, max_new_tokens, temperature, top_p, seed, batch_size).texts


def generate_conditioned(
    model,
    tokenizer,
    prompts: list[Text],
    weights: list[float],
    template: str | None = None,
    digits: int = 2,
    **kwargs,
) -> Generation:
    """`generate` from a model trained with the ``condition_weights`` transform, at the trade-off
    ``weights`` (a point of the simplex, one entry per objective): each prompt is conditioned exactly as
    in training (`alignkit.data.conditioned_prompt`, same ``template`` and ``digits``). ``kwargs`` go to
    `generate`; the returned ``prompts`` are the conditioned ones."""
    from alignkit.data.transforms_condition import WEIGHTS_TEMPLATE, conditioned_prompt

    conditioned = [conditioned_prompt(p, list(weights), template or WEIGHTS_TEMPLATE, digits) for p in prompts]
    return generate(model, tokenizer, conditioned, **kwargs)


def score_logps(
    model,
    tokenizer,
    prompts: list[Text],
    completions: list[list[str]],
    finished: list[list[bool]] | None = None,
    batch_size: int = 32,
    chat_template: str = "auto",
    chunk_size: int = 0,
) -> Tensor:
    """Summed log-probs ``s(y) = Σ_t log π(y_t | x, y_<t)`` of completions, ``[B, K]`` float32 on CPU.

    ``completions[b]`` are the K_b completions of ``prompts[b]`` (ragged K is allowed: missing slots
    are NaN). Each completion is scored with its EOS appended, as the trainer scores responses;
    where ``finished[b][k]`` is False (a sample cut at ``max_new_tokens``) the EOS is not scored.
    No gradients; the model is put in eval mode while scoring.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} rows of completions")
    records = [_record(p, c) for p, c in zip(prompts, completions)]
    items, _ = tokenize_records(records, tokenizer, TokenizeConfig(max_length=None, chat_template=chat_template))
    eos = tokenizer.eos_token_id
    for b, item in enumerate(items):
        for j in range(item.k):
            if finished is not None and not finished[b][j] and item.segments[j][-1:] == [eos]:
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
