"""Rewards transformed against the reference policy's own samples of the same prompt (RL and best-of-N).

    reward: "lsc(rm:runs/rm, samples=8, quantile=0.5)"
    reward: "calibrated(rm:runs/rm, samples=16, tilt=null)"

* ``lsc`` — log-sigmoid centring, ``r ↦ logσ(r − r_ref(x))``, with ``r_ref(x)`` the ``quantile`` of the
  rewards of ``samples`` reference completions of prompt ``x`` (Wang et al. 2024, "Transforming and Combining
  Rewards for Aligning Large Language Models", https://arxiv.org/abs/2402.00742: the log-probability under
  Bradley–Terry that the response beats a reference response; the paper centres on a quantile of the
  reference policy's rewards per prompt).
* ``calibrated`` — InfAlign's calibrated reward (Balashankar et al. 2024, "InfAlign: Inference-aware language
  model alignment", https://arxiv.org/abs/2412.19792): ``C(x, y) = F̂_x(r(x, y))``, the reward's mid-rank
  quantile among the reference samples' rewards, so a fresh reference sample's C is uniform on [0, 1] for
  every prompt whatever its reward scale; with ``tilt=t`` the exponential transform ``exp(t·C)`` the paper
  derives for best-of-N (t > 0) and worst-of-N (t < 0) inference.

The reference samples of a prompt are drawn once, in one batch with the other prompts first seen in the same
step (seeded by those prompts' text, so a rerun draws the same samples), and their rewards cached for the run. In online training the reference is the run's reference model; in
``alignkit generate --method bon|soft_bon|...`` it is the model being sampled (best-of-N aligns π against
itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from alignkit.errors import ConfigError
from alignkit.generation import generate
from alignkit.rewards.opponents import reference_model, stable_seed
from alignkit.rewards.protocol import GroupReward, LiveModels, RewardOutput, flatten, regroup
from alignkit.rewards.spec import Call
from alignkit.rewards.transforms import lsc

Sampler = Callable[[list, int, int], list[list[str]]]  # (prompts, n, seed) -> n completions of each prompt


def midrank_quantiles(rewards, reference) -> np.ndarray:
    """``q(r) = (#{c: ref_c < r} + ½ #{c: ref_c = r}) / M`` for each reward: its mid-rank CDF among the M
    reference (calibration) rewards. With ``reference = rewards`` and N distinct values, q = (rank − ½)/N."""
    ref = np.sort(np.asarray(reference, dtype=float))
    if len(ref) == 0:
        raise ValueError("midrank_quantiles needs at least one reference reward")
    r = np.asarray(rewards, dtype=float)
    below = np.searchsorted(ref, r, side="left")
    upto = np.searchsorted(ref, r, side="right")
    return (below + 0.5 * (upto - below)) / len(ref)


def calibrated(rewards, reference, tilt: float | None = None) -> np.ndarray:
    """InfAlign's calibrated reward: the mid-rank quantile, then ``exp(tilt · q)`` when ``tilt`` is set."""
    q = midrank_quantiles(rewards, reference)
    return q if tilt is None else np.exp(tilt * q)


def centred(rewards, reference, quantile: float = 0.5) -> np.ndarray:
    """LSC against the ``quantile`` of the reference rewards: ``logσ(r − r_ref)``."""
    r_ref = float(np.quantile(np.asarray(reference, dtype=float), quantile))
    return lsc(torch.as_tensor(np.asarray(rewards, dtype=float)), r_ref).numpy()


OPTIONS = {"lsc": {"samples": 8, "quantile": 0.5}, "calibrated": {"samples": 16, "tilt": None}}


class ReferenceCalibrated(GroupReward):
    """A pointwise reward transformed against reference samples of each prompt (module docstring)."""

    needs_models = True

    def __init__(self, call: Call, inner: Callable[[list, list[str], list[dict]], list[float]]):
        o = call.options(OPTIONS[call.name])
        if not isinstance(o["samples"], int) or o["samples"] < 1:
            raise ConfigError(f"reward {call.name}(...): samples must be a positive integer, got {o['samples']!r}")
        if call.name == "lsc" and not 0.0 <= float(o["quantile"]) <= 1.0:
            raise ConfigError(f"reward lsc(...): quantile must be in [0, 1], got {o['quantile']!r}")
        self.name, self.inner, self.options = call.name, inner, o
        self.cache: dict[str, list[float]] = {}  # prompt (and row) -> its reference samples' rewards

    def transform(self, rewards: Sequence[float], reference: Sequence[float]) -> np.ndarray:
        if self.name == "lsc":
            return centred(rewards, reference, float(self.options["quantile"]))
        tilt = self.options["tilt"]
        return calibrated(rewards, reference, None if tilt is None else float(tilt))

    def reference_rewards(self, sample: Sampler, prompts: list, rows: list[dict]) -> list[list[float]]:
        """The rewards of ``samples`` reference completions of each prompt, drawn on first sight of it."""
        keys = [json.dumps([p, r], sort_keys=True, default=str) for p, r in zip(prompts, rows)]
        new = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if new:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            new_p, new_r = [prompts[first[k]] for k in new], [rows[first[k]] for k in new]
            n = self.options["samples"]
            texts = sample(new_p, n, stable_seed("reference", new) % (2**31))
            flat_p, flat_c, flat_r = flatten(new_p, texts, new_r)
            scores = [float(s) for s in self.inner(flat_p, flat_c, flat_r)]
            for i, k in enumerate(new):
                self.cache[k] = scores[i * n:(i + 1) * n]
        return [self.cache[k] for k in keys]

    def rewards(self, sample: Sampler, prompts, groups, rows) -> tuple[list[list[float]], dict[str, float]]:
        flat_p, flat_c, flat_r = flatten(prompts, groups, rows)
        raw = [float(s) for s in self.inner(flat_p, flat_c, flat_r)]
        refs = self.reference_rewards(sample, list(prompts), list(rows))
        out = [self.transform(r, ref).tolist() for r, ref in zip(regroup(raw, groups), refs)]
        metrics = {f"{self.name}/raw_mean": float(np.mean(raw)) if raw else 0.0,
                   f"{self.name}/reference_mean": float(np.mean([np.mean(r) for r in refs])) if refs else 0.0}
        return out, metrics

    def __call__(self, prompts, groups, rows, models: LiveModels | None = None) -> RewardOutput:
        if models is None:
            raise ConfigError(f"reward {self.name}(...) samples from the run's reference model: it is for online "
                              "training or alignkit generate --method ...")
        c = models.config
        ref = reference_model(models.reference, f"reward={self.name}(...)")
        sample = model_sampler(ref, models.tokenizer, c.max_new_tokens, c.temperature, c.top_p,
                               getattr(c, "stop", None) or [], c.chat_template, c.chat_template_kwargs)
        return RewardOutput(*self.rewards(sample, prompts, groups, rows))

    def bound(self, sample: Sampler) -> Callable[[list, list[str], list[dict]], list[float]]:
        """A pointwise reward (best-of-N and the other inference methods) against ``sample``'s completions."""
        return lambda p, c, r: [x[0] for x in self.rewards(sample, p, [[y] for y in c], r)[0]]


def model_sampler(model, tokenizer, max_new_tokens: int, temperature: float, top_p: float, stop: list[str],
                  chat_template: str = "auto", chat_template_kwargs: dict | None = None) -> Sampler:
    """``(prompts, n, seed) -> n`` completions of each prompt from ``model`` (texts end before a stop string)."""

    def sample(prompts: list, n: int, seed: int) -> list[list[str]]:
        gen = generate(model, tokenizer, prompts, k=n, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, chat_template=chat_template, stop=stop,
                       chat_template_kwargs=chat_template_kwargs)
        return gen.texts
    return sample
