"""Token-level guided decoding: ARGS, GenARM, model interpolation and nudging (METHODS.md section 7), on `alignkit.generation.decoding`.

Notation: π the base model, ``l_t`` its next-token logits after ``x, y_<t``, T the sampling temperature
(`InferenceSettings.temperature`; 0 = greedy), ``p_t = softmax(l_t / T)`` the base sampler's step
distribution (before any top-p cut) and ``q_t`` the method's.

* ``args`` — reward-guided search (Khanov et al. 2024, https://arxiv.org/abs/2402.01694). Per step,
  over the k most likely tokens of π: ``score(v) = log π(v | x, y_<t) + w · r(x, y_<t ⊕ v)`` with the
  reward function on the decoded prefix text. ``greedy=true`` takes the best score; ``greedy=false``
  samples ``q_t(v) ∝ exp(score(v) / T)`` over the k. w = 0 with greedy is greedy decoding of π.
* ``genarm`` — GenARM (Xu et al. 2024, https://arxiv.org/abs/2410.08193): ``q_t ∝ π(v)·π_r(v)^{1/β}``
  with the helper π_r an autoregressive reward model — `sample_product([π, π_r], [1, 1/β])`, tempered
  and top-p cut like plain sampling. β = inf is π itself (the helper is then not run).
  Train π_r with `arm_objective`: ``−logσ(β_r (log π_r(y_w|x) − log π_r(y_l|x)))`` on preference pairs.
  ``extra["arm_logp"]``: ``Σ_t log π_r`` of the returned tokens (the ARM's sequence reward over β_r).
* ``interpolate`` — model-interpolation decoding, DeRa (Liu et al. 2024, "Decoding-time Realignment of
  Language Models", https://arxiv.org/abs/2402.02992): ``q_t ∝ π_base(v)^{1−w} · π_tuned(v)^w``, the
  geometric mixture of the base model (``--model``) and a model tuned from it (``--helper``, e.g. a DPO
  policy), i.e. ``softmax((1−w)·l_base + w·l_tuned)``, then T and top-p as plain sampling — sampling
  `sample_product([π_base, π_tuned], [1 − w, w])`. For a policy tuned with KL strength β it
  approximates, token by token, the policy that strength β/w would have given: w = 0 is the base
  model, w = 1 the tuned one, 0 < w < 1 a weaker alignment, w > 1 a stronger one (extrapolation).
  w = 0 does not run the helper; w = 1 runs the base model for the KL estimate only.
* ``nudging`` — (Fei et al. 2024, https://arxiv.org/abs/2410.09300) π decodes; at a step where π's
  top-1 probability (untempered, ``max softmax(l_t)``) is < γ, the helper (a small aligned model) supplies
  that one token — its greedy token when T = 0, else a draw from its own tempered, top-p distribution.
  γ = 0 is π; γ > 1 is the helper. ``extra["nudged"]`` is the fraction of nudged tokens.

KL estimate (``kl``, sampling only, None when greedy): ``Σ_t KL(q_t ‖ p_t)`` along the returned path,
summed over its tokens (stop token included). By the chain rule its expectation over the method's
samples is the sequence-level KL(method ‖ base sampler at temperature T) — an unbiased, lower-variance
estimate than the sample's log-ratio. It is 0 for the degenerate settings (γ = 0, β = inf, w = 0) at
``top_p = 1``; with ``top_p < 1`` even the base sampler has KL ``E Σ_t −log(nucleus mass)`` > 0.

Cost (per prompt): every model runs a prefill and one cached step per later token (``calls`` = n per
model for n sampled tokens, ``tokens`` = ``len(prompt) + n − 1`` per model, as `decoding.decode_loop`
counts); ARGS adds one call per scored candidate text (k per step). genarm, interpolate (w ≠ 0) and
nudging run both models at every step. ``reward`` is the guiding reward of the returned text (ARGS: the
score it was chosen with); for genarm, interpolate and nudging it is ``reward_fn`` of the final text when
one is given — reporting only, not counted in the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignkit.errors import ConfigError
from alignkit.generation import eos_and_pad, prompt_ids, seeded
from alignkit.generation.decoding import (
    Decoded,
    check_sampling,
    common_vocab,
    decode_loop,
    draw,
    sample_product,
    sampling_logprobs,
    step_kl,
)
from alignkit.inference.base import InferenceOutput, InferenceSettings, register


@dataclass
class ArgsOptions:
    w: float = 1.0  # reward weight
    topk: int = 10  # candidate tokens per step (the base model's most likely)
    greedy: bool = True  # false: sample ∝ exp(score / temperature) over the candidates


@dataclass
class GenarmOptions:
    beta: float = 1.0  # q ∝ π · π_r^(1/β); inf: π alone


@dataclass
class InterpolateOptions:
    w: float = 0.5  # weight of the tuned model (--helper): 0 = base, 1 = tuned, > 1 extrapolates


@dataclass
class NudgingOptions:
    gamma: float = 0.4  # nudge when the base model's top-1 probability is below this


def arm_objective(beta_r: float = 0.1) -> list[dict]:
    """The trainer ``objective`` that trains a GenARM autoregressive reward model π_r from pairs.

    GenARM's loss is ``−logσ(β_r (log π_r(y_w|x) − log π_r(y_l|x)))`` on summed (not length-normalised)
    log-probs, with no reference model. That is exactly ``cpo`` with ``sft_weight = 0``
    (`alignkit.objectives.pairwise.cpo`: ``−logσ(β(s_w − s_l)) + sft_weight · NLL``), so no new
    objective is needed: ``train({"model": ..., "data": pairs, "objective": arm_objective(0.1), ...})``.
    """
    if not beta_r > 0:
        raise ConfigError(f"beta_r must be > 0, got {beta_r}")
    return [{"name": "cpo", "beta": float(beta_r), "sft_weight": 0.0}]


def _run_chunks(models, tokenizer, prompts, settings: InferenceSettings, make_chooser):
    """Decode ``prompts`` in chunks of ``settings.batch_size`` with `decode_loop`, chunk ``i`` seeded with
    ``settings.seed + start`` in a forked RNG; yields ``(start, Decoded, chooser)``."""
    check_sampling(settings.temperature, settings.top_p, settings.max_new_tokens)
    eos, pad = eos_and_pad(models[0], tokenizer)
    device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        for start in range(0, len(prompts), settings.batch_size):
            rows = [prompt_ids(tokenizer, p, settings.chat_template, settings.chat_template_kwargs) for p in prompts[start:start + settings.batch_size]]
            chooser = make_chooser(start, rows)
            with torch.no_grad(), seeded(device, settings.seed + start):
                dec = decode_loop(models, rows, chooser, settings.max_new_tokens, eos, pad)
            yield start, dec, chooser
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _output(tokenizer, prompt, dec: Decoded, i: int, reward=None, kl=None, calls: int = 0, extra=None):
    return InferenceOutput(prompt=prompt, text=tokenizer.decode(dec.token_ids[i], skip_special_tokens=True),
                           token_ids=dec.token_ids[i], finished=dec.finished[i], reward=reward,
                           calls=dec.calls[i] + calls, tokens=dec.tokens[i], kl=kl, extra=dict(extra or {}))


def scalar_rewards(values, n: int) -> list[float]:
    values = list(values)
    if len(values) != n or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ConfigError(f"the reward function must return {n} finite scalar rewards (one per text), got {values[:8]}")
    return [float(v) for v in values]


def _final_rewards(reward_fn, prompts, texts, rows) -> list[float | None]:
    if reward_fn is None:
        return [None] * len(texts)
    return scalar_rewards(reward_fn(prompts, texts, rows), len(texts))


class ArgsChooser:
    """One ARGS step for every active row: score the base model's top-k tokens with the reward of the
    decoded prefix, then take the best (greedy) or sample ∝ exp(score / T); accumulates each row's
    reward calls, the chosen candidate's reward and ``Σ_t KL(q_t ‖ p_t)``."""

    def __init__(self, options: ArgsOptions, settings: InferenceSettings, tokenizer, prompts, rows, reward_fn):
        self.o, self.s, self.tokenizer, self.reward_fn = options, settings, tokenizer, reward_fn
        self.prompts, self.rows = prompts, rows
        self.reward_calls = [0] * len(prompts)
        self.reward = [0.0] * len(prompts)
        self.kl = [0.0] * len(prompts)

    def __call__(self, logits, active, prefixes):
        (lg,) = common_vocab(logits, self.tokenizer)
        values, cand = F.log_softmax(lg, -1).topk(min(self.o.topk, lg.shape[-1]), dim=-1)  # [N, k]
        k, live = cand.shape[1], torch.nonzero(active).flatten().tolist()
        texts = [self.tokenizer.decode(prefixes[i] + [c], skip_special_tokens=True) for i in live for c in cand[i].tolist()]
        got = self.reward_fn([self.prompts[i] for i in live for _ in range(k)], texts,
                             [self.rows[i] for i in live for _ in range(k)])
        r = torch.zeros_like(values)
        r[live] = torch.tensor(scalar_rewards(got, len(texts)), dtype=r.dtype, device=r.device).view(len(live), k)
        score = values + self.o.w * r
        if self.o.greedy:
            j = score.argmax(-1)
        else:
            logq = F.log_softmax(score / self.s.temperature, -1)
            j = draw(logq, greedy=False)
            logp = F.log_softmax(lg / self.s.temperature, -1).gather(-1, cand)
            kl = step_kl(logq, logp)
        for i in live:
            self.reward_calls[i] += k
            self.reward[i] = float(r[i, j[i]])
            if not self.o.greedy:
                self.kl[i] += float(kl[i])
        return cand.gather(-1, j[:, None])[:, 0]


@register("args", ArgsOptions, needs_reward=True,
          summary="reward-guided decoding: per step, argmax/sample over top-k of log π(t) + w·r(x, y<t ⊕ t)")
def args(model, tokenizer, prompts, rows, settings, options: ArgsOptions, reward_fn=None, helper=None):
    """ARGS (module docstring): one reward call per candidate per step; deterministic when ``greedy``."""
    if options.topk < 1 or not math.isfinite(options.w):
        raise ConfigError(f"args needs topk >= 1 and a finite w, got topk={options.topk}, w={options.w}")
    if not options.greedy and settings.temperature == 0:
        raise ConfigError("args with greedy=false samples ∝ exp(score / temperature): set temperature > 0 "
                         "(or greedy=true)")
    b = settings.batch_size
    out = []
    for start, dec, ch in _run_chunks([model], tokenizer, prompts, settings, lambda start, _: ArgsChooser(
            options, settings, tokenizer, prompts[start:start + b], rows[start:start + b], reward_fn)):
        for i in range(len(dec.token_ids)):
            out.append(_output(tokenizer, prompts[start + i], dec, i, ch.reward[i],
                               None if options.greedy else ch.kl[i], ch.reward_calls[i]))
    return out


def _product_outputs(models, exponents, tokenizer, prompts, rows, settings, reward_fn, extra=None):
    """`sample_product` of ``models`` with ``exponents``, one sample per prompt in chunks of
    ``settings.batch_size`` (chunk seeded ``settings.seed + start``), as `InferenceOutput` s; ``extra(gen, i)``
    gives a row's method extras."""
    out, b, s = [], settings.batch_size, settings
    for start in range(0, len(prompts), b):
        chunk = prompts[start:start + b]
        gen = sample_product(models, exponents, tokenizer, chunk, k=1, max_new_tokens=s.max_new_tokens,
                             temperature=s.temperature, top_p=s.top_p, seed=s.seed + start,
                             chat_template=s.chat_template, return_logps=True,
                             chat_template_kwargs=s.chat_template_kwargs)
        texts = [t[0] for t in gen.texts]
        rewards = _final_rewards(reward_fn, chunk, texts, rows[start:start + b])
        for i, prompt in enumerate(chunk):
            out.append(InferenceOutput(prompt=prompt, text=texts[i], token_ids=gen.token_ids[i][0],
                                       finished=gen.finished[i][0], reward=rewards[i], calls=gen.calls[i][0],
                                       tokens=gen.tokens[i][0], kl=None if gen.kl is None else float(gen.kl[i, 0]),
                                       extra=extra(gen, i) if extra else {}))
    return out


@register("genarm", GenarmOptions, needs_helper=True,
          summary="GenARM: sample from π·π_r^(1/β) with an autoregressive reward model π_r (--helper)")
def genarm(model, tokenizer, prompts, rows, settings, options: GenarmOptions, reward_fn=None, helper=None):
    """GenARM (module docstring): `sample_product` of the base model and the ARM with exponents (1, 1/β)."""
    if not options.beta > 0:
        raise ConfigError(f"genarm needs beta > 0 (inf: the base model alone), got {options.beta}")
    inv = 1.0 / options.beta
    models, exponents = ([model, helper], [1.0, inv]) if inv > 0 else ([model], [1.0])
    return _product_outputs(models, exponents, tokenizer, prompts, rows, settings, reward_fn,
                            lambda gen, i: {"arm_logp": float(gen.logps[i, 0, -1]) if inv > 0 else None})


@register("interpolate", InterpolateOptions, needs_helper=True,
          summary="model interpolation (DeRa): sample from π_base^(1−w)·π_tuned^w, the tuned model as --helper")
def interpolate(model, tokenizer, prompts, rows, settings, options: InterpolateOptions, reward_fn=None, helper=None):
    """Model-interpolation decoding (module docstring): `sample_product` of the base model and the tuned
    ``helper`` with exponents (1 − w, w); w = 0 runs the base model alone."""
    w = options.w
    if not (isinstance(w, (int, float)) and math.isfinite(w)):
        raise ConfigError(f"interpolate needs a finite weight w (0: the base model, 1: the tuned --helper), got {w!r}")
    models, exponents = ([model, helper], [1.0 - w, float(w)]) if w != 0 else ([model], [1.0])
    return _product_outputs(models, exponents, tokenizer, prompts, rows, settings, reward_fn)


class NudgeChooser:
    """One nudging step: the base model's token, or the helper's where the base's top-1 probability < γ;
    counts each row's nudged and sampled tokens and accumulates ``Σ_t KL(q_t ‖ p_t)``."""

    def __init__(self, gamma: float, settings: InferenceSettings, tokenizer, n: int):
        self.gamma, self.s, self.tokenizer = gamma, settings, tokenizer
        self.nudged, self.steps, self.kl = [0] * n, [0] * n, [0.0] * n

    def __call__(self, logits, active, prefixes):
        base, help_ = common_vocab(logits, self.tokenizer)
        t, greedy = self.s.temperature, self.s.temperature == 0
        lp_base = F.log_softmax(base, -1)
        nudge = lp_base.max(-1).values.exp() < self.gamma
        logq = torch.where(nudge[:, None], sampling_logprobs(F.log_softmax(help_, -1), t, self.s.top_p),
                           sampling_logprobs(lp_base, t, self.s.top_p))
        chosen = draw(logq, greedy)
        kl = None if greedy else step_kl(logq, F.log_softmax(base / t, -1))
        for i in torch.nonzero(active).flatten().tolist():
            self.nudged[i] += int(nudge[i])
            self.steps[i] += 1
            if kl is not None:
                self.kl[i] += float(kl[i])
        return chosen


@register("nudging", NudgingOptions, needs_helper=True,
          summary="nudging: a small aligned model (--helper) supplies the token where π's top-1 prob < gamma")
def nudging(model, tokenizer, prompts, rows, settings, options: NudgingOptions, reward_fn=None, helper=None):
    """Nudging (module docstring): both models step together; one helper token per nudge."""
    if not options.gamma >= 0:
        raise ConfigError(f"nudging needs gamma >= 0 (0: the base model; > 1: the helper), got {options.gamma}")
    out = []
    for start, dec, ch in _run_chunks([model, helper], tokenizer, prompts, settings,
                                      lambda start, r: NudgeChooser(options.gamma, settings, tokenizer, len(r))):
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in dec.token_ids]
        rewards = _final_rewards(reward_fn, prompts[start:start + len(texts)], texts,
                                 rows[start:start + len(texts)])
        for i in range(len(texts)):
            extra = {"nudged": ch.nudged[i] / ch.steps[i], "nudged_tokens": ch.nudged[i]}
            out.append(_output(tokenizer, prompts[start + i], dec, i, rewards[i],
                               None if settings.temperature == 0 else ch.kl[i], extra=extra))
    return out
