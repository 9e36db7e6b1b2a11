"""Objectives for noisy preference labels that learn how noisy the labels are while training.

``lcpo`` (Latent Collective Preference Optimization, Cao, Xu et al. 2025, https://arxiv.org/abs/2509.24159)
treats whether each pair's recorded label is correct as a latent variable z ∈ {0, 1}, with
``P(z = 1) = η = 1 − ε`` (ε the dataset's flip rate), and runs EM alongside gradient descent:

* **E-step** (per pair, detached): the posterior that the label is correct given the model's
  Bradley–Terry probability ``σ(z)`` of the recorded direction, ``z = βΔ``,
  ``w = (1−ε)σ(z) / ((1−ε)σ(z) + ε·σ(−z)) = σ(z + log((1−ε)/ε))``;
* **M-step for θ**: the expected log-likelihood, ``−w·logσ(z) − (1−w)·logσ(−z)`` — each pair's two
  label directions weighted by the posterior (soft_dpo with ``p = w``);
* **M-step for ε**: ``ε = 1 − mean_i w_i`` over every record seen so far, each record counted once
  with its latest posterior (incremental EM, Neal & Hinton 1998): one pass over the data is one EM
  iteration of ε.

With a calibrated model the estimate converges to the true flip rate (the paper's theorem; the test
`tests/test_objectives_noisy.py` checks it on margins drawn from a known model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.objectives.common import check_positive
from alignkit.objectives.pairwise import PAIR, finish_pair, pair_log_ratios, pair_stats
from alignkit.objectives.registry import register
from alignkit.objectives.stats import LossOutput, SequenceStats


def correct_posterior(z: Tensor, flip_rate: float) -> Tensor:
    """E-step: ``P(label correct | z) = σ(z + log((1−ε)/ε))`` for the recorded direction's margin ``z``.

    ε = 0 gives 1 everywhere (every label trusted: the loss is dpo); ε = ½ gives σ(z) (the label carries
    no information, only the model's own belief)."""
    if flip_rate <= 0:
        return torch.ones_like(z)
    return torch.sigmoid(z + math.log((1 - flip_rate) / flip_rate))


def update_flip_rate(state: dict, indices: list[int], posteriors: list[float], max_flip_rate: float) -> float:
    """M-step for ε: store each record's latest posterior in ``state["posteriors"]`` ({record index: w}),
    keep their sum in ``state["total"]``, and set ``state["flip_rate"] = 1 − mean(w)`` clipped to
    ``[0, max_flip_rate]``. Returns the new ε."""
    table = state.setdefault("posteriors", {})
    total = float(state.get("total", 0.0))
    for i, w in zip(indices, posteriors):
        total += w - table.get(i, 0.0)
        table[i] = w
    state["total"] = total
    state["flip_rate"] = min(max(1.0 - total / len(table), 0.0), max_flip_rate) if table else state["flip_rate"]
    return state["flip_rate"]


@register("lcpo", needs_reference=True, stateful=True, extras=("record_index",), **PAIR)
def lcpo(
    stats: SequenceStats,
    beta: float = 0.1,
    flip_rate: float = 0.1,
    max_flip_rate: float = 0.45,
    length_normalize: bool = False,
    state: dict | None = None,
) -> LossOutput:
    """LCPO-weighted DPO: ``−w·logσ(βΔ) − (1−w)·logσ(−βΔ)``, w the posterior that the pair's label is correct.

    Latent Collective Preference Optimization, https://arxiv.org/abs/2509.24159 (the module docstring
    gives the EM steps). Per call, for the pairs of the batch:

    1. ε = ``state["flip_rate"]`` (the option ``flip_rate`` before the first call);
    2. E-step ``w = σ(βΔ + log((1−ε)/ε))`` from the detached margin (:func:`correct_posterior`);
    3. the loss above, its gradient in βΔ is ``σ(βΔ) − w``: a pair the model confidently disputes
       (w → 0) pulls towards the opposite label, an uncertain one barely pulls;
    4. M-step: each record's w replaces its previous one in ``state["posteriors"]`` and
       ε ← 1 − mean of the table, clipped to ``[0, max_flip_rate]`` (:func:`update_flip_rate`).

    ``state = {"flip_rate": float, "posteriors": {record index: float}, "total": float}`` is saved in
    checkpoints and restored on resume (and around evaluation, which leaves it untouched). Record indices
    come from ``extra["record_index"]`` [B] (the collator writes each record's position in the training
    data). With ``flip_rate=0`` every w is 1 and ε stays 0: the loss is dpo. Under several processes each
    keeps the table of the records it sees; each one's ε is an estimate over its shard.

    At θ = ref (Δ = 0) every w equals 1 − ε, so ε stays at its initial value until the margins carry
    information; the estimate is only as good as the model's calibration (an over-fitted model that
    memorises flipped labels drives ε towards 0).

    Args:
        stats: ``logps``, ``ref_logps`` [B, 2]; ranks or scalar scores; ``extra["record_index"]`` [B].
        beta: inverse temperature β > 0.
        flip_rate: initial ε ∈ [0, max_flip_rate].
        max_flip_rate: upper bound on ε, in (0, 0.5): at ½ the labels say nothing.
        length_normalize: per-token log-ratios ``ρ/n`` as in LN-DPO (:func:`~alignkit.objectives.pairwise.dpo`).

    Returns:
        LossOutput, ``per_example`` [B]; rewards ``β·ρ``; metrics ``flip_rate`` (ε after the M-step),
        ``posterior`` (mean w of the batch's pairs).
    """
    check_positive(beta=beta)
    if not 0 < max_flip_rate < 0.5:
        raise ConfigError(f"hyper-parameter max_flip_rate must be in (0, 0.5), got {max_flip_rate}")
    if not 0 <= flip_rate <= max_flip_rate:
        raise ConfigError(f"hyper-parameter flip_rate must be in [0, max_flip_rate={max_flip_rate}], got {flip_rate}")
    index = stats.extra.get("record_index")
    if index is None or index.shape != (stats.batch_size,):
        raise ValueError("objective 'lcpo' needs stats.extra['record_index'] [B] (each record's position in the "
                         "data, written by the collator) to keep one posterior per record")
    state = {} if state is None else state
    state.setdefault("flip_rate", float(flip_rate))
    pr = pair_stats(stats, reference=True)
    rho_w, rho_l = pair_log_ratios(pr, length_normalize)
    z = beta * (rho_w - rho_l)
    w = correct_posterior(z.detach(), state["flip_rate"])
    per = -w * F.logsigmoid(z) - (1 - w) * F.logsigmoid(-z)
    mask = pr.view.mask
    if bool(mask.any()):
        update_flip_rate(state, [int(i) for i in index[mask].tolist()], w[mask].double().tolist(), max_flip_rate)
    out = finish_pair(stats, pr, per, beta * rho_w, beta * rho_l, posterior=w)
    out.metrics["flip_rate"] = float(state["flip_rate"])
    return out
