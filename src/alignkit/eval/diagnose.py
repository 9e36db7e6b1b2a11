"""``alignkit eval --diagnose ...``: the diagnostics of `alignkit.eval.diagnostics` on models and data, each
writing ``results.json``, ``report.html`` (with its figure) and the figure as a PNG into ``out_dir``.

* ``ranking`` — idealised ranking accuracy of the reference (``--reference``) on preference pairs
  (``--preferences``) at each ``--beta`` (one for all, or one per ``--models`` entry: the β it was trained
  with), with each model's observed likelihood ranking accuracy and its alignment gap (idealised at its β −
  observed). α = P(y_w ≻ y_l) per pair: ``--alpha`` for all pairs, else the
  record's ``p`` (``meta.p``, about its first response), else σ((s_w − s_l)/``--alpha-temperature``) of its
  scores; a pair with none of these is an error naming the record.
* ``entanglement`` — per pair, the inner product and cosine of ``∇ log π(y_w|x)`` and ``∇ log π(y_l|x)`` for
  each ``--models`` entry, over the parameters whose names match ``--params`` (a regular expression; all by
  default), and the share of pairs where a margin step would lower the chosen log-prob.
* ``token-shift`` — each ``--models`` entry (the aligned model) answers ``--prompts`` greedily; the base model
  (``--reference``) ranks each answer token given the same context: shares unshifted / marginal / shifted and
  the tokens shifted most often.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.data.io import read_records
from alignkit.data.schema import PreferenceRecord, chosen_rejected
from alignkit.data.tokenize import TokenizeConfig, tokenize_records
from alignkit.errors import ConfigError, DataError
from alignkit.eval import plots
from alignkit.eval import report_html as H
from alignkit.eval.accuracy import preference_accuracy, preference_pairs, sequence_logps
from alignkit.eval.diagnostics import (
    SHIFT_CLASSES,
    bradley_terry_alpha,
    entanglement,
    idealised_ranking,
    logp_gradient,
    shift_class,
    shift_fractions,
    token_ranks,
)
from alignkit.generation import generate, prompt_ids
from alignkit.io_atomic import atomic_write_bytes, atomic_write_text
from alignkit.models.load import load_model, load_tokenizer


def _load(path: str, dtype: str):
    return load_model(path, dtype=dtype), load_tokenizer(path)


def _pairs(path: str | None, max_records: int | None) -> tuple[list[PreferenceRecord], list[PreferenceRecord], int]:
    """(strict pairs winner first, the records they came from, records skipped) of ``path``'s first records."""
    if not path:
        raise ConfigError("this diagnostic needs preference pairs: pass --preferences FILE")
    records = read_records(path).records[:max_records]
    sources = [r for r in records if chosen_rejected(r) is not None]
    pairs, skipped = preference_pairs(records)
    if not pairs:
        raise DataError(f"{path}: no preference pair with a strict winner (need K = 2 with ranks or scores)")
    return pairs, sources, skipped


def pair_alphas(records: list[PreferenceRecord], alpha: float | None, temperature: float) -> tuple[list[float], str]:
    """(P(winner ≻ loser) per strict pair, where it came from): see the module docstring."""
    if alpha is not None:
        if not 0 <= alpha <= 1:
            raise ConfigError(f"--alpha must be a probability in [0, 1], got {alpha}")
        return [alpha] * len(records), f"constant {alpha}"
    out, kinds = [], set()
    for n, r in enumerate(records):
        w, _ = chosen_rejected(r)
        if r.meta.get("p") is not None:
            out.append(r.meta["p"] if w == 0 else 1 - r.meta["p"])
            kinds.add("the records' p")
        elif r.label_kind == "scores":
            out.append(bradley_terry_alpha(r.scores[w], r.scores[1 - w], temperature))
            kinds.add(f"scores through σ(Δs / {temperature})")
        else:
            where = r.origin or f"record {n}"
            raise DataError(f"{where}: no 'p' and no scores to give P(chosen ≻ rejected); pass --alpha (e.g. 0.75)")
    return out, " and ".join(sorted(kinds))


def _write(out_dir: str | Path, title: str, results: dict[str, Any], sections, figures: dict[str, bytes],
           command: str | None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results["command"] = command
    for name, png in figures.items():
        atomic_write_bytes(out / f"{name}.png", png)
    H.write_results(results, out / "results.json")
    atomic_write_text(out / "report.html", H.page(title, sections, subtitle=command or ""))


def _betas(beta: float | Sequence[float], models: Sequence[str]) -> list[float]:
    betas = [float(beta)] if isinstance(beta, (int, float)) else [float(b) for b in beta]
    if not betas or (len(betas) > 1 and models and len(betas) != len(models)):
        raise ConfigError(f"--beta takes one value, or one per --models entry ({len(models)}); got {len(betas)}")
    return betas


def diagnose_ranking(*, reference: str | None, preferences: str | None, beta: float | Sequence[float] = 0.1,
                     models=(), names=None, alpha: float | None = None, alpha_temperature: float = 1.0,
                     max_records: int | None = None, batch_size: int = 8, dtype: str = "float32",
                     out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Idealised ranking accuracy at each β in ``beta`` (one for all models, or one per model: the β it was
    trained with) and each model's alignment gap against its β; see the module docstring."""
    if not reference:
        raise ConfigError("--diagnose ranking needs --reference (the model DPO starts from)")
    betas = _betas(beta, models)
    pairs, sources, skipped = _pairs(preferences, max_records)
    alphas, alpha_source = pair_alphas(sources, alpha, alpha_temperature)
    ref_model, ref_tok = _load(reference, dtype)
    lp = sequence_logps(ref_model, ref_tok, pairs, batch_size)[0]
    ideal = {b: idealised_ranking(lp[0::2], lp[1::2], alphas, b) for b in dict.fromkeys(betas)}
    rows = []
    for k, (path, name) in enumerate(zip(models, names or models)):
        b = betas[k if len(betas) > 1 else 0]
        model, tok = _load(path, dtype)
        acc = preference_accuracy(model, tok, pairs, reference=ref_model, ref_tokenizer=ref_tok, batch_size=batch_size)
        rows.append({"name": name, "source": path, "beta": b, "likelihood": acc["likelihood"],
                     "implicit_reward": acc["implicit_reward"], "idealised_accuracy": ideal[b]["accuracy"],
                     "alignment_gap": ideal[b]["accuracy"] - acc["likelihood"]["accuracy"]})
    first = next(iter(ideal.values()))
    results = {"diagnostic": "ranking", "reference": reference, "preferences": preferences, "skipped": skipped,
               "alpha_source": alpha_source, "alphas": alphas, "reference_accuracy": first["reference_accuracy"],
               "idealised": list(ideal.values()), "models": rows}
    grid = [10 ** (k / 8) for k in range(-16, 17)]  # β from 0.01 to 100
    curve = [(b, idealised_ranking(lp[0::2], lp[1::2], alphas, b)["accuracy"]) for b in grid]
    results["curve"] = [{"beta": b, "accuracy": a} for b, a in curve]
    fig = plots.idealised_ranking(curve, first["reference_accuracy"],
                                  [(r["name"], r["beta"], r["likelihood"]["accuracy"]) for r in rows])
    table = [["reference (as is)", None, first["reference_accuracy"], None, None]]
    table += [["idealised DPO optimum", b, i["accuracy"], i["wilson"], None] for b, i in ideal.items()]
    table += [[r["name"], r["beta"], r["likelihood"]["accuracy"], r["likelihood"]["wilson"], r["alignment_gap"]]
              for r in rows]
    sections = [("Idealised ranking accuracy", [
        H.para(f"{first['n']} pairs from {preferences} ({skipped} records without a strict pair skipped); "
               f"α from {alpha_source}."),
        H.table(["model", "β", "ranking accuracy", "Wilson 95%", "alignment gap (idealised at β − observed)"], table),
        H.image(fig, "idealised ranking"),
        H.para("The optimum π* ∝ π_ref·exp(r/β) ranks a pair correctly iff log π_ref(y_w) − log π_ref(y_l) + "
               "logit(α)/β > 0 (Chen et al. 2024, Theorem 3.1). The curve is that accuracy from β = 0.01 to 100; the "
               "points are the models' own ranking accuracies at their β.", "note")])]
    _write(out_dir, "alignkit diagnostics: idealised ranking accuracy", results, sections, {"ranking": fig}, command)
    return results


def _selected(model, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    try:
        rx = re.compile(pattern or "")
    except re.error as e:
        raise ConfigError(f"--params {pattern!r} is not a regular expression: {e}") from None
    chosen = [(n, p) for n, p in model.named_parameters() if rx.search(n)]
    if not chosen:
        raise ConfigError(f"--params {pattern!r} matches no parameter name (e.g. {next(model.named_parameters())[0]})")
    return chosen


def pair_entanglement(model, tokenizer, pairs: list[PreferenceRecord], params: str | None = None
                      ) -> tuple[list[dict[str, Any]], int]:
    """`entanglement` of every winner-first pair in ``pairs`` under ``model`` (eval mode, gradients of the
    parameters matching ``params`` only), and the number of parameters they span."""
    chosen = _selected(model, params)
    names = {id(p) for _, p in chosen}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    items, _ = tokenize_records(pairs, tokenizer, TokenizeConfig(max_length=None))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for _, p in model.named_parameters():
            p.requires_grad_(id(p) in names)
        out = []
        for item in items:
            grads = []
            for k in (0, 1):
                ids = torch.tensor(item.full_ids(k), device=device)
                grads.append(logp_gradient(model, ids, len(item.prompt_ids) + item.score_start[k], [p for _, p in chosen]))
            out.append(entanglement(*grads))
    finally:
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    return out, sum(p.numel() for _, p in chosen)


def diagnose_entanglement(*, models, preferences: str | None, names=None, params: str | None = None,
                          max_records: int | None = None, dtype: str = "float32", out_dir: str | Path,
                          command: str | None = None) -> dict[str, Any]:
    """Gradient entanglement of each model on the pairs; see the module docstring."""
    if not models:
        raise ConfigError("--diagnose entanglement needs --models (the policies to differentiate)")
    pairs, _, skipped = _pairs(preferences, max_records)
    rows, cosines = [], {}
    for path, name in zip(models, names or models):
        model, tok = _load(path, dtype)
        per_pair, n_params = pair_entanglement(model, tok, pairs, params)
        cos = [p["cosine"] for p in per_pair]
        cosines[name] = cos
        n = len(per_pair)
        rows.append({"name": name, "source": path, "parameters": n_params, "pairs": per_pair,
                     "mean_cosine": sum(cos) / n, "mean_inner": sum(p["inner"] for p in per_pair) / n,
                     "chosen_falls": sum(p["chosen_falls"] for p in per_pair) / n,
                     "rejected_rises": sum(p["rejected_rises"] for p in per_pair) / n})
    results = {"diagnostic": "entanglement", "preferences": preferences, "params": params, "skipped": skipped,
               "models": rows}
    fig = plots.histograms(cosines, "cos(∇ log π(y_w), ∇ log π(y_l)) per pair", "Gradient entanglement")
    table = [[r["name"], r["parameters"], len(r["pairs"]), r["mean_cosine"], r["mean_inner"], r["chosen_falls"],
              r["rejected_rises"]] for r in rows]
    sections = [("Gradient entanglement", [
        H.table(["model", "parameters", "pairs", "mean cosine", "mean inner product", "share: chosen falls",
                 "share: rejected rises"], table),
        H.image(fig, "entanglement"),
        H.para("A margin step along ∇log π(y_w) − ∇log π(y_l) lowers log π(y_w) where ⟨g_w, g_l⟩ > ‖g_w‖² and "
               "raises log π(y_l) where ⟨g_w, g_l⟩ > ‖g_l‖² (first order; Yuan et al. 2024).", "note")])]
    _write(out_dir, "alignkit diagnostics: gradient entanglement", results, sections, {"entanglement": fig}, command)
    return results


def answer_ranks(base, tokenizer, prompt_ids: list[int], answer: list[int]) -> torch.Tensor:
    """The base model's rank of each answer token given the prompt and the answer before it (`token_ranks`)."""
    device = next(base.parameters()).device
    ids = torch.tensor(prompt_ids + answer, device=device)
    with torch.no_grad():
        logits = base(input_ids=ids[None]).logits[0, len(prompt_ids) - 1 : -1]
    return token_ranks(logits, ids[len(prompt_ids):]).cpu()


def token_shift(base, aligned, tokenizer, prompts, max_new_tokens: int = 64, marginal_rank: int = 3,
                batch_size: int = 32) -> dict[str, Any]:
    """Greedy answers of ``aligned`` to ``prompts`` ranked by ``base`` (same tokenizer): `shift_fractions` over
    all positions, ``"answers"`` (per answer: its token ids and ranks) and ``"top_shifted"`` tokens."""
    gen = generate(aligned, tokenizer, list(prompts), k=1, max_new_tokens=max_new_tokens, temperature=0.0,
                   batch_size=batch_size)
    answers, all_ranks, shifted = [], [], Counter()
    base.eval()
    for p, ids in zip(prompts, gen.token_ids):
        answer = ids[0]
        if not answer:
            continue
        ranks = answer_ranks(base, tokenizer, prompt_ids(tokenizer, p), answer).tolist()
        answers.append({"tokens": answer, "ranks": ranks})
        all_ranks += ranks
        shifted.update(tokenizer.decode([t]) for t, r in zip(answer, ranks) if shift_class(r, marginal_rank) == "shifted")
    if not all_ranks:
        raise DataError("the aligned model answered every prompt with nothing: no position to compare")
    return {**shift_fractions(all_ranks, marginal_rank), "answers": answers,
            "top_shifted": shifted.most_common(15)}


def diagnose_token_shift(*, reference: str | None, models, prompts, names=None, max_new_tokens: int = 64,
                         marginal_rank: int = 3, batch_size: int = 32, dtype: str = "float32",
                         out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Token-distribution shift of each aligned model from the base; see the module docstring."""
    if not reference or not models:
        raise ConfigError("--diagnose token-shift needs --reference (the base model) and --models (aligned ones)")
    base, base_tok = _load(reference, dtype)
    rows = []
    for path, name in zip(models, names or models):
        aligned, tok = _load(path, dtype)
        if tok.get_vocab() != base_tok.get_vocab():
            raise ConfigError(f"--diagnose token-shift: {path} and the base {reference} have different vocabularies")
        rows.append({"name": name, "source": path,
                     **token_shift(base, aligned, tok, prompts, max_new_tokens, marginal_rank, batch_size)})
    results = {"diagnostic": "token-shift", "reference": reference, "marginal_rank": marginal_rank, "models": rows}
    fig = plots.shift_bars({r["name"]: [r[c] for c in SHIFT_CLASSES] for r in rows}, SHIFT_CLASSES)
    table = [[r["name"], r["positions"], *(r[c] for c in SHIFT_CLASSES),
              ", ".join(f"{t!r}×{n}" for t, n in r["top_shifted"][:8])] for r in rows]
    sections = [("Token-distribution shift", [
        H.table(["aligned model", "positions", *SHIFT_CLASSES, "most often shifted tokens"], table),
        H.image(fig, "token shift"),
        H.para(f"Each token of the aligned model's greedy answer is ranked by the base model {reference} given the "
               f"same context: unshifted = the base's top token, marginal = rank 2 to {marginal_rank}, shifted = "
               "lower (Lin et al. 2023, URIAL).", "note")])]
    _write(out_dir, "alignkit diagnostics: token-distribution shift", results, sections, {"token_shift": fig}, command)
    return results
