"""One registry of objectives. A new method is a function plus ``@register``; the trainer never changes.

An objective is a pure function ``fn(stats: SequenceStats, **hparams) -> LossOutput``. Its
registration declares what it needs, so data is checked before any compute:

* ``needs_reference`` — reads ``stats.ref_logps``;
* ``label_kinds`` — which record labels it accepts (``ranks``, ``scores``, ``labels``);
* ``min_responses`` / ``max_responses`` — the K it works with;
* ``needs_token_logps`` — reads ``stats.token_logps``;
* ``stateful`` — takes a ``state`` dict it may update (e.g. a running mean), saved by checkpoints;
* ``merge_state`` — ``fn(before, [state after, per process], **hparams) -> state``: how the states of processes
  that each saw a share of one batch become the state one process would hold after the whole batch (the
  trainer merges after every micro-batch); without it each process keeps the state of its own share;
* ``extras`` — names of ``stats.extra`` tensors the executor must compute for it (see `EXTRAS`).

``get_objective("dpo")(stats, beta=0.1)`` calls one objective with explicit hyper-parameters;
``build_objective([{"name": "dpo", "weight": 1.0, "beta": 0.1}, {"name": "sft", "weight": 0.1}])``
binds hyper-parameters and sums weighted losses, prefixing metrics with each name.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.stats import LossOutput, SequenceStats

LossFn = Callable[..., LossOutput]

# Extra statistics the executor knows how to compute (executor/logprobs.py and engine/trainer.py):
EXTRAS = {
    "kl_logratios": "[B] ρ of mismatched (prompt_i, response_{i+1}) pairs: KTO's KL baseline",
    "shared_tokens": "[B, K] leading completion tokens a response shares with another response of its record",
    "margin": "[B] the record's meta['margin'] (e.g. a score gap written by the pairs transform), NaN if absent",
    "p": "[B] the record's meta['p'] (a `p` column: P(chosen ≻ rejected) in [0, 1]), NaN if absent",
    "teacher_buckets": "[B, K, T, k+1] a teacher's log-probs of its top-k tokens per completion position, then the rest's",
    "student_buckets": "[B, K, T, k+1] the policy's log-probs of the teacher's top-k tokens, then the rest's (with grad)",
    "teacher_ref_buckets": "[B, K, T, k+1] the teacher_ref model's log-probs of the teacher's top-k tokens, then the rest's",
    "record_index": "[B] long, each record's position in its data (keys per-record objective state, e.g. lcpo)",
    "user": "[B] int64 id of the record's meta['user'] (who labelled it: objectives.personal.user_id), -1 if absent",
    "gate": "[B, H] a reward model's prompt gate (softmax over H heads or attributes), from the model",
    "step_mask": "[B, K, S] which of up to S steps of each response exist (process reward models)",
    "step_labels": "[B, K, S] per-step labels 1.0 good / 0.0 bad (process reward models)",
    # online RL: written by the rollout recipe (alignkit.rollout), not by the executor
    "advantages": "[B, K] or [B, K, T] advantages of sampled responses",
    "old_token_logps": "[B, K, T] per-token log-probs of the behaviour policy at sampling time (detached)",
    "values": "[B, K, T] value-head estimates of the current model (with grad)",
    "old_values": "[B, K, T] value estimates at sampling time",
    "returns": "[B, K, T] GAE returns (value targets)",
}


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: LossFn
    needs_reference: bool = False
    label_kinds: tuple[str, ...] = ("ranks",)
    min_responses: int = 1
    max_responses: int | None = None
    needs_token_logps: bool = False
    stateful: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    extras: tuple[str, ...] = ()
    score_shape: str = "scalar"  # scalar | vector: what `scores` records must carry when labelled by scores
    inputs: str = "logps"  # logps (policy log-probs) | rewards (a reward model's head) | rollout (online RL samples)
    reward_outputs: str = "1"  # rewards objectives: how many head outputs, "1" or the hparam naming it, e.g. "num_heads"
    merge_state: Callable[..., dict] | None = None  # stateful objectives: merges processes' states (module docstring)

    def __call__(self, stats: SequenceStats, state: dict | None = None, **hparams: Any) -> LossOutput:
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"objective '{self.name}' got unknown hyper-parameter(s) {sorted(unknown)}; "
                f"allowed: {sorted(self.defaults)}"
            )
        kwargs = {**self.defaults, **hparams}
        if self.stateful:
            kwargs["state"] = {} if state is None else state
        return self.fn(stats, **kwargs)

    def check_data(self, label_kind: str, k_min: int, k_max: int, has_reference: bool = True,
                   score_dim: int | None = None) -> None:
        """Raise a clear error when data cannot feed this objective (``score_dim``: length of score vectors)."""
        if label_kind not in self.label_kinds:
            hint = {
                "labels": " (unpaired desirable/undesirable labels: use kto, bco, unlikelihood, or d2o)",
                "ranks": " (to split pairs into labels: transforms: [{name: to_unpaired}])",
            }.get(label_kind, "")
            raise DataError(
                f"objective '{self.name}' needs records labelled with {' or '.join(self.label_kinds)}, "
                f"but the data has '{label_kind}'{hint}"
            )
        if label_kind == "scores" and score_dim is not None and self.score_shape == "scalar":
            raise DataError(
                f"objective '{self.name}' needs one score per response, but the records carry score vectors "
                f"of length {score_dim}; turn them into scalars first: "
                f"transforms: [{{name: weight_scores, weights: [...]}}] (or use modpo)"
            )
        if label_kind == "scores" and score_dim is None and self.score_shape == "vector":
            raise DataError(f"objective '{self.name}' needs score vectors (one score per objective) per response")
        if k_min < self.min_responses:
            raise DataError(
                f"objective '{self.name}' needs at least {self.min_responses} responses per prompt; "
                f"some records have {k_min}"
            )
        if self.max_responses is not None and k_max > self.max_responses:
            raise DataError(
                f"objective '{self.name}' takes at most {self.max_responses} responses per prompt; "
                f"some records have {k_max} (build pairs first, e.g. best-vs-worst)"
            )
        if self.needs_reference and not has_reference:
            raise ConfigError(f"objective '{self.name}' needs reference log-probs but no reference is available")


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(
    name: str,
    *,
    needs_reference: bool = False,
    label_kinds: Sequence[str] = ("ranks",),
    min_responses: int = 1,
    max_responses: int | None = None,
    needs_token_logps: bool = False,
    stateful: bool = False,
    extras: Sequence[str] = (),
    score_shape: str = "scalar",
    inputs: str = "logps",
    reward_outputs: str = "1",
    merge_state: Callable[..., dict] | None = None,
) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' is registered twice")
        if inputs not in ("logps", "rewards", "rollout"):
            raise ValueError(f"objective '{name}': inputs must be 'logps', 'rewards' or 'rollout', got {inputs!r}")
        unknown_extras = set(extras) - set(EXTRAS)
        if unknown_extras:
            raise ValueError(f"objective '{name}': unknown extras {sorted(unknown_extras)}; known: {sorted(EXTRAS)}")
        params = inspect.signature(fn).parameters
        defaults = {
            k: p.default
            for k, p in list(params.items())[1:]
            if k != "state" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"objective '{name}': hyper-parameters {missing} need defaults")
        _REGISTRY[name] = ObjectiveSpec(
            name, fn, needs_reference, tuple(label_kinds), min_responses, max_responses,
            needs_token_logps, stateful, defaults, tuple(extras), score_shape, inputs, reward_outputs, merge_state,
        )
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_objective(name: str) -> ObjectiveSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown objective '{name}'.{hint} Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


@dataclass
class BoundTerm:
    spec: ObjectiveSpec
    weight: float
    hparams: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


class Objective:
    """One or more registered objectives with bound hyper-parameters and weights: ``obj(stats)``."""

    def __init__(self, terms: list[BoundTerm]):
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = terms

    @property
    def name(self) -> str:
        return "+".join(t.spec.name for t in self.terms)

    @property
    def needs_reference(self) -> bool:
        return any(t.spec.needs_reference for t in self.terms)

    @property
    def needs_token_logps(self) -> bool:
        return any(t.spec.needs_token_logps for t in self.terms)

    @property
    def inputs(self) -> str:
        kinds = {t.spec.inputs for t in self.terms}
        if len(kinds) > 1:
            raise ConfigError(f"objective {self.name} mixes policy objectives and reward-model objectives")
        return kinds.pop()

    @property
    def extras(self) -> tuple[str, ...]:
        return tuple(sorted({e for t in self.terms for e in t.spec.extras}))

    def check_data(self, label_kind: str, k_min: int, k_max: int, has_reference: bool = True,
                   score_dim: int | None = None) -> None:
        for t in self.terms:
            t.spec.check_data(label_kind, k_min, k_max, has_reference, score_dim)

    def __call__(self, stats: SequenceStats) -> LossOutput:
        if len(self.terms) == 1 and self.terms[0].weight == 1.0:
            t = self.terms[0]
            return t.spec(stats, state=t.state, **t.hparams)
        ref = stats.logps if stats.logps is not None else stats.rewards
        loss = torch.zeros((), dtype=ref.dtype, device=ref.device)
        per_example = torch.zeros(stats.batch_size, dtype=ref.dtype, device=ref.device)
        metrics: dict[str, float] = {}
        for t in self.terms:
            out = t.spec(stats, state=t.state, **t.hparams)
            loss = loss + t.weight * out.loss
            per_example = per_example + t.weight * out.per_example
            metrics[f"{t.spec.name}/loss"] = float(out.loss.detach())
            metrics.update({f"{t.spec.name}/{k}": v for k, v in out.metrics.items()})
        return LossOutput(loss, per_example, metrics)

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: a later call that updates nested state (e.g. lcpo's per-record table) leaves it alone."""
        return {f"{i}:{t.spec.name}": copy.deepcopy(t.state) for i, t in enumerate(self.terms)}

    @property
    def merges_state(self) -> bool:
        return any(t.spec.merge_state is not None for t in self.terms)

    def merge_states(self, before: Mapping[str, Any], gathered: Sequence[Mapping[str, Any]]) -> None:
        """Each term with a ``merge_state`` takes the merge of ``gathered`` (every process's `state_dict` after its
        share of a batch) from ``before`` (the `state_dict` they all started it from); the others keep theirs."""
        for i, t in enumerate(self.terms):
            if t.spec.merge_state is not None:
                key = f"{i}:{t.spec.name}"
                merged = t.spec.merge_state(before.get(key, {}), [g.get(key, {}) for g in gathered],
                                            **{**t.spec.defaults, **t.hparams})
                t.state.clear()
                t.state.update(merged)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, t in enumerate(self.terms):
            t.state.clear()
            t.state.update(copy.deepcopy(dict(state.get(f"{i}:{t.spec.name}", {}))))


def build_objective(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], **shared: Any) -> Objective:
    """Bind an objective from a name, a dict ``{name, weight, **hparams}`` or a list of them.

    ``shared`` hyper-parameters (e.g. ``beta`` from the top-level config) apply to every term that
    accepts them, unless the term sets its own.
    """
    items = [spec] if isinstance(spec, (str, Mapping)) else list(spec)
    names = [i if isinstance(i, str) else i.get("name", "") for i in items]
    accepted = {k for n in names if n in available() for k in get_objective(n).defaults}
    unused = sorted(k for k, v in shared.items() if v is not None and k not in accepted)
    if unused:
        raise ConfigError(
            f"objective {'+'.join(names)} takes no hyper-parameter(s) {unused}; allowed: {sorted(accepted)}"
        )
    terms = []
    for item in items:
        item = {"name": item} if isinstance(item, str) else dict(item)
        if "name" not in item:
            raise ConfigError(f"objective entry {item} needs a 'name'")
        obj = get_objective(item.pop("name"))
        weight = float(item.pop("weight", 1.0))
        hparams = {k: v for k, v in shared.items() if k in obj.defaults and v is not None}
        hparams.update(item)
        unknown = set(hparams) - set(obj.defaults)
        if unknown:
            close = {u: difflib.get_close_matches(u, obj.defaults, n=1) for u in unknown}
            raise ConfigError(
                f"objective '{obj.name}' has no hyper-parameter(s) {sorted(unknown)}"
                f"{' (did you mean ' + str({u: c[0] for u, c in close.items() if c}) + '?)' if any(close.values()) else ''}; "
                f"allowed: {sorted(obj.defaults)}"
            )
        terms.append(BoundTerm(obj, weight, hparams))
    return Objective(terms)

