"""Record transforms: pure functions ``list[PreferenceRecord] -> (list[PreferenceRecord], report)``.

A config lists them in order; `apply_transforms` runs them::

    transforms:
      - {name: weight_scores, weights: [0.7, 0.3]}
      - {name: pairs, strategy: best_vs_worst, min_margin: 0.5}

    records, reports = apply_transforms(records, config.transforms, seed=config.seed)
    for r in reports:
        log.info(format_report(r))

`TRANSFORMS` (name -> function): ``pairs``, ``weight_scores``, ``curriculum``, ``margin_weights``,
``reward_condition``, ``condition_weights``, ``rso``, ``to_unpaired``, ``negatives_only``, ``fold``, ``users``,
``udm``. Each function can also be called directly, e.g. ``pairs(records, strategy="all_pairs")``. Nothing is
dropped silently: every report counts what was dropped, by reason. Given the same input and seed the
output is the same. Rules, options and examples: ``docs/data_transforms.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms_common import TRANSFORMS, TransformError, suggest
from alignkit.data.transforms_condition import (
    condition_weights,
    conditioned_prompt,
    format_weights,
    reward_condition,
    score_conditioned_prompt,
)
from alignkit.data.transforms_folds import fold, users
from alignkit.data.transforms_pairs import negatives_only, pairs, rejection_sample, rso, to_unpaired
from alignkit.data.transforms_scores import curriculum, curriculum_order, margin_weights, weight_scores
from alignkit.data.transforms_udm import udm

__all__ = [
    "TRANSFORMS",
    "TransformError",
    "apply_transforms",
    "condition_weights",
    "conditioned_prompt",
    "curriculum",
    "curriculum_order",
    "format_report",
    "fold",
    "format_weights",
    "margin_weights",
    "negatives_only",
    "options_of",
    "pairs",
    "rejection_sample",
    "resolve_transforms",
    "reward_condition",
    "rso",
    "score_conditioned_prompt",
    "to_unpaired",
    "udm",
    "users",
    "weight_scores",
]


def options_of(name: str) -> dict[str, Any]:
    """The options of transform ``name`` with their defaults (``seed`` is not an option: see below)."""
    params = inspect.signature(TRANSFORMS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "seed"}


def _resolve(i: int, spec: Any) -> tuple[str, dict[str, Any]]:
    where = f"transforms[{i}]"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TransformError(f"{where}: each transform is a mapping with a 'name' key, e.g. "
                             f"{{name: pairs, strategy: best_vs_worst}}; got {spec!r}")  # fmt: skip
    name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    if not isinstance(name, str) or name not in TRANSFORMS:
        raise TransformError(f"{where}: unknown transform {name!r}.{suggest(str(name), list(TRANSFORMS))} "
                             f"Available: {', '.join(sorted(TRANSFORMS))}")  # fmt: skip
    allowed = options_of(name)
    for key in options:
        if key not in allowed:
            why = " (the seed comes from apply_transforms(seed=...), i.e. the run's seed)" if key == "seed" else ""
            raise TransformError(f"{where} ({name}): unknown option {key!r}.{suggest(str(key), list(allowed))}"
                                 f"{why} Options: {', '.join(allowed) or 'none'}")  # fmt: skip
    return name, options


def resolve_transforms(specs: Sequence[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Check a ``transforms:`` list (names and option names) without running it: [(name, options)].

    A spec is ``{"name": ..., **options}`` or just the name.
    """
    if specs is None:
        return []
    if isinstance(specs, (str, dict)) or not isinstance(specs, Sequence):
        raise TransformError(f"transforms must be a list of {{name: ..., option: value}} mappings, got {specs!r}")
    return [_resolve(i, spec) for i, spec in enumerate(specs)]


def _call(fn: Callable, records: list[PreferenceRecord], options: dict[str, Any], seed: int):
    if "seed" in inspect.signature(fn).parameters:
        return fn(records, seed=seed, **options)
    return fn(records, **options)


def apply_transforms(
    records: list[PreferenceRecord], specs: Sequence[Any] | None, seed: int = 0
) -> tuple[list[PreferenceRecord], list[dict[str, Any]]]:
    """Run the transforms in ``specs`` in order; returns (records, one report per transform).

    All specs are checked before any runs. Every transform that draws random numbers gets ``seed``
    (the same seed each, so a step gives the same output as a direct call). Errors are
    `TransformError` prefixed with ``transforms[i]``.
    """
    steps = resolve_transforms(specs)
    reports = []
    for i, (name, options) in enumerate(steps):
        try:
            records, rep = _call(TRANSFORMS[name], list(records), options, seed)
        except TransformError as e:
            raise TransformError(f"transforms[{i}]: {e}") from None
        reports.append(rep)
    return records, reports


def format_report(report: dict[str, Any]) -> str:
    """One line, e.g. ``pairs: 10 records in -> 7 out; dropped: below_min_margin 1, tied 2; records_without_pairs 3``."""
    line = f"{report['transform']}: {report['records_in']} records in -> {report['records_out']} out"
    dropped = report.get("dropped") or {}
    if dropped:
        line += "; dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
    extra = {k: v for k, v in report.items() if k not in ("transform", "records_in", "records_out", "dropped")}
    return line + "".join(f"; {k} {v}" for k, v in extra.items())
