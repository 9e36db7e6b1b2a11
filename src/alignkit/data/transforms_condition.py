"""Conditioning transforms: `reward_condition` (a target score in the prompt) and `condition_weights`
(a weight vector in the prompt), with the prompt helpers generation uses at inference time.

The conditioning text is put in front of a text prompt, or in front of the first user message of a
chat prompt (the system prompt is left alone). See ``docs/data_transforms.md``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from alignkit.data.schema import PreferenceRecord, Text
from alignkit.data.transforms_common import (
    TransformError,
    check_template,
    choice,
    derive,
    number,
    pair_order,
    pair_scores,
    pairs_only,
    prefix_prompt,
    report,
    require,
    sub_id,
    transform,
    vector,
    where,
)
from alignkit.data.transforms_scores import check_length, dot

SCORE_TEMPLATE = "<score>{score:.1f}</score> "
WEIGHTS_TEMPLATE = "<weights>{w}</weights> "
TARGETS = ("best", "worst", "both")


def score_conditioned_prompt(prompt: Text, score: float, template: str = SCORE_TEMPLATE) -> Text:
    """The prompt conditioned on a target score, exactly as `reward_condition` writes it.

    At inference, ask for a high score (e.g. the best score seen in training) to get good responses.
    """
    check_template("score_conditioned_prompt", template, "score", 1.0)
    return prefix_prompt(prompt, template.format(score=score))


def format_weights(weights: list[float], digits: int = 2) -> str:
    """``[0.25, 0.75]`` -> ``"0.25, 0.75"`` (each weight with ``digits`` decimals)."""
    return ", ".join(f"{x:.{digits}f}" for x in weights)


def conditioned_prompt(prompt: Text, weights: list[float], template: str = WEIGHTS_TEMPLATE, digits: int = 2) -> Text:
    """The prompt conditioned on a weight vector, exactly as `condition_weights` writes it.

    ``weights`` are written as given (rounded to ``digits`` decimals, not renormalised): pass a point of
    the simplex, e.g. ``[0.3, 0.7]``. ``template`` must contain ``{w}``, which becomes `format_weights`.
    """
    check_template("conditioned_prompt", template, "w", "0.50, 0.50")
    number("conditioned_prompt", "digits", digits, low=0, integer=True)
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TransformError(f"conditioned_prompt: weights must be a non-empty list of numbers, got {weights!r}")
    for j, x in enumerate(weights):
        number("conditioned_prompt", f"weights[{j}]", x, low=0.0)
    return prefix_prompt(prompt, template.format(w=format_weights(list(weights), digits)))


def _prefixed(name: str, i: int, rec: PreferenceRecord, make) -> Text:
    try:
        return make(rec.prompt)
    except TransformError as e:
        raise TransformError(f"{name}: {where(i, rec)}: {e}") from None


def _scores_of(i: int, rec: PreferenceRecord) -> tuple[float, float]:
    scores = pair_scores(rec)
    if scores is None:
        raise TransformError(f"reward_condition needs pairs with scores; {where(i, rec)} has ranks but no "
                             "meta score_chosen/score_rejected (build pairs from scored lists)")  # fmt: skip
    return scores


@transform
def reward_condition(records: list[PreferenceRecord], *, template: str = SCORE_TEMPLATE, target: str = "best"
                     ) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Reward-augmented relabelling (https://arxiv.org/abs/2410.08067).

    For a pair (y_w, y_l) with scores (s_w, s_l) the prompt is prefixed with ``template`` formatted
    with a target score, and the response holding that score becomes the chosen one:
    ``target="best"`` -> condition on s_w, y_w chosen (ids ``<id>:cond_best``); ``"worst"`` ->
    condition on s_l, y_l chosen (``<id>:cond_worst``); ``"both"`` -> both records (the paper).
    Input: K = 2 scalar scores, or ranked pairs with meta score_chosen/score_rejected (`pairs`, the
    paired layout). Output: ranks [0, 1]; meta ``target_score``, ``score_chosen``/``score_rejected``
    (of the responses in their new places) and ``margin`` = |s_w - s_l|.
    Report ``dropped``: ``tied`` (equal scores or ranks), ``scores_disagree_with_ranks`` (pairs).
    """
    check_template("reward_condition", template, "score", 1.0)
    choice("reward_condition", "target", target, TARGETS)
    targets = ("best", "worst") if target == "both" else (target,)
    out, dropped = [], Counter()
    for i, rec in enumerate(records):
        pairs_only("reward_condition", i, rec)
        order, scores = pair_order(rec), _scores_of(i, rec)
        if order is None or scores[0] == scores[1]:
            dropped["tied"] += 1
            continue
        if scores[0] < scores[1]:
            dropped["scores_disagree_with_ranks"] += 1
            continue
        (w, l), (s_w, s_l) = order, scores
        for name in targets:
            first, second, s1, s2 = (w, l, s_w, s_l) if name == "best" else (l, w, s_l, s_w)
            prompt = _prefixed("reward_condition", i, rec, lambda p, s=s1: prefix_prompt(p, template.format(score=s)))
            meta = {"target_score": s1, "score_chosen": s1, "score_rejected": s2, "margin": s_w - s_l}
            out.append(derive(rec, meta, prompt=prompt, responses=[rec.responses[first], rec.responses[second]],
                              ranks=[0, 1], id=sub_id(rec, f"cond_{name}")))  # fmt: skip
    return out, report("reward_condition", len(records), out, +dropped)


def dirichlet(m: int, rng: random.Random) -> list[float]:
    """One Dirichlet(1, ..., 1) sample of dimension m (uniform on the simplex)."""
    e = [rng.expovariate(1.0) for _ in range(m)]
    total = sum(e)
    return [x / total for x in e]


def _fixed_weights(weights: Any) -> list[list[float]]:
    if not isinstance(weights, (list, tuple)) or not weights or not all(isinstance(w, (list, tuple)) for w in weights):
        raise TransformError(f"condition_weights: weights must be a list of weight vectors, e.g. "
                             f"[[1, 0], [0.5, 0.5]], got {weights!r}")  # fmt: skip
    return [vector("condition_weights", f"weights[{n}]", w, simplex=True) for n, w in enumerate(weights)]


@transform
def condition_weights(records: list[PreferenceRecord], *, weights: list[list[float]] | None = None,
                      samples: int | None = None, template: str = WEIGHTS_TEMPLATE, digits: int = 2,
                      seed: int = 0) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """Weight-conditioned multi-objective data (one model for every trade-off).

    For each record with vector scores [K][m] and each weight vector w — the given ``weights``
    (each normalised to sum 1) or ``samples`` fresh seeded Dirichlet(1) draws per record — emit a
    record whose prompt is `conditioned_prompt` (w rounded to ``digits`` decimals) and whose scores
    are ``wᵀs`` with w exactly as written in the prompt. Meta gains ``condition_weights`` (that w)
    and ``score_vectors``; ids ``<id>:w<n>``. Follow with `pairs`. Report: ``conditioned``.
    """
    if (weights is None) == (samples is None):
        raise TransformError("condition_weights: give exactly one of weights (a list of vectors) or samples (N)")
    fixed = _fixed_weights(weights) if weights is not None else None
    if samples is not None:
        number("condition_weights", "samples", samples, low=1, integer=True)
    check_template("condition_weights", template, "w", "0.50, 0.50")
    number("condition_weights", "digits", digits, low=0, integer=True)
    rng, out = random.Random(seed), []
    for i, rec in enumerate(records):
        require("condition_weights", i, rec, ("vector scores",), "multi-objective records (vector scores)")
        m = len(rec.scores[0])
        for n, w in enumerate(fixed or [dirichlet(m, rng) for _ in range(samples)]):
            check_length("condition_weights", f"weights[{n}]", i, rec, w)
            shown = [float(f"{x:.{digits}f}") for x in w]
            prompt = _prefixed("condition_weights", i, rec, lambda p, w=shown: conditioned_prompt(p, w, template, digits))
            out.append(derive(rec, {"condition_weights": shown, "score_vectors": rec.scores}, prompt=prompt,
                              scores=[dot(shown, s) for s in rec.scores], id=sub_id(rec, f"w{n}")))  # fmt: skip
    return out, report("condition_weights", len(records), out, conditioned=len(out))

