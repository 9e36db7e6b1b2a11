"""Pointwise reward functions for online RL and best-of-N: one callable interface over samples.

A reward function is ``fn(prompts, completions, rows) -> list[float]`` (or a list of vectors): the
prompts, one completion per entry, and each entry's source row (a dict of the prompt file's fields,
e.g. ``answer``). Online training wraps it in the group protocol (`alignkit.rewards.protocol.Pointwise`).
`build_reward` makes one from a spec, as written in a config::

    reward: rule:exact_answer            # completion's first number (or the one after ####) == row["answer"]
    reward: rule:regex:^ \\d+\\.$          # 1 if the completion matches the pattern (re.search), else 0
    reward: rule:length:100              # −|tokens − 100| / 100 (a length penalty), words if no tokenizer
    reward: rm:runs/rm/final             # a trained reward model (alignkit or plain transformers), or an
                                         # ensemble folder (members' mean)
    reward: ensemble(rm:runs/ens, aggregate=mean_minus_std, lam=1)   # mean | min | mean − λ·std of members
    reward: heads(rm:runs/mo_rm, weights=[1.0, 0.5])   # a multi-output head's outputs, weighted
    reward: alignkit.worlds.reviews:reward   # any Python function f(completion) or f(prompt, completion, row)
    reward: [{reward: rule:exact_answer, weight: 1.0}, {reward: rule:regex:\\.$, weight: 0.1}]

Rewards that compare a prompt's samples (``winrate:``, ``mixture:``) are not pointwise: they are built by
`alignkit.rewards.build.build_group_reward`, for online training and rounds.

Rule and Python rewards run in-process; the penalty for samples cut at ``max_new_tokens`` (no EOS) is
applied by the caller (`penalize_unfinished`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.errors import ConfigError, DataError, ModelError
from alignkit.executor.reward_model import load_reward_model
from alignkit.models.load import load_tokenizer
from alignkit.rewards.aggregate import AGGREGATE_MODES
from alignkit.rewards.rm_scores import expand_members, reward_info, score_records
from alignkit.rewards.spec import Call, parse_call
from alignkit.user_code import load_function

RewardFn = Callable[[list, list[str], list[dict]], list[float]]
MODEL_WRAPPERS = ("ensemble", "heads")  # reward-model specs with options (rewards/spec.py)
GROUP_WRAPPERS = ("lsc", "calibrated")  # transforms against reference samples (rewards/calibration.py)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(completion: str) -> str | None:
    """The number after ``####`` if present (GSM8K style), else the first number; None if there is none."""
    tail = completion.split("####", 1)[1] if "####" in completion else completion
    m = _NUMBER.search(tail)
    return m.group().replace(",", "").rstrip(",") if m else None


def exact_answer(prompts, completions, rows) -> list[float]:
    out = []
    for i, (c, row) in enumerate(zip(completions, rows)):
        if "answer" not in row:
            raise DataError(f"reward rule:exact_answer needs an 'answer' field; prompt row {i} has {sorted(row)}")
        got, want = extract_answer(c), str(row["answer"]).strip()
        out.append(1.0 if got is not None and _same_number(got, want) else 0.0)
    return out


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def regex_reward(pattern: str) -> RewardFn:
    compiled = re.compile(pattern)
    return lambda prompts, completions, rows: [1.0 if compiled.search(c) else 0.0 for c in completions]


def length_reward(target: int, tokenizer=None) -> RewardFn:
    def fn(prompts, completions, rows):
        n = [len(tokenizer.encode(c, add_special_tokens=False)) if tokenizer else len(c.split()) for c in completions]
        return [-abs(x - target) / max(target, 1) for x in n]
    return fn


def python_reward(path: str) -> RewardFn:
    """``module:function``; the function takes ``(completion)``, ``(prompt, completion)``,
    ``(prompt, completion, row)`` or the batched ``(prompts, completions, rows)`` (named so)."""
    fn = load_function(path, "reward")  # the current directory first; standard-library modules refused
    params = list(inspect.signature(fn).parameters)
    if params[:1] == ["prompts"]:
        return lambda p, c, r: [float(x) for x in fn(p, c, r)]
    arity = len(params)
    if arity == 1:
        return lambda p, c, r: [float(fn(y)) for y in c]
    if arity == 2:
        return lambda p, c, r: [float(fn(x, y)) for x, y in zip(p, c)]
    return lambda p, c, r: [float(fn(x, y, z)) for x, y, z in zip(p, c, r)]


def completion_records(prompts, completions) -> list:
    """One single-response `PreferenceRecord` per (prompt, completion), for scoring with a reward model; an
    empty completion (EOS first) is kept and scored too."""

    return [PreferenceRecord(prompt=p, responses=[c], ranks=[0], sampled=True) for p, c in zip(prompts, completions)]


def model_reward(path: str | list[str], device=None, batch_size: int = 32, aggregate: str = "mean",
                 lam: float = 1.0, weights: list[float] | None = None) -> RewardFn:
    """Trained reward model(s) scoring ``prompt + completion`` at the last token.

    ``path``: one model, an ensemble folder (``ensemble.json``, from ``ensemble=N``) or a list of either; the
    members' scores are combined by `alignkit.rewards.aggregate.aggregate` (``mean``, ``min``,
    ``mean_minus_std`` with ``lam``). ``weights``: a multi-output head's outputs summed with these weights
    (multi-objective rewards); a multi-output head without them is an error naming its outputs."""
    paths = expand_members([path] if isinstance(path, str) else list(path))
    models = [load_reward_model(p) for p in paths]
    tokenizer, infos = load_tokenizer(paths[0]), [reward_info(p) for p in paths]
    if device is not None:
        for m in models:
            m.to(device)

    def fn(prompts, completions, rows):
        records = completion_records(prompts, completions)
        scores, _ = score_records(models, tokenizer, records, batch_size, aggregate=aggregate, lam=lam,
                                  progress=False, infos=infos)
        return [weighted_heads(s[0], weights, paths[0]) for s in scores]
    return fn


def weighted_heads(score: float | list[float], weights: list[float] | None, path: str) -> float:
    """A scalar reward from one response's score: the score itself, or ``Σ_i w_i · s_i`` of a vector head."""
    if not isinstance(score, list):
        if weights is not None:
            raise ConfigError(f"reward heads(...): {path} has one output; weights are for multi-output heads")
        return float(score)
    if weights is None:
        raise ModelError(f"reward model {path} has {len(score)} outputs per response; a reward needs one: "
                         f"weight them, reward=\"heads(rm:{path}, weights=[...])\" with {len(score)} weights")
    if len(weights) != len(score):
        raise ConfigError(f"reward heads(...): {len(weights)} weights for {path}'s {len(score)} outputs")
    return float(sum(w * x for w, x in zip(weights, score)))


def wrapped_model_reward(call: Call, device=None) -> RewardFn:
    """``ensemble(rm:A, [rm:B, ...], aggregate=..., lam=...)`` or ``heads(rm:PATH, weights=[...])``."""
    if call.name == "ensemble":
        paths = [_rm_path(a, call.name) for a in call.args]
        o = call.options({"aggregate": "mean", "lam": 1.0})
        if o["aggregate"] not in AGGREGATE_MODES:
            raise ConfigError(f"reward ensemble(...): aggregate must be one of {AGGREGATE_MODES}, got {o['aggregate']!r}")
        return model_reward(paths, device, aggregate=o["aggregate"], lam=float(o["lam"]))
    o = call.options({"weights": None})
    if not isinstance(o["weights"], list) or not all(isinstance(w, (int, float)) for w in o["weights"]):
        raise ConfigError(f"reward heads(...) needs weights=[w1, w2, ...] (numbers), got {o['weights']!r}")
    return model_reward(_rm_path(call.one_arg(), call.name), device, weights=[float(w) for w in o["weights"]])


def _rm_path(spec: str, wrapper: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "rm" and rest:
        return rest
    if ":" not in spec:
        return spec  # a bare path
    raise ConfigError(f"reward {wrapper}(...) takes reward models (rm:PATH), got {spec!r}")


class WeightedReward:
    """``Σ_i w_i · r_i`` over a list of pointwise rewards."""

    def __init__(self, parts: list[tuple[RewardFn, float]]):
        self.parts = parts

    def __call__(self, prompts, completions, rows) -> list[float]:
        values = [fn(prompts, completions, rows) for fn, _ in self.parts]
        return [sum(w * v for (_, w), v in zip(self.parts, vals)) for vals in zip(*values)]


def build_reward(spec: Any, tokenizer=None, device=None) -> RewardFn:
    """A reward function from a config spec (see the module docstring)."""
    if isinstance(spec, (list, tuple)):
        return WeightedReward([(build_reward(p["reward"] if isinstance(p, dict) else p, tokenizer, device),
                                float(p.get("weight", 1.0)) if isinstance(p, dict) else 1.0) for p in spec])
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"reward must be a spec string, a list of {{reward, weight}} or a callable, got {spec!r}")
    if (call := parse_call(spec, MODEL_WRAPPERS)) is not None:
        return wrapped_model_reward(call, device)
    if parse_call(spec, GROUP_WRAPPERS) is not None:
        raise ConfigError(f"reward {spec!r} samples from the reference model to calibrate: it is a group reward, "
                          "for online training (alignkit.rewards.build_group_reward) and generate --method bon")
    kind, _, rest = spec.partition(":")
    if kind == "rule":
        name, _, arg = rest.partition(":")
        if name == "exact_answer":
            return exact_answer
        if name == "regex":
            return regex_reward(arg)
        if name == "length":
            return length_reward(int(arg or 100), tokenizer)
        raise ConfigError(f"unknown rule {name!r}; rules: exact_answer, regex:PATTERN, length:N")
    if kind == "rm":
        return model_reward(rest, device)
    if kind in ("winrate", "mixture"):
        raise ConfigError(f"reward {spec!r} compares each prompt's samples: it is a group reward, for online training "
                         "and rounds (alignkit.rewards.build_group_reward), not a pointwise one")
    if kind == "python":
        return python_reward(rest)
    if ":" in spec:
        return python_reward(spec)
    return model_reward(spec, device)  # a bare path: a reward model


def penalize_unfinished(rewards: Sequence[float], finished: Sequence[bool], penalty: float | None) -> list[float]:
    """Samples cut at ``max_new_tokens`` get ``penalty`` instead of their reward (None: unchanged)."""
    if penalty is None:
        return list(rewards)
    return [r if f else float(penalty) for r, f in zip(rewards, finished)]
