"""N samples per prompt from one shared prefill: run each prompt through the model once, copy its KV
cache N times, then decode the N continuations together.

``model.generate(num_return_sequences=N)`` expands the prompt *before* the prefill, so it processes the
prompt N times; here a prompt of length ``P`` costs ``P`` prefill tokens however large N is. Each decode
step is one batched forward over the rows still decoding (B prompts, left-padded, x N samples; a row that
stopped is dropped from the batch and its cache).

Sampling is exact ancestral sampling, as in `alignkit.generation.generate`: at every step the next token
is drawn from ``softmax(logits / temperature)`` restricted to the top-p nucleus (the smallest set of most
likely tokens whose probability exceeds ``top_p``, computed exactly as transformers' ``TopPLogitsWarper``;
no top-k, no repetition penalty); ``temperature = 0`` is greedy. A sample stops at any of the model's stop
tokens (`alignkit.generation.eos_ids`) or after ``max_new_tokens``. Draws come from a private
``torch.Generator`` seeded with ``seed``, so results depend only on the arguments and the global RNG is
left untouched.

Cost, per prompt (what `InferenceOutput.calls` / ``tokens`` report): a sample that drew ``L`` tokens
(its stop token included) needed the prefill plus ``L − 1`` decode passes, so the prompt's ``calls`` are
``1 + max_j (L_j − 1)`` and its ``tokens`` are ``P + Σ_j (L_j − 1)`` — padding and rows that already
stopped are not counted, so the numbers do not depend on how prompts were batched.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.data.schema import Text
from alignkit.errors import ConfigError
from alignkit.generation import Generation, eos_and_pad, left_pad, prompt_ids


@dataclass
class SharedSamples:
    """B prompts x N samples. ``logps[b, j]`` is ``Σ_t log π(y_t | x, y_<t)`` of sample j under the
    *untempered* model, its stop token included (the ``s(y)`` `alignkit.engine.score.score_logps` returns);
    ``calls[b]`` / ``tokens[b]`` the forward passes and tokens prompt b took (module docstring)."""

    generation: Generation
    logps: Tensor  # [B, N] float32, CPU
    calls: list[int]
    tokens: list[int]


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Logits [R, V] with every token outside the top-p nucleus set to −inf (transformers' semantics:
    drop the least likely tokens whose cumulative probability, in ascending order, is ≤ 1 − top_p;
    the most likely token always stays)."""
    if top_p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def next_token_probs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """The sampling distribution [R, V] of the next token: ``softmax(top_p(logits / temperature))``."""
    return top_p_filter(logits.float() / temperature, top_p).softmax(-1)


def pick_token(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(next_token_probs(logits, temperature, top_p), 1, generator=gen)[:, 0]


def cache_of(out):
    cache = getattr(out, "cache", None)  # transformers >= 5.x names it `cache`, earlier `past_key_values`
    return cache if cache is not None else out.past_key_values


def cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sample_chunk(model, chunk: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float,
                  eos: list[int], pad: int, gen: torch.Generator, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample n continuations of each prompt in ``chunk``: ``(tokens [B·n, T], lengths [B·n], stopped [B·n],
    logps [B·n])`` with rows grouped by prompt; ``lengths`` count the drawn tokens, stop token included."""
    input_ids, mask = left_pad(chunk, pad)
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as transformers' generate sets them
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = cache_of(out)
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)
    mask = mask.repeat_interleave(n, 0)
    next_pos = mask.sum(-1, keepdim=True)
    rows = logits.shape[0]
    stop_ids = torch.tensor(eos, device=device)
    live = torch.arange(rows, device=device)  # the original row of each row still decoding
    drawn = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    logps = torch.zeros(rows, dtype=torch.float32, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        tok = pick_token(logits, temperature, top_p, gen)
        drawn[live, step] = tok
        lengths[live] += 1
        logps[live] += logits.log_softmax(-1).gather(-1, tok[:, None])[:, 0]
        ends = torch.isin(tok, stop_ids)
        stopped[live] = ends
        if bool(ends.all()) or step == max_new_tokens - 1:
            break
        if bool(ends.any()):  # drop the rows that stopped: later steps decode only the live ones
            keep = (~ends).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            live, tok, mask, next_pos = live[keep], tok[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                    **{cache_arg(model): cache})
        next_pos = next_pos + 1
        logits = out.logits[:, -1].float()
    return drawn.cpu(), lengths.cpu(), stopped.cpu(), logps.cpu()


@torch.no_grad()
def sample_shared(
    model,
    tokenizer,
    prompts: list[Text],
    n: int,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    chat_template: str = "auto",
    chat_template_kwargs: dict | None = None,
) -> SharedSamples:
    """``n`` samples of each prompt, one prefill per prompt (module docstring); ``batch_size`` prompts
    are decoded together (``batch_size · n`` rows)."""
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"need n, max_new_tokens and batch_size >= 1, got {n}, {max_new_tokens} and {batch_size}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    eos, pad = eos_and_pad(model, tokenizer)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    texts, ids_out, finished, stops, calls, tokens, logps = [], [], [], [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [prompt_ids(tokenizer, p, chat_template, chat_template_kwargs)
                     for p in prompts[start:start + batch_size]]
            drawn, lengths, stopped, lp = _sample_chunk(model, chunk, n, max_new_tokens, temperature, top_p, eos,
                                                        pad, gen, device)
            for b, p_ids in enumerate(chunk):
                rows = range(b * n, (b + 1) * n)
                kept = [drawn[r, : int(lengths[r]) - int(stopped[r])].tolist() for r in rows]
                ids_out.append(kept)
                finished.append([bool(stopped[r]) for r in rows])
                stops.append([int(drawn[r, int(lengths[r]) - 1]) if stopped[r] else None for r in rows])
                texts.append(tokenizer.batch_decode(kept, skip_special_tokens=True))
                calls.append(1 + max(int(lengths[r]) - 1 for r in rows))
                tokens.append(len(p_ids) + sum(int(lengths[r]) - 1 for r in rows))
                logps.append(lp[b * n:(b + 1) * n])
    finally:
        model.train(was_training)
    generation = Generation(prompts=list(prompts), texts=texts, token_ids=ids_out, finished=finished, stop_ids=stops)
    return SharedSamples(generation, torch.stack(logps), calls, tokens)
