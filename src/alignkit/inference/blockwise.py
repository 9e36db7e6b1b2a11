"""Blockwise controlled decoding (``cd``): value-guided sampling one block of tokens at a time.

Controlled decoding (Mudgal et al. 2024, https://arxiv.org/abs/2310.17022, "CD-Q blockwise") and
Transfer Q* (Chakraborty et al. 2024, https://arxiv.org/abs/2405.20495) pick, per block, the best of B
continuations of the current prefix by a value estimate. Per prompt x, with prefix y (initially empty):

    1. draw B i.i.d. continuations z_1..z_B of L tokens (fewer if one stops) from the base sampler
       π_T(· | x, y) — ancestral sampling at ``settings.temperature`` / ``top_p``, as `prefill.sample_shared`;
    2. score each extended prefix y ⊕ z_j by a value V(x, y ⊕ z_j):
       * ``value=reward``   — ``reward_fn(x, text(y ⊕ z_j))`` on the partial completion text;
       * ``value=logratio`` — ``log π_helper(y ⊕ z_j | x) − log π(y ⊕ z_j | x)`` (untempered, summed over
         tokens): the implicit reward of an aligned helper model (DPO-style, β = 1) relative to π;
    3. keep ``y ← y ⊕ z_j*`` with ``j* = argmax_j V`` (ties: the first drawn); stop when z_j* ended
       with a stop token or ``max_new_tokens`` tokens are reached.

The prefix's KV cache is computed once and copied B times for the next block; after the choice the
chosen row's cache is kept (no recomputation). Prompts are processed one at a time (the B rows are
the batch; ``settings.batch_size`` is not used), all drawing from one ``torch.Generator`` seeded with
``settings.seed``.

B = 1 is plain ancestral sampling: the same forward passes and draws as `prefill.sample_shared` with
``n = 1, batch_size = 1`` and the same seed, so token-for-token the same samples.

KL estimate (``kl``, nats, None when greedy): each block is a best-of-B choice among B i.i.d. draws of
π_T(· | x, y), so by the chain rule over blocks ``KL(cd ‖ π_T) = Σ_k E[KL(BoN_B(· | x, y_k) ‖ π_T(· | x, y_k))]``.
Each block contributes `alignkit.inference.bon.bon_kl` of its B values (exactly ``log B − (B−1)/B`` for
distinct values, less with ties, 0 for B = 1); ``kl`` is their sum along the returned path.

``reward`` is V of the returned completion (the last block's winning value). Cost: ``calls`` = base and
helper forward passes + one per scored text; ``tokens`` = tokens those passes processed (rows that
already stopped are not counted). ``extra``: ``blocks`` (blocks decoded), ``value`` (the value kind).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.generation import eos_and_pad, prompt_ids
from alignkit.generation.decoding import check_sampling
from alignkit.generation.prefill import cache_arg, cache_of, pick_token
from alignkit.inference.base import InferenceOutput, InferenceSettings, register
from alignkit.inference.bon import bon_kl

VALUES = ("reward", "logratio")


@dataclass
class CdOptions:
    b: int = 4  # continuations sampled per block
    block: int = 8  # tokens per block (L)
    value: str = "reward"  # reward (reward_fn on the partial text) | logratio (log π_helper − log π)


class PrefixLM:
    """One prefix of a causal LM with its KV cache (batch 1 between blocks, B rows inside a block).

    ``logits`` ``[R, V]`` are the next-token logits of the R rows; ``length`` the tokens seen so far.
    Counts its forward passes (``calls``) and processed tokens (``tokens``)."""

    def __init__(self, model, ids: list[int]):
        self.model, self.device = model, next(model.parameters()).device
        self.length, self.calls, self.tokens = len(ids), 1, len(ids)
        x = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(x)
        out = model(input_ids=x, attention_mask=mask, position_ids=mask.cumsum(-1) - 1, use_cache=True,
                    logits_to_keep=1)
        self.cache, self.logits = cache_of(out), out.logits[:, -1].float()

    def expand(self, b: int) -> None:
        self.cache.batch_repeat_interleave(b)
        self.logits = self.logits.repeat_interleave(b, 0)

    def feed(self, tokens: Tensor, live: int) -> Tensor:
        """Append ``tokens`` ``[R, n]`` to every row; returns all ``n`` positions' logits ``[R, n, V]``
        and sets ``logits`` to the last. ``live``: how many of the R·n tokens count as processed."""
        r, n = tokens.shape
        mask = torch.ones((r, self.length + n), dtype=torch.long, device=self.device)
        pos = torch.arange(self.length, self.length + n, device=self.device).expand(r, n)
        out = self.model(input_ids=tokens.to(self.device), attention_mask=mask, position_ids=pos, use_cache=True,
                         **{cache_arg(self.model): self.cache})
        self.cache, self.length = cache_of(out), self.length + n
        self.calls, self.tokens = self.calls + 1, self.tokens + live
        self.logits = out.logits[:, -1].float()
        return out.logits.float()

    def keep(self, j: int) -> None:
        self.cache.batch_select_indices(torch.tensor([j], device=self.device))
        self.logits = self.logits[j:j + 1]


def sample_block(lm: PrefixLM, steps: int, last_step: bool, settings: InferenceSettings, eos: list[int], pad: int,
                 gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw up to ``steps`` tokens for every row of ``lm`` (as `prefill._sample_chunk` does):
    ``(tokens [R, n], lengths [R], stopped [R], logps [R])`` with ``lengths`` counting drawn tokens (stop
    token included) and ``logps`` their untempered log π. The tokens of the last step are fed too
    (so ``lm.logits`` follow the block) unless every row stopped or ``last_step`` (``max_new_tokens`` hit)."""
    rows = lm.logits.shape[0]
    stop = torch.tensor(eos, device=lm.device)
    done = torch.zeros(rows, dtype=torch.bool, device=lm.device)
    lengths = torch.zeros(rows, dtype=torch.long, device=lm.device)
    logps = torch.zeros(rows, dtype=torch.float32, device=lm.device)
    drawn = []
    for step in range(steps):
        tok = pick_token(lm.logits, settings.temperature, settings.top_p, gen)
        live = ~done
        logps += torch.where(live, lm.logits.log_softmax(-1).gather(-1, tok[:, None])[:, 0], 0.0)
        tok = torch.where(live, tok, pad)
        lengths += live.long()
        drawn.append(tok)
        done = done | (live & torch.isin(tok, stop))
        if bool(done.all()) or (last_step and step == steps - 1):
            break
        lm.feed(tok[:, None], int((~done).sum()))
    return torch.stack(drawn, 1).cpu(), lengths.cpu(), done.cpu(), logps.cpu()


def helper_logps(helper: PrefixLM, tokens: Tensor, lengths: Tensor) -> Tensor:
    """``[R]`` summed log π_helper of each row's first ``lengths[r]`` tokens of ``tokens`` ``[R, n]``, fed
    through the helper's (expanded) cache in one forward pass."""
    before = helper.logits
    after = helper.feed(tokens, int(lengths.sum()))
    logits = torch.cat([before[:, None], after[:, :-1]], 1).log_softmax(-1).cpu()  # predicts tokens[:, i]
    lp = logits.gather(-1, tokens[:, :, None])[:, :, 0]
    live = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return torch.where(live, lp, 0.0).sum(-1)


def _values(o: CdOptions, reward_fn, prompt, row, texts, base_lp: Tensor, help_lp: Tensor | None) -> list[float]:
    if o.value == "logratio":
        return (help_lp.double() - base_lp.double()).tolist()
    got = [float(v) for v in reward_fn([prompt] * len(texts), texts, [row] * len(texts))]
    if len(got) != len(texts):
        raise ConfigError(f"the reward function returned {len(got)} rewards for {len(texts)} texts")
    return got


def _check_options(o: CdOptions, reward_fn, helper) -> None:
    if o.b < 1 or o.block < 1:
        raise ConfigError(f"cd needs b >= 1 and block >= 1, got b={o.b}, block={o.block}")
    if o.value not in VALUES:
        raise ConfigError(f"cd value must be one of {VALUES}, got {o.value!r}")
    if o.value == "reward" and reward_fn is None:
        raise ConfigError("cd with value=reward needs a reward (--reward SPEC); or use value=logratio with --helper")
    if o.value == "logratio" and helper is None:
        raise ConfigError("cd with value=logratio needs a helper model (--helper PATH): the aligned model")


def _one_prompt(model, helper, tokenizer, prompt, row, settings: InferenceSettings, o: CdOptions, reward_fn,
                gen: torch.Generator) -> InferenceOutput:
    eos, pad = eos_and_pad(model, tokenizer)
    ids = prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs)
    base = PrefixLM(model, ids)
    help_ = PrefixLM(helper, ids) if o.value == "logratio" else None
    prefix: list[int] = []
    base_sum, help_sum, kl, scored, blocks = 0.0, 0.0, 0.0, 0, 0
    finished, value = False, None
    while not finished and len(prefix) < settings.max_new_tokens:
        steps = min(o.block, settings.max_new_tokens - len(prefix))
        last = len(prefix) + steps == settings.max_new_tokens
        for lm in (base, help_):
            if lm is not None:
                lm.expand(o.b)
        tokens, lengths, stopped, lp = sample_block(base, steps, last, settings, eos, pad, gen)
        conts = [tokens[j, : int(lengths[j]) - int(stopped[j])].tolist() for j in range(o.b)]
        texts = tokenizer.batch_decode([prefix + c for c in conts], skip_special_tokens=True)
        h = None if help_ is None else help_sum + helper_logps(help_, tokens, lengths)
        values = _values(o, reward_fn, prompt, row, texts, base_sum + lp, h)
        scored += len(texts) if o.value == "reward" else 0
        j = max(range(o.b), key=lambda i: (values[i], -i))
        if settings.temperature > 0:
            kl += float(bon_kl(values))
        prefix, value, blocks = prefix + conts[j], values[j], blocks + 1
        base_sum += float(lp[j])
        help_sum = help_sum if h is None else float(h[j])
        finished = bool(stopped[j])
        base.keep(j)
        if help_ is not None:
            help_.keep(j)
    calls = base.calls + scored + (help_.calls if help_ else 0)
    tokens_n = base.tokens + (help_.tokens if help_ else 0)
    return InferenceOutput(prompt=prompt, text=tokenizer.decode(prefix, skip_special_tokens=True), token_ids=prefix,
                           finished=finished, reward=value, calls=calls, tokens=tokens_n,
                           kl=kl if settings.temperature > 0 else None, extra={"blocks": blocks, "value": o.value})


@register("cd", CdOptions, summary="blockwise controlled decoding: per block keep the best of b sampled "
          "continuations by a value (reward on the prefix, or the helper's log-ratio)")
@torch.no_grad()
def cd(model, tokenizer, prompts, rows, settings, options: CdOptions, reward_fn=None, helper=None):
    """Controlled decoding (module docstring): one prompt at a time, B candidate blocks in a batch."""
    _check_options(options, reward_fn, helper)
    check_sampling(settings.temperature, settings.top_p, settings.max_new_tokens)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    models = [m for m in (model, helper) if m is not None]
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        return [_one_prompt(model, helper, tokenizer, p, r, settings, options, reward_fn, gen)
                for p, r in zip(prompts, rows)]
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
