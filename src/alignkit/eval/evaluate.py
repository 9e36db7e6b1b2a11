"""`evaluate`: the whole ``alignkit eval`` — sample, judge, compare, rate, measure KL, and report.

1. **Systems**: each model folder samples K answers per prompt (one seed for all); each outputs file is
   read as is (`alignkit.eval.systems`). The reference, when given, samples too and is a system itself.
2. **KL to the reference** of every model from its own samples: k1 and k3 with 95% CIs
   (`alignkit.eval.kl.kl_estimates` on `alignkit.engine.score.score_logps` log-ratios).
3. **Judge**: a pointwise judge (rule, reward model) scores every answer once — mean score with a 95% CI
   and the score histograms; a pairwise LLM judge is asked each comparison in both orders
   (`alignkit.rewards.judges`).
4. **Win rate** of every system over the baseline (the reference by default): Wilson and bootstrap
   intervals (clustered by prompt), length-controlled win rate, per subset (`alignkit.eval.winrate`).
5. **Tournament** of all systems (three or more): round-robin or single-elimination, Bradley–Terry and
   Elo ratings with bootstrap intervals, anchored at the baseline (`alignkit.eval.tournament`).
6. **Reward–KL frontier**: mean judge score (or win rate over the reference, for a pairwise judge) against
   KL, with the Pareto-optimal systems marked.
7. **Preference accuracy** on held-out pairs (``preferences``): implicit-reward and likelihood ranking
   accuracy of every model (`alignkit.eval.accuracy`).

``out_dir`` receives ``results.json`` (every number), ``report.html`` (self-contained), the figures as
PNG files and ``outputs/<system>.jsonl`` (the answers and scores; an outputs file `evaluate` reads back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignkit.data.io import read_records
from alignkit.engine.score import score_logps
from alignkit.errors import ConfigError, DataError
from alignkit.eval.accuracy import preference_accuracy
from alignkit.eval.eval_report import write_eval_report
from alignkit.eval.kl import kl_estimates, mean_ci
from alignkit.eval.lc_glm import length_controlled_glm
from alignkit.eval.systems import (
    System,
    align,
    apply_subsets,
    lengths,
    load_prompts,
    prompt_key,
    read_outputs,
    sample_system,
    system_name,
)
from alignkit.eval.tournament import Match, Tournament, ratings, round_robin, single_elimination
from alignkit.eval.winrate import outcomes, win_rate
from alignkit.models.load import load_model, load_tokenizer
from alignkit.rewards.judges import Comparison, Judge, load_callable, make_judge, position_bias
from alignkit.user_code import collect
from alignkit.user_code import record as record_code

log = logging.getLogger("alignkit")
TOURNAMENTS = ("round-robin", "single-elimination", "none")


class Matches:
    """Comparisons between systems, each pair judged once (the reverse pair reuses it, outcomes flipped)."""

    def __init__(self, systems: dict[str, System], judge: Judge, scores: dict[str, list[list[float]]],
                 lens: dict[str, list[list[int]]]):
        self.systems, self.judge, self.scores, self.lens = systems, judge, scores, lens
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, a: str, b: str) -> dict[str, Any]:
        """``{"outcomes", "length_diff", "groups", "subsets", "comparison"}`` of ``a`` vs ``b`` (a's side)."""
        if (a, b) in self.cache:
            return self.cache[(a, b)]
        if (b, a) in self.cache:
            m = self.cache[(b, a)]
            c = m["comparison"]
            flipped = Comparison([1 - y for y in c.outcomes], c.scores_b, c.scores_a, c.p_ba, c.p_ab)
            return self._store(a, b, [(q, p) for p, q in m["pairs"]], flipped)
        sa, sb = self.systems[a], self.systems[b]
        pairs = align(sa, sb)
        if self.judge.pointwise:
            xa = [self.scores[a][i][k] for (i, k), _ in pairs]
            xb = [self.scores[b][i][k] for _, (i, k) in pairs]

            comp = Comparison(outcomes(xa, xb), xa, xb)
        else:
            prompts = [sa.prompts[i] for (i, _), _ in pairs]
            comp = self.judge.compare(prompts, [sa.completions[i][k] for (i, k), _ in pairs],
                                      [sb.completions[i][k] for _, (i, k) in pairs])
        return self._store(a, b, pairs, comp)

    def _store(self, a: str, b: str, pairs, comp: Comparison) -> dict[str, Any]:
        sa = self.systems[a]
        m = {"pairs": pairs, "comparison": comp, "outcomes": comp.outcomes,
             "length_diff": [self.lens[a][i][k] - self.lens[b][j][q] for (i, k), (j, q) in pairs],
             "groups": [prompt_key(sa.prompts[i]) for (i, _), _ in pairs],
             "subsets": [sa.subsets[i] for (i, _), _ in pairs]}
        self.cache[(a, b)] = m
        return m


def _load_model(path: str, dtype: str):
    return load_model(path, dtype=dtype), load_tokenizer(path)


def evaluate(models: Sequence[str], *, names: Sequence[str] | None = None, reference: str | None = None,
             prompts: str | list | None = None, n_prompts: int | None = None, prompt_seed: int = 0,
             judge: str | Judge | Callable | None = None, judge_template: str | None = None, samples: int = 2,
             max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, baseline: str | None = None,
             tournament: str = "round-robin", preferences: str | None = None,
             subset_by: str | Callable | None = None, seed: int = 0, n_boot: int = 1000, rating_boot: int = 200,
             batch_size: int = 32, dtype: str = "float32", include_reference: bool = True,
             lc_anchors: Sequence[str] = (), portia: bool = False, out_dir: str | Path | None = None,
             command: str | None = None) -> dict[str, Any]:
    """Evaluate systems (model folders or outputs files in ``models``); see the module docstring.

    ``prompts``: a file, a ``module:function`` (called ``fn(n_prompts, seed=prompt_seed)``) or a list;
    needed for model folders. ``judge``: ``rule:module:function``, ``reward_model:PATH``, ``llm:PATH``, a
    `Judge` or a callable. Returns the dict written to ``results.json``.
    """
    if tournament not in TOURNAMENTS:
        raise ConfigError(f"tournament must be one of {TOURNAMENTS}, got {tournament!r}")
    if names is not None and len(names) != len(models):
        raise ConfigError(f"--names gives {len(names)} names for {len(models)} models; give one per model")
    t0 = time.perf_counter()
    with collect() as code:  # user functions (judge, subsets, prompts): recorded in out_dir/code.json
        judge_obj = make_judge(judge, template=judge_template, batch_size=batch_size, dtype=dtype) if judge else None
        if portia:
            if judge_obj is None or judge_obj.pointwise:
                raise ConfigError("portia corrects a pairwise (LLM) judge's position bias; give --judge llm:PATH")
            judge_obj.portia = True
        if isinstance(subset_by, str):
            subset_by = load_callable(subset_by, "subset")
        prompt_list, prompt_subsets = (None, None)
        if isinstance(prompts, (list, tuple)):
            prompt_list, prompt_subsets = list(prompts), [None] * len(prompts)
        elif prompts is not None:
            prompt_list, prompt_subsets = load_prompts(prompts, n_prompts, prompt_seed)
    records = None
    if preferences:
        records = read_records(preferences).records
    gen = dict(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
               batch_size=batch_size)
    systems: dict[str, System] = {}
    kl: dict[str, dict[str, float]] = {}
    accuracy: dict[str, dict[str, Any]] = {}
    ref_model = ref_tok = None
    if reference:
        ref_model, ref_tok = _load_model(reference, dtype)
        if prompt_list is not None and include_reference:
            log.info("eval: sampling %d x %d answers from the reference", len(prompt_list), samples)
            systems["reference"] = sample_system("reference", reference, ref_model, ref_tok, prompt_list,
                                                 prompt_subsets, **gen)
            systems["reference"].is_reference = True
            kl["reference"] = {"k1": 0.0, "k1_ci": 0.0, "k2": 0.0, "k2_ci": 0.0, "k3": 0.0, "k3_ci": 0.0,
                               "n": systems["reference"].num_answers}
        if records is not None:
            accuracy["reference"] = _accuracy(ref_model, ref_tok, records, None, None, batch_size)
    length_tok = ref_tok
    for n, path in enumerate(models):
        name = names[n] if names else system_name(path)
        if name in systems:
            raise ConfigError(f"two systems are named {name!r}; pass --names to tell them apart")
        if Path(path).is_file():
            systems[name] = read_outputs(path, name)
            continue
        if not Path(path).is_dir():
            raise DataError(f"{path} is neither a model folder nor an outputs file")
        if prompt_list is None:
            raise ConfigError(f"{path} is a model: give --prompts to sample answers from it")
        model, tok = _load_model(path, dtype)
        length_tok = length_tok or tok
        log.info("eval: sampling %d x %d answers from %s", len(prompt_list), samples, name)
        systems[name] = sample_system(name, path, model, tok, prompt_list, prompt_subsets, **gen)
        if ref_model is not None:
            kl[name] = _kl(systems[name], model, tok, ref_model, ref_tok, batch_size)
        if records is not None:
            accuracy[name] = _accuracy(model, tok, records, ref_model, ref_tok, batch_size)
        del model
    if not systems:
        raise ConfigError("nothing to evaluate: give --models (model folders or outputs files)")
    for s in systems.values():
        apply_subsets(s, subset_by)
    lens = {name: lengths(s, length_tok) for name, s in systems.items()}
    results: dict[str, Any] = {
        "command": command, "settings": {
            "models": list(models), "reference": reference, "prompts": prompts if isinstance(prompts, str) else None,
            "n_prompts": len(prompt_list) if prompt_list is not None else None, "prompt_seed": prompt_seed,
            "samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "n_boot": n_boot, "rating_boot": rating_boot, "tournament": tournament,
            "preferences": preferences},
        "length_unit": "tokens" if length_tok is not None else "characters",
        "judge": None, "baseline": None, "win_rates": [], "position_bias": None, "tournament": None,
        "frontier": None, "length_control": None,
    }
    if temperature != 1.0 or top_p != 1.0:
        results["kl_note"] = ("samples were not drawn from π itself (temperature or top_p != 1): the KL estimates "
                              "are of the sampling distribution's log-ratio, not of KL(π ‖ π_ref)")
    scores = {}
    if judge_obj is not None and judge_obj.pointwise:
        for name, s in systems.items():
            log.info("eval: scoring %d answers of %s with %s", s.num_answers, name, judge_obj.name)
            scores[name] = s.unflatten(judge_obj.score(*s.flat()))
    results["systems"] = [system_row(s, lens[s.name], scores.get(s.name), kl.get(s.name), accuracy.get(s.name))
                          for s in systems.values()]
    if judge_obj is not None:
        _judge_all(results, systems, judge_obj, scores, lens, baseline, tournament, seed, n_boot, rating_boot,
                   lc_anchors)
    results["frontier"] = frontier_rows(results)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        write_eval_report(results, systems, scores, lens, Path(out_dir))
        record_code(out_dir, code)
    return results


def _kl(system: System, model, tok, ref_model, ref_tok, batch_size: int) -> dict[str, float]:
    lp = score_logps(model, tok, system.prompts, system.completions, system.finished, batch_size=batch_size)
    lr = score_logps(ref_model, ref_tok, system.prompts, system.completions, system.finished, batch_size=batch_size)
    return kl_estimates(lp, lr)


def _accuracy(model, tok, records, ref_model, ref_tok, batch_size: int) -> dict[str, Any]:
    return preference_accuracy(model, tok, records, ref_model, ref_tok, batch_size=batch_size)


def system_row(s: System, lens, scores, kl, accuracy) -> dict[str, Any]:
    flat_len = [v for row in lens for v in row]
    row: dict[str, Any] = {"name": s.name, "source": s.source, "is_reference": s.is_reference,
                           "prompts": len(s.prompts), "answers": s.num_answers}
    row["mean_length"], row["mean_length_ci"] = mean_ci(flat_len) if flat_len else (None, None)
    row["unfinished"] = sum(not f for r in s.finished for f in r) if s.finished is not None else None
    row["reward"] = None
    if scores is not None:
        flat = [v for r in scores for v in r]
        mean, ci = mean_ci(flat)
        row["reward"] = {"mean": mean, "ci": ci, "std": float(sum((v - mean) ** 2 for v in flat) / max(len(flat) - 1, 1))
                         ** 0.5, "min": min(flat), "max": max(flat)}
    row["kl"] = kl
    row["preference_accuracy"] = accuracy
    row["examples"] = [{"prompt": s.prompts[i], "completion": s.completions[i][0]}
                       for i in range(min(3, len(s.prompts))) if s.completions[i]]
    return row


def _judge_all(results, systems, judge, scores, lens, baseline, tournament, seed, n_boot, rating_boot,
               lc_anchors=()) -> None:
    matches = Matches(systems, judge, scores, lens)
    compare_systems(results, list(systems), matches, baseline, tournament, seed, n_boot, rating_boot, lc_anchors,
                    default_baseline="reference" if "reference" in systems else None, judge=judge)
    t = results["tournament"]
    if t is not None:
        t["judge_calls"] = (sum(systems[n].num_answers for n in t["systems"]) if judge.pointwise
                            else 2 * t["comparisons"])
    results["judge"] = {"name": judge.name, "kind": "pointwise" if judge.pointwise else "pairwise",
                        "calls": judge.calls, "portia": bool(getattr(judge, "portia", False))}


def compare_systems(results: dict[str, Any], names: list[str], matches, baseline: str | None, tournament: str,
                    seed: int, n_boot: int, rating_boot: int, lc_anchors: Sequence[str] = (),
                    default_baseline: str | None = None, judge: Judge | None = None) -> None:
    """Fill ``results`` with win rates over the baseline (the LC GLM fitted over all systems at once), the
    judge's position bias (and PORTIA's, when it ran) and the tournament. ``matches.get(a, b)`` gives a's
    outcomes against b (`Matches`, or `alignkit.eval.judgments.JudgedMatches`)."""
    baseline = baseline or default_baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not one of the systems {names}")
    unknown = [a for a in lc_anchors if a not in names or a == baseline]
    if unknown:
        raise ConfigError(f"--lc-anchors {unknown}: name systems other than the baseline (the baseline's verbose or "
                         f"concise variants) among {names}")
    results["baseline"] = baseline
    bias_ab, bias_ba, fixed_ab, fixed_ba, lc_input = [], [], [], [], {}
    portia = {"rejudged": 0, "fixed": 0, "calls": 0}
    for name in names:
        if name == baseline:
            continue
        m = matches.get(name, baseline)
        if not m["outcomes"]:
            continue  # precomputed judgments may never compare this system with the baseline
        wr = win_rate(m["outcomes"], groups=m["groups"],
                      subsets=m["subsets"] if any(x is not None for x in m["subsets"]) else None,
                      n_boot=n_boot, seed=seed)
        lc_input[name] = {"outcomes": m["outcomes"], "length_diff": m["length_diff"], "prompts": m["groups"]}
        c = m["comparison"]
        row = {"name": name, "vs": baseline, "win_rate": wr, "position_bias": c.position_bias}
        if c.p_ab is not None:
            bias_ab += c.p_ab
            bias_ba += c.p_ba
        if "portia" in c.extra:
            pc = c.extra["portia"]
            row["position_bias_portia"] = {**position_bias(pc["p_ab"], pc["p_ba"]), "rejudged": pc["rejudged"],
                                           "fixed": pc["fixed"], "calls": pc["calls"]}
            fixed_ab += pc["p_ab"]
            fixed_ba += pc["p_ba"]
            for k in portia:
                portia[k] += pc[k]
        results["win_rates"].append(row)
    if lc_input:
        lc = length_controlled_glm(lc_input, anchors=[a for a in lc_anchors if a in lc_input], n_boot=n_boot,
                                   seed=seed)  # an anchor never compared with the baseline has nothing to add
        for w in results["win_rates"]:
            w["win_rate"]["length_controlled"] = lc["systems"][w["name"]]
        results["length_control"] = lc["model"]
    if bias_ab:
        results["position_bias"] = position_bias(bias_ab, bias_ba)
        if fixed_ab:
            results["position_bias"]["portia"] = {**position_bias(fixed_ab, fixed_ba), **portia}
    calls_before = judge.calls if judge is not None else None
    if tournament != "none" and len(names) >= 3:
        order = [baseline] + [n for n in names if n != baseline]
        if tournament == "given":  # precomputed judgments: the pairs that met
            t = Tournament("given", order, [Match(a, b, matches.get(a, b)["outcomes"]) for i, a in enumerate(order)
                                            for b in order[i + 1:] if matches.met(a, b)])
        else:
            def play(a, b):
                return matches.get(a, b)["outcomes"]
            t = round_robin(order, play) if tournament == "round-robin" else single_elimination(order, play, seed)
        results["tournament"] = {
            "format": t.format, "systems": t.systems, "matches": len(t.matches),
            "round_robin_matches": len(order) * (len(order) - 1) // 2, "comparisons": t.comparisons,
            "judge_calls": None, "new_judge_calls": None if judge is None else judge.calls - calls_before,
            "champion": t.champion, "rounds": t.rounds, "ratings": ratings(t, anchor=baseline, n_boot=rating_boot,
                                                                         seed=seed)}


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Whether each (kl, reward) point is Pareto-optimal: no other point has kl <= and reward >=, one strictly."""
    return [not any((k2 <= k and r2 >= r) and (k2 < k or r2 > r) for k2, r2 in points) for k, r in points]


def frontier_rows(results: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Reward–KL table: systems with a KL estimate, ``y`` = mean judge score (pointwise judge) or win rate over
    the baseline (pairwise judge, the baseline counting ½)."""
    rows = []
    wins = {w["name"]: w["win_rate"] for w in results["win_rates"]}
    pointwise = results["judge"] is not None and results["judge"]["kind"] == "pointwise"
    for s in results["systems"]:
        if s["kl"] is None:
            continue
        if pointwise:
            y, y_ci, label = s["reward"]["mean"], s["reward"]["ci"], "mean judge score (95% CI)"
        elif s["name"] in wins:
            y, y_ci, label = wins[s["name"]]["win_rate"], None, f"win rate over {results['baseline']}"
        elif s["name"] == results["baseline"]:
            y, y_ci, label = 0.5, None, f"win rate over {results['baseline']}"
        else:
            y, y_ci, label = None, None, "no judge"
        rows.append({"name": s["name"], "is_reference": s["is_reference"], "y": y, "y_ci": y_ci, "y_label": label,
                     **{k: s["kl"][k] for k in ("k1", "k1_ci", "k3", "k3_ci")}})
    if not rows:
        return None
    scored = [r for r in rows if r["y"] is not None]
    for r, p in zip(scored, pareto([(r["k1"], r["y"]) for r in scored])):
        r["pareto"] = p
    return rows
