"""The files of one ``alignkit eval``: ``results.json``, ``report.html``, PNG figures, ``outputs/*.jsonl``;
and the short console table (`summary_table`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.eval import plots
from alignkit.eval import report_html as H
from alignkit.eval.systems import System, safe_name, write_outputs
from alignkit.io_atomic import atomic_write_bytes, atomic_write_text
from alignkit.rewards.judges import plain

METHODS_NOTE = (
    "Win rates count ties as ½ and a soft verdict as its probability. Wilson intervals treat comparisons as independent "
    "binomial trials (conservative with ties or soft verdicts); bootstrap intervals resample prompts (all samples of a "
    "prompt together). The length-controlled win rate is AlpacaEval 2's GLM, P(win) = σ(θ + φ·tanh(Δlen/sd) + ψ·γ_prompt) "
    "with the length term switched off, γ the prompts' difficulty fitted jointly over all systems and the length and "
    "difficulty terms regularised towards the other systems (docs/evaluation.md). A pairwise LLM judge is asked every "
    "comparison in both orders and its two verdicts are averaged; with PORTIA, comparisons whose verdict flips with "
    "the order are asked again with both answers split into aligned parts and interleaved. Ratings: Bradley–Terry by the MM algorithm "
    "(one virtual tie per pair that met) shown on the Elo scale (1000 + 400·θ/ln10, the baseline at 1000), and "
    "online Elo (K = 16, mean over 100 random orders); intervals from bootstrapping comparisons within each match. KL(π ‖ π_ref) "
    "per sample: k1 = mean log-ratio, k3 = mean of exp(−r) − 1 + r, over samples from π, with normal 95% CIs.")


def _wr(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in results["win_rates"]}


def summary_table(results: dict[str, Any]) -> str:
    """One line per system: mean score, KL k1 / k3, win rate over the baseline with its Wilson interval."""
    wins = _wr(results)
    head = (f"{'system':<18} | {'score ± 95% CI':>16} | {'KL k1 ± CI':>13} | {'KL k3 ± CI':>13} | "
            f"{'win rate [Wilson 95%]':>23} | {'LC win':>6}")
    lines = [head, "-" * len(head)]
    for s in results["systems"]:
        r, kl, w = s["reward"], s["kl"], wins.get(s["name"])
        score = f"{r['mean']:7.3f} ± {r['ci']:<6.3f}" if r else "–"
        k1 = f"{kl['k1']:5.2f} ± {kl['k1_ci']:<5.2f}" if kl else "–"
        k3 = f"{kl['k3']:5.2f} ± {kl['k3_ci']:<5.2f}" if kl else "–"
        if w:
            v = w["win_rate"]
            win = f"{v['win_rate']:.3f} [{v['wilson'][0]:.3f}, {v['wilson'][1]:.3f}]"
            lc = f"{v['length_controlled']['win_rate']:.3f}" if v["length_controlled"] else "–"
        else:
            win, lc = ("baseline" if s["name"] == results.get("baseline") else "–"), "–"
        lines.append(f"{s['name'][:18]:<18} | {score:>16} | {k1:>13} | {k3:>13} | {win:>23} | {lc:>6}")
    return "\n".join(lines)


def _systems_section(results) -> list[str]:
    wins = _wr(results)
    rows = []
    for s in results["systems"]:
        w = wins.get(s["name"], {}).get("win_rate")
        r, kl = s["reward"] or {}, s["kl"] or {}
        rows.append([s["name"], s["answers"], r.get("mean"), r.get("ci"), s["mean_length"], kl.get("k1"),
                     kl.get("k1_ci"), kl.get("k3"), kl.get("k3_ci"), w and w["win_rate"], w and w["wilson"],
                     w and w["bootstrap"], w and w["length_controlled"] and w["length_controlled"]["win_rate"]])
    header = ["system", "answers", "mean score", "± 95%", f"mean length ({results['length_unit']})", "KL k1", "±",
              "KL k3", "±", f"win rate vs {results.get('baseline')}", "Wilson 95%", "bootstrap 95%", "length-controlled"]
    out = [H.table(header, rows)]
    out.append(H.para("Sources: " + "; ".join(f"{s['name']} = {s['source']}" for s in results["systems"]), "note"))
    return out


def _win_section(results, figures) -> list[str]:
    out = [H.image(figures["win_rates"], "win rates")] if "win_rates" in figures else []
    rows, subset_rows, bias_rows = [], [], []
    for w in results["win_rates"]:
        v, lc = w["win_rate"], w["win_rate"]["length_controlled"]
        wtl = f"{v['wins']}/{v['ties']}/{v['losses']}" + (f" ({v['soft']} soft)" if v.get("soft") else "")
        rows.append([w["name"], v["n"], wtl, v["win_rate"], v["wilson"], v["bootstrap"], v["clusters"],
                     lc and lc["win_rate"], lc and lc["bootstrap"], lc and lc["coef"]["length"],
                     lc and lc["mean_length_diff"]])
        for name, sv in v["subsets"].items():
            subset_rows.append([w["name"], name, sv["n"], sv["win_rate"], sv["wilson"], sv["bootstrap"]])
        if w["position_bias"]:
            b, pb = w["position_bias"], w.get("position_bias_portia")
            bias_rows.append([w["name"], b["n"], b["consistency"], b["first_position_win_rate"], b["win_rate_a_first"],
                              b["win_rate_a_second"], b["order_averaged_win_rate"], b["mean_p_a"]]
                             + ([pb["consistency"], pb["order_averaged_win_rate"], pb["rejudged"], pb["fixed"]]
                                if pb else []))
    out.append(H.table(["system", "comparisons", "W/T/L", "win rate", "Wilson 95%", "bootstrap 95%", "prompts",
                        "length-controlled", "LC bootstrap 95%", "length coef φ (tanh of Δ/sd)",
                        f"mean length diff ({results['length_unit']})"], rows))
    first = results["win_rates"][0]["win_rate"] if results["win_rates"] else None
    if first and first.get("ci_methods"):
        out.append(H.para("Intervals: " + "; ".join(f"{k}: {v}" for k, v in first["ci_methods"].items()) + ".",
                          "note"))
    lcm = results.get("length_control")
    if lcm:
        reg = {"pooled systems": "regularised towards the other systems (pooled, λ = {lam})",
               "baseline variants": "regularised towards the baseline's length variants {anchors} (λ = {lam})",
               "none": "not regularised (one system: nothing to pool)"}[lcm["regulariser"]]
        out.append(H.para(f"Length control: {lcm['formula']}; " + ("prompt difficulty fitted jointly over "
                          f"{lcm['instructions']} prompts; " if lcm["difficulty"] else "no difficulty term; ")
                          + reg.format(lam=lcm["lambda"], anchors=lcm.get("anchors")) + ".", "note"))
    if subset_rows:
        out += ["<h3>Per subset</h3>", H.table(["system", "subset", "n", "win rate", "Wilson 95%", "bootstrap 95%"],
                                               subset_rows)]
    if bias_rows:
        b = results["position_bias"]
        pb = b.get("portia")
        bias_rows.append(["all comparisons", b["n"], b["consistency"], b["first_position_win_rate"],
                          b["win_rate_a_first"], b["win_rate_a_second"], b["order_averaged_win_rate"], b["mean_p_a"]]
                         + ([pb["consistency"], pb["order_averaged_win_rate"], pb["rejudged"], pb["fixed"]]
                            if pb else []))
        head = ["system", "comparisons", "consistency", "first-position win rate", "win rate shown first",
                "win rate shown second", "order-averaged win rate", "mean P(win)"]
        if pb:
            head += ["consistency with PORTIA", "win rate with PORTIA", "re-judged", "made consistent"]
        out += ["<h3>Position bias (comparisons seen in both orders)</h3>", H.table(head, bias_rows)]
    return out


def _tournament_section(results, figures) -> list[str]:
    t = results["tournament"]
    calls = f", {t['judge_calls']} judge calls" if t["judge_calls"] is not None else ""
    out = [H.para(f"{t['format']}: {t['matches']} matches (a round-robin needs {t['round_robin_matches']}), "
                  f"{t['comparisons']} comparisons{calls}"
                  + (f"; champion: {t['champion']}" if t["champion"] else "") + ".")]
    if t["rounds"]:
        lines = []
        for n, rnd in enumerate(t["rounds"], 1):
            parts = [f"{m['bye']} (bye)" if "bye" in m else f"{m['a']} vs {m['b']}: {m['score_a']:.3f} → {m['winner']}"
                     for m in rnd]
            lines.append(f"round {n}: " + "; ".join(parts))
        out.append(H.pre("\n".join(lines)))
    board = t["ratings"]["leaderboard"]
    out.append(H.image(figures["leaderboard"], "leaderboard"))
    out.append(H.table(["rank", "system", "Bradley–Terry (Elo scale)", "95% CI", "online Elo", "95% CI",
                        "win rate (all matches)", "comparisons"],
                       [[r["rank"], r["system"], r["bt_elo"], r["bt_elo_ci"], r["elo"], r["elo_ci"], f"{r['win_rate']:.3f}",
                         r["comparisons"]] for r in board], digits=1))
    return out


def _frontier_section(results, figures) -> list[str]:
    rows = results["frontier"]
    out = [H.image(figures["frontier"], "reward-KL frontier")] if "frontier" in figures else []
    out.append(H.table(["system", rows[0]["y_label"], "± 95%", "KL k1", "±", "KL k3", "±", "Pareto-optimal"],
                       [[r["name"], r["y"], r["y_ci"], r["k1"], r["k1_ci"], r["k3"], r["k3_ci"], r.get("pareto")]
                        for r in rows]))
    if results.get("kl_note"):
        out.append(H.para(results["kl_note"], "note"))
    return out


def _accuracy_section(results) -> list[str]:
    rows = []
    for s in results["systems"]:
        a = s["preference_accuracy"]
        if a:
            imp, tok = a["implicit_reward"] or {}, a["likelihood_per_token"] or {}
            rows.append([s["name"], a["n"], imp.get("accuracy"), imp.get("wilson"), a["likelihood"]["accuracy"],
                         a["likelihood"]["wilson"], tok.get("accuracy"), a["mean_implicit_margin"], a["mean_margin"]])
    return [H.table(["system", "pairs", "implicit-reward acc ρ(w) > ρ(l)", "Wilson 95%", "likelihood acc s(w) > s(l)",
                     "Wilson 95%", "per-token likelihood acc", "mean ρ(w) − ρ(l)", "mean s(w) − s(l)"], rows),
            H.para("ρ(y) = log π(y) − log π_ref(y) (DPO's implicit reward without β); s(y) = log π(y), summed over "
                   "the answer's tokens. The reference has no implicit reward.", "note")]


def build_figures(results, scores, lens) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    wr = [{"name": w["name"], "win_rate": w["win_rate"]} for w in results["win_rates"]]
    if wr:
        figs["win_rates"] = plots.win_rates(wr, results["baseline"])
    if results["tournament"]:
        figs["leaderboard"] = plots.leaderboard(results["tournament"]["ratings"]["leaderboard"])
    front = [r for r in results["frontier"] or [] if r["y"] is not None]
    if front:
        figs["frontier"] = plots.frontier(front, front[0]["y_label"])
    if scores:
        figs["scores"] = plots.histograms({n: [v for r in s for v in r] for n, s in scores.items()},
                                          "judge score", "Score distributions")
    figs["lengths"] = plots.histograms({n: [v for r in s for v in r] for n, s in lens.items()},
                                       f"answer length ({results['length_unit']})", "Length distributions")
    return figs


def write_eval_report(results: dict[str, Any], systems: dict[str, System], scores: dict[str, list[list[float]]],
                      lens: dict[str, list[list[int]]], out_dir: Path) -> Path:
    """Write ``results.json``, the PNGs, ``outputs/<system>.jsonl`` and ``report.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, s in systems.items():
        write_outputs(s, out_dir / "outputs" / f"{safe_name(name)}.jsonl", scores.get(name))
    figures = build_figures(results, scores, lens)
    for name, png in figures.items():
        atomic_write_bytes(out_dir / f"{name}.png", png)
    results["files"] = sorted([f"{n}.png" for n in figures] + ["results.json", "report.html"])
    H.write_results(results, out_dir / "results.json")
    judge = results["judge"]
    st = results["settings"]
    if results.get("judgments"):
        j = results["judgments"]
        skipped = sum(j["skipped"].values())
        sub = (f"{len(systems)} systems; {j['comparisons']} comparisons from {j['read']} judgments in {j['source']}"
               + (f" ({skipped} rows skipped)" if skipped else "") + f"; baseline: {results['baseline']}; "
               f"{results['seconds']} s")
    else:
        sub = (f"{len(systems)} systems; {st['n_prompts'] or 'given'} prompts x {st['samples']} samples; judge: "
               f"{judge['name'] + ' (' + judge['kind'] + ', ' + str(judge['calls']) + ' calls)' if judge else 'none'}; "
               f"baseline: {results['baseline']}; {results['seconds']} s")
    sections: list[tuple[str, list[str]]] = []
    if results.get("command"):
        sections.append(("Command", [H.pre(results["command"])]))
    if results.get("judgments"):
        j = results["judgments"]
        skipped = ", ".join(f"{n} {reason}" for reason, n in j["skipped"].items()) or "none"
        sections.append(("Judgments", [H.para(
            f"{j['source']}: {j['rows']} rows, {j['read']} judgments read, skipped: {skipped}"
            + (f" (rows in {j['rejects']})" if j["rejects"] else "") + f"; {j['comparisons']} comparisons, "
            f"{j['in_both_orders']} seen in both orders (averaged, and giving the position-bias figures); "
            f"{j['soft']} soft verdicts (counted as their probability).")]))
    sections.append(("Systems", _systems_section(results)))
    if results["win_rates"]:
        sections.append((f"Win rates over {results['baseline']}", _win_section(results, figures)))
    if results["tournament"]:
        sections.append(("Tournament and leaderboard", _tournament_section(results, figures)))
    if results["frontier"]:
        sections.append(("Reward–KL frontier", _frontier_section(results, figures)))
    if any(s["preference_accuracy"] for s in results["systems"]):
        sections.append(("Preference and ranking accuracy", _accuracy_section(results)))
    dists = [H.image(figures[k], k) for k in ("scores", "lengths") if k in figures]
    sections.append(("Score and length distributions", dists))
    examples = [H.pre("\n".join(f"[{s['name']}] {plain(e['prompt'])} ⟶ {e['completion']}"
                                for s in results["systems"] for e in s["examples"]))]
    sections.append(("Examples (first answers)", examples))
    sections.append(("Methods", [H.para(METHODS_NOTE, "note")]))
    path = out_dir / "report.html"
    atomic_write_text(path, H.page("alignkit evaluation", sections, sub))
    return path
