"""The best-of-N family: sample N completions of a prompt from π (one shared prefill,
`alignkit.generation.prefill`), score them with the reward, and return one.

* ``bon`` — the argmax reward (ties: the first sampled).
* ``soft_bon`` — index i with probability ``w_i = exp(r_i/τ) / Σ_j exp(r_j/τ)`` (τ → 0: ``bon``;
  τ → ∞: uniform over the N, i.e. a plain sample of π).
* ``calibrated_bon`` — InfAlign-style: the reward is replaced by its mid-rank quantile among π's own
  samples for the prompt, ``q(y) = (#{c: r_c < r(y)} + ½ #{c: r_c = r(y)}) / M`` over M calibration
  samples (``m`` extra ones, or the N candidates when ``m = 0``), then index i is drawn with probability
  ∝ ``exp(t·q_i)`` (``t = inf``: the argmax of q, ties by raw reward — the same choice as ``bon``). For a
  tie-free reward, q of a fresh sample of π is uniform on ``{0, 1/M, ..., 1}`` (so uniform on [0,1] as
  M grows): calibration makes the tilt mean the same thing for every prompt, whatever its reward scale.
* ``rejection`` — draw ``batch`` samples at a time until one has reward ≥ ``threshold`` (the first such
  sample is returned: an exact draw of π(· | r ≥ threshold)) or ``budget`` samples are spent (then the
  best seen is returned, flagged ``accepted: false``).

KL estimates (nats, per prompt; `InferenceOutput.kl`):

* ``bon`` — `bon_kl`. Any rule that returns one of N i.i.d. samples of π has KL ≤ log N − (N−1)/N
  (`bon_kl_bound`; Beirami et al. 2024), with equality for BoN under a continuous (tie-free) reward. In
  quantile space u = F(r), BoN's output has density N·u^(N−1) against π's uniform; a reward *atom* of mass
  p over [F⁻, F⁻ + p] merges that interval into one point, which lowers the KL to the atom's term
  ``q log(q/p)`` with ``q = (F⁻ + p)^N − F⁻^N``. `bon_kl` applies this with the masses read from the N
  observed rewards: a value seen c ≥ 2 times is an atom of mass c/N; a value seen once is treated as
  continuous (its cell contributes ``∫ N u^(N−1) log(N u^(N−1)) du``). So N distinct rewards give exactly
  log N − (N−1)/N, N equal rewards give 0 (a constant reward changes nothing), and the estimate never
  exceeds the bound (merging cells only lowers a KL). It is the exact KL of BoN when the reward's
  distribution under π has atoms at the tied values with those masses and is continuous elsewhere.
* ``soft_bon`` / finite-t ``calibrated_bon`` — `selection_kl`: ``log N − H(w)``, the KL of the selection
  weights w to the uniform choice, clipped at `bon_kl_bound`. The pair (N samples, chosen index) has
  expected KL ``E[log N − H(w)]`` to (N samples, uniform index), whose marginal is π; by data processing
  this bounds the output's KL, and each prompt's value is an unbiased one-draw estimate of that upper bound.
  It is 0 for τ → ∞ and → log N − (N−1)/N for τ → 0 with distinct rewards.
* ``rejection`` — accepted: ``−log p̂`` with ``p̂`` = the fraction of the prompt's samples that met the
  threshold (the KL of π(· | A) to π is −log π(A)); not accepted: `bon_kl` of all its rewards.

Cost: ``calls`` = the sampler's forward passes + one per scored candidate; ``tokens`` = the sampler's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignkit.errors import ConfigError
from alignkit.generation.prefill import sample_shared
from alignkit.inference.base import InferenceOutput, register
from alignkit.rewards.calibration import midrank_quantiles
from alignkit.rewards.functions import penalize_unfinished


def bon_kl_bound(n: int) -> float:
    """``log N − (N−1)/N``: the KL of best-of-N to π under a continuous reward, and an upper bound otherwise."""
    return math.log(n) - (n - 1) / n


def _continuous_part(a: float, b: float, n: int) -> float:
    """``∫_a^b h log h du`` with ``h(u) = N u^(N−1)``: ``G(b) − G(a)``, ``G(u) = u^N log N + (N−1)(u^N log u − u^N/N)``."""
    def g(u: float) -> float:
        return 0.0 if u == 0 else u**n * math.log(n) + (n - 1) * (u**n * math.log(u) - u**n / n)
    return g(b) - g(a)


def bon_kl(rewards) -> float:
    """Estimated KL(best-of-N ‖ π) in nats from the N rewards of one prompt's candidates (module docstring):
    tied values are atoms of their empirical mass, values seen once are continuous."""
    r = np.asarray(rewards, dtype=float)
    n = len(r)
    if n == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"bon_kl needs N >= 1 finite rewards, got {list(r)}")
    _, counts = np.unique(r, return_counts=True)
    kl, below = 0.0, 0
    for c in counts:
        lo, hi = below / n, (below + c) / n
        if c == 1:
            kl += _continuous_part(lo, hi, n)
        else:
            q = hi**n - lo**n
            kl += q * math.log(q / (hi - lo))
        below += c
    return min(max(kl, 0.0), bon_kl_bound(n))


def bon_index(rewards) -> int:
    """Index of the largest reward; the first one on ties."""
    return int(np.argmax(np.asarray(rewards, dtype=float)))


def softmax_weights(scores, temperature: float) -> np.ndarray:
    """``w_i = exp(s_i/T) / Σ_j exp(s_j/T)`` in float64 (stable: the max is subtracted first)."""
    if not temperature > 0:
        raise ConfigError(f"the selection temperature must be > 0, got {temperature}")
    z = np.asarray(scores, dtype=float) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def selection_kl(weights) -> float:
    """``log N − H(w)`` clipped to [0, log N − (N−1)/N]: the KL estimate of a weighted choice among N samples."""
    w = np.asarray(weights, dtype=float)
    entropy = -float(np.sum(w[w > 0] * np.log(w[w > 0])))
    return min(max(math.log(len(w)) - entropy, 0.0), bon_kl_bound(len(w)))


@dataclass
class BoNOptions:
    n: int = 16  # candidates per prompt
    unfinished_penalty: float | None = None  # reward of a candidate cut at max_new_tokens (None: its own)


@dataclass
class SoftBoNOptions(BoNOptions):
    tau: float = 1.0  # selection temperature, in reward units


@dataclass
class CalibratedBoNOptions(BoNOptions):
    m: int = 0  # extra calibration samples per prompt (0: calibrate on the N candidates themselves)
    t: float = math.inf  # exponential tilt on the quantile; inf: argmax


@dataclass
class RejectionOptions:
    threshold: float = 0.0  # accept the first sample with reward >= threshold
    budget: int = 64  # most samples per prompt
    batch: int = 8  # samples drawn per round
    unfinished_penalty: float | None = None


def _check(opts, names=("n",)) -> None:
    for name in names:
        if getattr(opts, name) < 1:
            raise ConfigError(f"option {name} must be >= 1, got {getattr(opts, name)}")


def _score(reward_fn, prompts, rows, texts, finished, penalty) -> list[list[float]]:
    """Rewards of every candidate, one reward call for all: ``out[b][j]``."""
    flat_p = [p for p, ts in zip(prompts, texts) for _ in ts]
    flat_r = [r for r, ts in zip(rows, texts) for _ in ts]
    flat_t = [t for ts in texts for t in ts]
    values = reward_fn(flat_p, flat_t, flat_r)
    if len(values) != len(flat_t):
        raise ConfigError(f"the reward returned {len(values)} values for {len(flat_t)} completions")
    if any(isinstance(v, (list, tuple)) for v in values):
        raise ConfigError("best-of-N needs a scalar reward; this one returns vectors (combine them with weights)")
    values = penalize_unfinished([float(v) for v in values], [f for fs in finished for f in fs], penalty)
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("the reward returned a non-finite value (nan or inf)")
    out, i = [], 0
    for ts in texts:
        out.append(values[i:i + len(ts)])
        i += len(ts)
    return out


def _candidates(model, tokenizer, prompts, rows, settings, n, reward_fn, penalty, seed=None):
    s = settings
    samples = sample_shared(model, tokenizer, prompts, n, s.max_new_tokens, s.temperature, s.top_p,
                            s.seed if seed is None else seed, s.batch_size, s.chat_template,
                            s.chat_template_kwargs)
    g = samples.generation
    return samples, _score(reward_fn, prompts, rows, g.texts, g.finished, penalty)


def _output(samples, b, i, rewards, kl, n_scored, extra=None, keep=None) -> InferenceOutput:
    g = samples.generation
    keep = keep if keep is not None else len(rewards)
    return InferenceOutput(prompt=g.prompts[b], text=g.texts[b][i], token_ids=g.token_ids[b][i],
                           finished=g.finished[b][i], reward=rewards[i], candidates=g.texts[b][:keep],
                           rewards=list(rewards[:keep]), calls=samples.calls[b] + n_scored,
                           tokens=samples.tokens[b], kl=kl, extra=dict(extra or {}))


@register("bon", BoNOptions, needs_reward=True, summary="best-of-N: sample N, return the highest-reward one")
def best_of_n(model, tokenizer, prompts, rows, settings, opts, reward_fn=None, helper=None):
    """Best-of-N: sample N from π, return the argmax reward (ties: first)."""
    _check(opts)
    samples, rewards = _candidates(model, tokenizer, prompts, rows, settings, opts.n, reward_fn,
                                   opts.unfinished_penalty)
    return [_output(samples, b, bon_index(r), r, bon_kl(r), len(r)) for b, r in enumerate(rewards)]


@register("soft_bon", SoftBoNOptions, needs_reward=True,
          summary="soft best-of-N: sample N, return index i with prob ∝ exp(r_i/tau)")
def soft_best_of_n(model, tokenizer, prompts, rows, settings, opts, reward_fn=None, helper=None):
    """Soft best-of-N: choose among N samples with probabilities softmax(r/τ) (seeded)."""
    _check(opts)
    if not opts.tau > 0:
        raise ConfigError(f"option tau must be > 0 (tau -> 0 is bon), got {opts.tau}")
    samples, rewards = _candidates(model, tokenizer, prompts, rows, settings, opts.n, reward_fn,
                                   opts.unfinished_penalty)
    rng = np.random.default_rng(settings.seed)
    out = []
    for b, r in enumerate(rewards):
        w = softmax_weights(r, opts.tau)
        i = int(rng.choice(len(w), p=w))
        out.append(_output(samples, b, i, r, selection_kl(w), len(r), {"probs": w.tolist()}))
    return out


@register("calibrated_bon", CalibratedBoNOptions, needs_reward=True,
          summary="InfAlign-style calibrated BoN: reward -> its quantile under π, then exp(t·q) selection")
def calibrated_best_of_n(model, tokenizer, prompts, rows, settings, opts, reward_fn=None, helper=None):
    """Calibrated best-of-N: quantile of the reward among π's own samples, then an exponential tilt."""
    _check(opts)
    if opts.m < 0 or not opts.t > 0:
        raise ConfigError(f"need m >= 0 and t > 0 (t = inf: argmax), got m={opts.m}, t={opts.t}")
    samples, rewards = _candidates(model, tokenizer, prompts, rows, settings, opts.n + opts.m, reward_fn,
                                   opts.unfinished_penalty)
    rng = np.random.default_rng(settings.seed)
    out = []
    for b, r in enumerate(rewards):
        cand = r[:opts.n]
        q = midrank_quantiles(cand, r[opts.n:] if opts.m else cand)
        if math.isinf(opts.t):
            i = max(range(opts.n), key=lambda j: (q[j], cand[j], -j))  # argmax q, ties by raw reward, then first
            kl, probs = bon_kl(cand), None
        else:
            w = softmax_weights(q, 1 / opts.t)
            i, kl, probs = int(rng.choice(opts.n, p=w)), selection_kl(w), w.tolist()
        extra = {"quantiles": q.tolist(), **({"probs": probs} if probs is not None else {})}
        out.append(_output(samples, b, i, r, kl, len(r), extra, keep=opts.n))
    return out


@register("rejection", RejectionOptions, needs_reward=True,
          summary="rejection sampling: sample until reward >= threshold or the budget is spent")
def rejection(model, tokenizer, prompts, rows, settings, opts, reward_fn=None, helper=None):
    """Rejection sampling: batches of samples until one meets the threshold (or the budget runs out)."""
    _check(opts, ("budget", "batch"))
    state = [{"texts": [], "ids": [], "finished": [], "rewards": [], "calls": 0, "tokens": 0, "pick": None}
             for _ in prompts]
    active, used, rnd = list(range(len(prompts))), 0, 0
    while active and used < opts.budget:
        size = min(opts.batch, opts.budget - used)
        samples, rewards = _candidates(model, tokenizer, [prompts[b] for b in active], [rows[b] for b in active],
                                       settings, size, reward_fn, opts.unfinished_penalty,
                                       seed=settings.seed + 1_000_003 * rnd)
        g = samples.generation
        for k, b in enumerate(active):
            st = state[b]
            hit = next((j for j, v in enumerate(rewards[k]) if v >= opts.threshold), None)
            if hit is not None:
                st["pick"] = len(st["rewards"]) + hit
            st["texts"] += g.texts[k]
            st["ids"] += g.token_ids[k]
            st["finished"] += g.finished[k]
            st["rewards"] += rewards[k]
            st["calls"] += samples.calls[k] + size
            st["tokens"] += samples.tokens[k]
        used, rnd = used + size, rnd + 1
        active = [b for b in active if state[b]["pick"] is None]
    return [_rejection_output(p, st, opts.threshold) for p, st in zip(prompts, state)]


def _rejection_output(prompt, st, threshold) -> InferenceOutput:
    r = st["rewards"]
    accepted = st["pick"] is not None
    if accepted:
        i = st["pick"]
        kl = math.log(len(r) / sum(v >= threshold for v in r))
    else:
        i, kl = bon_index(r), bon_kl(r)
    return InferenceOutput(prompt=prompt, text=st["texts"][i], token_ids=st["ids"][i], finished=st["finished"][i],
                           reward=r[i], candidates=st["texts"], rewards=list(r), calls=st["calls"],
                           tokens=st["tokens"], kl=kl, extra={"accepted": accepted, "samples": len(r)})
