"""Preference / ranking accuracy of a policy on held-out preference pairs (METHODS.md section 9).

For a pair (x, y_w, y_l) with summed log-probs ``s(y) = log π(y | x)`` under the policy and ``s_ref(y)``
under the reference:

* **implicit-reward accuracy** — the share of pairs with ``ρ(y_w) > ρ(y_l)``, ``ρ(y) = s(y) − s_ref(y)``
  (DPO's implicit reward up to the factor β > 0, which does not change the order): did training move
  probability from the loser to the winner, relative to where it started?
* **likelihood ranking accuracy** — the share with ``s(y_w) > s(y_l)``: would the policy itself rank the
  winner first? Usually far lower (Chen et al., "Preference learning algorithms do not learn preference
  rankings", 2024, https://arxiv.org/abs/2405.19534): a shorter or more typical loser keeps a higher
  likelihood even after training.
* the same per token (``s / n_tokens``), which removes the length advantage of short answers.

Ties count ½; intervals are Wilson's (`alignkit.eval.rm_report.wilson_interval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignkit.data.schema import PreferenceRecord, chosen_rejected
from alignkit.data.tokenize import TokenizeConfig
from alignkit.engine.score import iter_logprobs
from alignkit.errors import DataError
from alignkit.eval.rm_report import pairwise_accuracy, wilson_interval


def _acc(chosen: Sequence[float], rejected: Sequence[float], z: float) -> dict[str, Any]:
    a, n = pairwise_accuracy(chosen, rejected), len(chosen)
    return {"accuracy": a, "wilson": list(wilson_interval(a * n, n, z))}


def ranking_accuracy(chosen: Sequence[float], rejected: Sequence[float], ref_chosen: Sequence[float] | None = None,
                     ref_rejected: Sequence[float] | None = None, chosen_tokens: Sequence[int] | None = None,
                     rejected_tokens: Sequence[int] | None = None, z: float = 1.96) -> dict[str, Any]:
    """Both accuracies from summed log-probs ``[P]`` of winners and losers (reference ones optional).

    Returns ``{"n", "likelihood": {"accuracy", "wilson"}, "likelihood_per_token": ... or None,
    "implicit_reward": ... or None (no reference), "mean_margin": mean s(w) − s(l),
    "mean_implicit_margin": mean ρ(w) − ρ(l) or None}``.
    """
    n = len(chosen)
    if n == 0 or len(rejected) != n:
        raise ValueError(f"need one winner and one loser log-prob per pair, got {n} and {len(rejected)}")
    out: dict[str, Any] = {"n": n, "likelihood": _acc(chosen, rejected, z), "likelihood_per_token": None,
                           "implicit_reward": None, "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
                           "mean_implicit_margin": None}
    if chosen_tokens is not None and rejected_tokens is not None:
        out["likelihood_per_token"] = _acc([c / max(t, 1) for c, t in zip(chosen, chosen_tokens)],
                                           [r / max(t, 1) for r, t in zip(rejected, rejected_tokens)], z)
    if ref_chosen is not None and ref_rejected is not None:
        rho_w = [c - rc for c, rc in zip(chosen, ref_chosen)]
        rho_l = [r - rr for r, rr in zip(rejected, ref_rejected)]
        out["implicit_reward"] = _acc(rho_w, rho_l, z)
        out["mean_implicit_margin"] = sum(w - lo for w, lo in zip(rho_w, rho_l)) / n
    return out


def preference_pairs(records: Sequence[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """(winner-first K = 2 records, number skipped): records with a strict preference between two responses
    (ranks or scores), reordered so the winner comes first; others (ties, K != 2, labels) are skipped."""
    out, skipped = [], 0
    for r in records:
        idx = chosen_rejected(r)
        if idx is None:
            skipped += 1
            continue
        out.append(PreferenceRecord(prompt=r.prompt, responses=[r.responses[idx[0]], r.responses[idx[1]]],
                                    ranks=[0, 1], system=r.system, id=r.id, meta=r.meta))
    return out, skipped


def sequence_logps(model, tokenizer, records, batch_size: int) -> tuple[list[float], list[int]]:
    """(summed log-prob, completion tokens) of every response of ``records``, record by record."""
    rows = list(iter_logprobs(model, tokenizer, list(records), batch_size, TokenizeConfig(max_length=None),
                              progress=False))
    return [r["logp"] for r in rows], [r["n_tokens"] for r in rows]


def preference_accuracy(policy, tokenizer, records: Sequence[PreferenceRecord], reference=None,
                        ref_tokenizer=None, batch_size: int = 8, z: float = 1.96) -> dict[str, Any]:
    """`ranking_accuracy` of ``policy`` on preference records (log-probs by the alignkit executor,
    `alignkit.engine.score.iter_logprobs`). ``reference`` adds the implicit-reward accuracy; it is scored
    with ``ref_tokenizer`` (default: ``tokenizer``). Adds ``"skipped"``: records without a strict pair."""
    pairs, skipped = preference_pairs(records)
    if not pairs:
        raise DataError("no preference pair with a strict winner among the records (need K = 2 with ranks or scores)")
    lp, nt = sequence_logps(policy, tokenizer, pairs, batch_size)
    ref = sequence_logps(reference, ref_tokenizer or tokenizer, pairs, batch_size)[0] if reference is not None else None
    out = ranking_accuracy(lp[0::2], lp[1::2], ref[0::2] if ref else None, ref[1::2] if ref else None,
                           nt[0::2], nt[1::2], z)
    out["skipped"] = skipped
    return out
