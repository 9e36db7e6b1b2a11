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
       * ``value=rollout`` — Transfer Q* as the paper does it: ``reward_fn(x, text(y ⊕ z_j ⊕ w_j))`` where
         ``w_j`` is a greedy rollout to the end (a stop token or ``max_new_tokens`` in all) of the baseline
         model — ``--helper`` (an aligned model for the target reward), else π itself — from ``x, y ⊕ z_j``,
         decoded from a copy of that model's block KV cache (no prefill again):
         the baseline's Q-value of the prefix, estimated by one greedy trajectory and scored by the
         target reward. A block that ends the completion needs no rollout (its value is its reward), so
         with ``block >= max_new_tokens`` it is ``value=reward``;
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

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.generation import eos_and_pad, prompt_ids
from alignkit.generation.decoding import check_sampling
from alignkit.generation.prefill import cache_arg, cache_of, pick_token
from alignkit.inference.base import InferenceOutput, InferenceSettings, register
from alignkit.inference.bon import bon_kl

VALUES = ("reward", "logratio", "rollout")


@dataclass
class CdOptions:
    b: int = 4  # continuations sampled per block
    block: int = 8  # tokens per block (L)
    value: str = "reward"  # reward (on the partial text) | logratio (log π_helper − log π) | rollout (Transfer Q*)


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

    def mark(self) -> tuple[int, Tensor]:
        """Where the prefix stands (its length and next-token logits), for `rewind`."""
        return self.length, self.logits

    def rewind(self, mark: tuple[int, Tensor]) -> None:
        """Drop every token fed since ``mark`` (from `mark`) from the cache: the prefix is as it was then."""
        length, logits = mark
        if self.length > length:
            self.cache.crop(length - self.length)  # a negative count removes that many positions
        self.length, self.logits = length, logits


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


def greedy_rollout(lm: PrefixLM, budgets: list[int], eos: list[int], pad: int) -> tuple[list[list[int]], int, int]:
    """Greedy continuations of every row of ``lm`` from where it stands — row j for at most ``budgets[j]``
    tokens (0: none), ending before a stop token — from a copy of its KV cache, so ``lm`` is left as it was:
    ``(tokens per row, forward passes, tokens processed)``."""
    sub = copy.copy(lm)
    sub.cache = copy.deepcopy(lm.cache)  # the model appends to a cache in place
    calls, processed = sub.calls, sub.tokens
    out: list[list[int]] = [[] for _ in budgets]
    live = [n > 0 for n in budgets]
    for _ in range(max(budgets, default=0)):
        tok = sub.logits.argmax(-1).cpu()
        for j in range(len(budgets)):
            if live[j] and int(tok[j]) in eos:
                live[j] = False
            elif live[j]:
                out[j].append(int(tok[j]))
                live[j] = len(out[j]) < budgets[j]
        if not any(live):
            break
        sub.feed(torch.where(torch.tensor(live), tok, pad)[:, None], sum(live))
    return out, sub.calls - calls, sub.tokens - processed


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
    if o.value in ("reward", "rollout") and reward_fn is None:
        raise ConfigError(f"cd with value={o.value} needs a reward (--reward SPEC); or use value=logratio with --helper")
    if o.value == "logratio" and helper is None:
        raise ConfigError("cd with value=logratio needs a helper model (--helper PATH): the aligned model")


def _one_prompt(model, helper, tokenizer, prompt, row, settings: InferenceSettings, o: CdOptions, reward_fn,
                gen: torch.Generator) -> InferenceOutput:
    eos, pad = eos_and_pad(model, tokenizer)
    ids = prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs)
    base = PrefixLM(model, ids)
    help_ = PrefixLM(helper, ids) if helper is not None and o.value in ("logratio", "rollout") else None
    prefix: list[int] = []
    base_sum, help_sum, kl, scored, blocks = 0.0, 0.0, 0.0, 0, 0
    rollout_calls = rollout_tokens = 0
    finished, value = False, None
    while not finished and len(prefix) < settings.max_new_tokens:
        steps = min(o.block, settings.max_new_tokens - len(prefix))
        last = len(prefix) + steps == settings.max_new_tokens
        for lm in (base, help_):
            if lm is not None:
                lm.expand(o.b)
        tokens, lengths, stopped, lp = sample_block(base, steps, last, settings, eos, pad, gen)
        conts = [tokens[j, : int(lengths[j]) - int(stopped[j])].tolist() for j in range(o.b)]
        h = None if help_ is None else help_sum + helper_logps(help_, tokens, lengths)
        ends = [prefix + c for c in conts]
        if o.value == "rollout":  # the baseline model (helper, else π) finishes each candidate prefix greedily
            budgets = [0 if bool(stopped[j]) else settings.max_new_tokens - len(prefix) - int(lengths[j])
                       for j in range(o.b)]
            tails, c, t = greedy_rollout(help_ if help_ is not None else base, budgets, eos, pad)
            ends = [e + w for e, w in zip(ends, tails)]
            rollout_calls, rollout_tokens = rollout_calls + c, rollout_tokens + t
        texts = tokenizer.batch_decode(ends, skip_special_tokens=True)
        values = _values(o, reward_fn, prompt, row, texts, base_sum + lp, h)
        scored += len(texts) if o.value != "logratio" else 0
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
    calls = base.calls + scored + (help_.calls if help_ else 0) + rollout_calls
    tokens_n = base.tokens + (help_.tokens if help_ else 0) + rollout_tokens
    return InferenceOutput(prompt=prompt, text=tokenizer.decode(prefix, skip_special_tokens=True), token_ids=prefix,
                           finished=finished, reward=value, calls=calls, tokens=tokens_n,
                           kl=kl if settings.temperature > 0 else None, extra={"blocks": blocks, "value": o.value})


@register("cd", CdOptions, summary="blockwise controlled decoding: per block keep the best of b sampled "
          "continuations by a value (reward on the prefix, the helper's log-ratio, or Transfer Q*'s rollout reward)")
@torch.no_grad()
def cd(model, tokenizer, prompts, rows, settings, options: CdOptions, reward_fn=None, helper=None):
    """Controlled decoding (module docstring): one prompt at a time, B candidate blocks in a batch."""
    _check_options(options, reward_fn, helper)
    return per_prompt([m for m in (model, helper) if m is not None], prompts, rows, settings,
                      lambda p, r, gen: _one_prompt(model, helper, tokenizer, p, r, settings, options, reward_fn, gen))


def per_prompt(models, prompts, rows, settings: InferenceSettings, one) -> list[InferenceOutput]:
    """``one(prompt, row, gen)`` for each prompt in turn, with ``models`` in eval mode (their modes restored
    after) and one ``torch.Generator`` seeded ``settings.seed`` on the first model's device for all prompts."""
    check_sampling(settings.temperature, settings.top_p, settings.max_new_tokens)
    gen = torch.Generator(device=next(models[0].parameters()).device).manual_seed(settings.seed)
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        return [one(p, r, gen) for p, r in zip(prompts, rows)]
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
