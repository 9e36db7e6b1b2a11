"""Step-by-step batched decoding with one KV cache per model, and sampling from a product of experts.

`sample_product` draws each next token from the (tempered, top-p) normalised product of M causal LMs
that share a tokenizer::

    z_t(v) = Σ_m e_m · log π_m(v | x, y_<t)          (log_softmax of each model's logits, exponents e_m)
    q_t(v) = softmax(z_t / T)(v), restricted to the top-p nucleus of that softmax and renormalised

``T = 0`` is greedy (``argmax z_t``). One model with exponent 1 is plain ancestral sampling from that
model (`alignkit.generation.generate` draws from the same distribution; greedy is token-for-token the
same). Two models with exponents ``(1 − α, α)`` give Nash-MD's geometric mixture; ``(1, 1/β)`` is
GenARM (`alignkit.inference.guided`).

Lower-level pieces, reused by the token-level methods of `alignkit.inference.guided`:

* `CachedLM` — one model stepping N left-padded rows with its own KV cache (positions from the
  attention mask, exactly as ``model.generate`` computes them);
* `decode_loop` — the shared loop: prefill every model, then per step ask a ``choose`` callback for
  the N next tokens, stop rows at a stop token (`alignkit.generation.eos_ids`), feed the pad token to
  finished rows, and count each row's forward passes and processed tokens;
* pure step functions: `product_logits` (z_t), `sampling_logprobs` (log q_t), `draw` (greedy or one
  multinomial draw per row), `step_kl` (KL(q_t ‖ p_t) per row).

Cost accounting (per row, every model): a sample of ``n`` tokens (its stop token included) costs ``n``
forward passes and ``len(prompt) + n − 1`` processed tokens per model — the prefill plus one cached
step per later token; finished rows stop counting although the batch keeps stepping them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.data.schema import Text
from alignkit.errors import ConfigError, ModelError
from alignkit.generation import Generation, eos_and_pad, left_pad, prompt_ids, seeded
from alignkit.generation.prefill import cache_of, top_p_filter


def check_sampling(temperature: float, top_p: float, max_new_tokens: int = 1, k: int = 1) -> None:
    """Raise a ValueError naming the bad sampling setting."""
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1 or k < 1:
        raise ConfigError(f"max_new_tokens and k must be >= 1, got {max_new_tokens} and {k}")


def product_logits(logits: list[Tensor], exponents: list[float]) -> Tensor:
    """``z = Σ_m e_m · log_softmax(logits_m)`` in float32, ``[N, V]``. Models with ``e_m = 0`` are left
    out of the sum (not multiplied by 0), so a masked ``−inf`` logit of theirs cannot make NaN and a
    product with one non-zero exponent 1 is exactly that model's log-softmax."""
    z = None
    for lg, e in zip(logits, exponents):
        if e == 0:
            continue
        term = F.log_softmax(lg.float(), dim=-1)
        term = term if e == 1 else e * term
        z = term if z is None else z + term
    if z is None:
        raise ConfigError("every exponent is 0: the product has no model in it")
    return z


def sampling_logprobs(z: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """``log q``: log-softmax of ``z / T`` restricted to its top-p nucleus and renormalised, ``[N, V]``
    (−inf outside the nucleus; the nucleus rule is transformers' ``TopPLogitsWarper``, shared with
    `alignkit.generation.prefill.top_p_filter`). ``T = 0`` returns ``log_softmax(z)`` (T = 1, no
    nucleus): the distribution greedy takes the argmax of.
    """
    if temperature == 0:
        return F.log_softmax(z, dim=-1)
    return F.log_softmax(top_p_filter(z / temperature, top_p), dim=-1)


def draw(logq: Tensor, greedy: bool) -> Tensor:
    """Next tokens ``[N]``: ``argmax logq`` when greedy, else one ``torch.multinomial`` draw per row."""
    if greedy:
        return logq.argmax(-1)
    return torch.multinomial(logq.exp(), 1).squeeze(-1)


def step_kl(logq: Tensor, logp: Tensor) -> Tensor:
    """``KL(q ‖ p) = Σ_v q(v)(log q(v) − log p(v))`` per row ``[N]``; terms with ``q(v) = 0`` are 0."""
    q = logq.exp()
    return torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)


class CachedLM:
    """A causal LM decoding N left-padded rows step by step with its own KV cache.

    ``prefill()`` runs the prompts and returns the next-token logits ``[N, V]`` (float32);
    ``advance(tokens)`` appends one token per row and returns the following logits. Position ids are
    ``cumsum(attention_mask) − 1``, as ``model.generate`` uses for left padding.
    """

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor):
        self.model = model
        self.device = next(model.parameters()).device
        self.ids = input_ids.to(self.device)
        self.mask = attention_mask.to(self.device)
        self.cache = None
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.2 names the KV cache `cache` (`past_key_values` is deprecated there)
        self._cache_key = "cache" if "cache" in params else "past_key_values"
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         **{self._cache_key: self.cache}, **self._keep)
        self.cache = cache_of(out)  # `out.past_key_values` is a deprecated alias in transformers >= 5.x
        return out.logits[:, -1, :].float()

    def prefill(self) -> Tensor:
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        return self._forward(self.ids, positions)

    def advance(self, tokens: Tensor) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return self._forward(tokens.to(self.device)[:, None], self.mask.sum(-1, keepdim=True) - 1)


@dataclass
class Decoded:
    """Per row: sampled ids (stop token excluded), whether a stop token ended it and which, and the cost."""

    token_ids: list[list[int]]
    finished: list[bool]
    stop_ids: list[int | None]
    calls: list[int]
    tokens: list[int]


# choose(logits per model [N, V], active rows [N] bool, prefixes so far) -> next tokens [N]
Chooser = Callable[[list[Tensor], Tensor, list[list[int]]], Tensor]


def decode_loop(models: list, rows: list[list[int]], choose: Chooser, max_new_tokens: int, eos: list[int],
                pad: int) -> Decoded:
    """Decode N rows (prompt token ids) together with every model in ``models`` kept in step: each
    step ``choose`` picks the next token of every row from all models' next-token logits; a row ends
    at a token in ``eos`` or after ``max_new_tokens``. See the module docstring for the cost counted."""
    input_ids, mask = left_pad(rows, pad)
    lms = [CachedLM(m, input_ids, mask) for m in models]
    n, m = len(rows), len(models)
    calls, tokens = [m] * n, [m * len(r) for r in rows]
    out: list[list[int]] = [[] for _ in range(n)]
    stops: list[int | None] = [None] * n
    logits = [lm.prefill() for lm in lms]
    eos_t = torch.tensor(eos, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool)
    for t in range(max_new_tokens):
        chosen = choose(logits, active.clone(), out).cpu()
        chosen = torch.where(active, chosen, torch.full_like(chosen, pad))
        ended = active & torch.isin(chosen, eos_t)
        for i in torch.nonzero(active).flatten().tolist():
            if ended[i]:
                stops[i] = int(chosen[i])
            else:
                out[i].append(int(chosen[i]))
        active &= ~ended
        if not active.any() or t == max_new_tokens - 1:
            break
        for i in torch.nonzero(active).flatten().tolist():
            calls[i] += m
            tokens[i] += m
        logits = [lm.advance(chosen) for lm in lms]
    return Decoded(out, [s is not None for s in stops], stops, calls, tokens)


def common_vocab(logits: list[Tensor], tokenizer) -> list[Tensor]:
    """Cut every model's logits to a shared vocabulary width (models may pad their embedding past
    ``len(tokenizer)``); a model narrower than the tokenizer cannot share it and is refused."""
    widths = [lg.shape[-1] for lg in logits]
    width = min(widths)
    if width < len(tokenizer):
        raise ModelError(f"models have vocabulary sizes {widths} but the shared tokenizer has {len(tokenizer)} "
                         "tokens: every model must cover the tokenizer (use models built on the same tokenizer)")
    return [lg[:, :width] for lg in logits]


class ProductChooser:
    """The `decode_loop` callback of `sample_product`: draws from ``q_t`` and accumulates, per row,
    ``Σ log π_m`` of the drawn tokens under each model, ``Σ log q_t`` and ``Σ_t KL(q_t ‖ p_t)`` with
    ``p_t = softmax(log π_0 / T)`` (the first model at the sampling temperature, no nucleus cut)."""

    def __init__(self, exponents: list[float], tokenizer, temperature: float, top_p: float, n: int):
        self.exponents, self.tokenizer, self.temperature, self.top_p = exponents, tokenizer, temperature, top_p
        self.model_logps = torch.zeros(n, len(exponents), dtype=torch.float64)
        self.product_logps = torch.zeros(n, dtype=torch.float64)
        self.kl = torch.zeros(n, dtype=torch.float64)

    def __call__(self, logits: list[Tensor], active: Tensor, prefixes: list[list[int]]) -> Tensor:
        logits = common_vocab(logits, self.tokenizer)
        greedy = self.temperature == 0
        logq = sampling_logprobs(product_logits(logits, self.exponents), self.temperature, self.top_p)
        chosen = draw(logq, greedy)
        act = active.to(logq.device)
        per_model = torch.stack([F.log_softmax(lg, -1).gather(-1, chosen[:, None])[:, 0] for lg in logits], -1)
        self.model_logps += torch.where(act[:, None], per_model, 0.0).double().cpu()
        self.product_logps += torch.where(act, logq.gather(-1, chosen[:, None])[:, 0], 0.0).double().cpu()
        if not greedy:
            logp = F.log_softmax(logits[0] / self.temperature, -1)
            self.kl += torch.where(act, step_kl(logq, logp), 0.0).double().cpu()
        return chosen


@dataclass
class ProductGeneration(Generation):
    """`Generation` plus, with ``return_logps=True``, per-sample sums over the sampled tokens (the stop
    token included when the sample ended with one, as `alignkit.engine.score.score_logps` scores):

    * ``logps`` ``[B, K, M]`` — ``Σ_t log π_m(y_t | x, y_<t)`` under each model (temperature 1, no nucleus);
    * ``product_logps`` ``[B, K]`` — ``Σ_t log q_t(y_t)`` under the sampling distribution (tempered,
      nucleus-cut; at T = 0 the untempered product ``softmax(z_t)``);
    * ``kl`` ``[B, K]`` — ``Σ_t KL(q_t ‖ softmax(log π_0 / T))`` along the path: an unbiased estimate of
      the sequence KL from the product sampler to the first model at temperature T (None at T = 0);
    * ``calls`` / ``tokens`` ``[B][K]`` — forward passes and processed tokens, all models together.
    """

    logps: Tensor | None = None
    product_logps: Tensor | None = None
    kl: Tensor | None = None
    calls: list[list[int]] | None = None
    tokens: list[list[int]] | None = None


def _regroup(flat: list, b: int, k: int) -> list[list]:
    return [flat[i * k:(i + 1) * k] for i in range(b)]


@torch.no_grad()
def sample_product(models: list, exponents: list[float], tokenizer, prompts: list[Text], k: int = 1,
                   max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   chat_template: str = "auto", return_logps: bool = False,
                   chat_template_kwargs: dict | None = None) -> ProductGeneration:
    """Sample ``k`` completions per prompt, each token from ``softmax(Σ_m e_m·log_softmax(logits_m) / T)``
    with top-p on that distribution (``T = 0``: greedy, ``k`` identical copies).

    All models share ``tokenizer``; every prompt is decoded in one batch, left-padded, each model with
    its own KV cache. Stop tokens are `alignkit.generation.eos_ids` of the first model. The torch RNG
    is seeded with ``seed`` inside a forked RNG state (the global RNG is untouched). Exponents are any
    finite reals, not all 0. Returns a `ProductGeneration` (its log-prob fields only with ``return_logps``).
    """
    if len(models) != len(exponents) or not models:
        raise ConfigError(f"need one exponent per model, got {len(models)} models and {len(exponents)} exponents")
    if not all(math.isfinite(e) for e in exponents):
        raise ConfigError(f"exponents must be finite, got {list(exponents)}")
    check_sampling(temperature, top_p, max_new_tokens, k)
    eos, pad = eos_and_pad(models[0], tokenizer)
    draws = 1 if temperature == 0 else k
    rows = [prompt_ids(tokenizer, p, chat_template, chat_template_kwargs) for p in prompts for _ in range(draws)]
    chooser = ProductChooser(list(exponents), tokenizer, temperature, top_p, len(rows))
    device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with seeded(device, seed):
            dec = decode_loop(models, rows, chooser, max_new_tokens, eos, pad)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    idx = [i for i in range(len(rows)) for _ in range(k // draws)]  # greedy: k copies of the one row

    def pick(values):
        return _regroup([values[i] for i in idx], len(prompts), k)

    ids = pick(dec.token_ids)
    out = ProductGeneration(prompts=list(prompts), texts=[tokenizer.batch_decode(r, skip_special_tokens=True) for r in ids],
                            token_ids=ids, finished=pick(dec.finished), stop_ids=pick(dec.stop_ids),
                            calls=pick(dec.calls), tokens=pick(dec.tokens))
    if return_logps:
        sel = torch.tensor(idx, dtype=torch.long)
        out.logps = chooser.model_logps[sel].float().view(len(prompts), k, len(models))
        out.product_logps = chooser.product_logps[sel].float().view(len(prompts), k)
        out.kl = None if temperature == 0 else chooser.kl[sel].float().view(len(prompts), k)
    return out
