"""``alignkit eval`` (systems: samples, judges, win rates, tournament, KL, frontier) and ``alignkit report``
(training runs' metrics), each writing ``results.json`` and a self-contained ``report.html``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from alignkit import help_text as H
from alignkit.errors import ConfigError

# Each command imports what it runs inside its handler: building the parser (every `alignkit ...` call, `--help`
# included) loads this module, and must not load the models, data readers and trainers of every other command.

EVAL_USAGE = ("alignkit eval --models A_DIR|A.jsonl [B ...] [--reference REF] --prompts FILE|module:function "
              "--judge rule:module:function|reward_model:PATH|llm:PATH --samples N --out DIR | "
              "alignkit eval --judgments FILE [--baseline NAME] --out DIR | "
              "alignkit eval --diagnose ranking|entanglement|token-shift [--models ...] [--reference REF] "
              "[--preferences FILE | --prompts FILE] --out DIR")


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate models or outputs: win rates, tournament, KL, reward-KL frontier",
                       description=EVAL_USAGE)
    e.add_argument("--models", nargs="+", default=None,
                   help="model folders (sampled) and/or outputs files (JSONL/CSV/Parquet rows with prompt and "
                        "completion or completions)")
    e.add_argument("--judgments", default=None,
                   help="judgments someone already made instead of --models/--judge: JSONL/CSV/Parquet rows with "
                        "prompt, system_a, system_b, output_a, output_b and outcome (1 / 0.5 / 0: A wins / tie / "
                        "B wins) or p_a (P(A wins)); system_a was shown first")
    e.add_argument("--on-bad-row", default="error", choices=["error", "skip"],
                   help="--judgments rows that fail to parse: stop at the first (error) or skip, count and write "
                        "them to <file>.rejects.jsonl (skip)")
    e.add_argument("--lc-anchors", nargs="+", default=(),
                   help="systems that are the baseline's own verbose/concise variants: regularise the "
                        "length-controlled win rate towards them, as AlpacaEval does (default: the other systems)")
    e.add_argument("--portia", action="store_true",
                   help="LLM judge: re-ask comparisons whose verdict flips with the order with both answers split "
                        "into aligned parts and interleaved (PORTIA); the report shows both consistencies")
    e.add_argument("--names", nargs="+", default=None, help="one display name per --models entry")
    e.add_argument("--reference", default=None,
                   help="reference model: sampled as the baseline system and used for KL and implicit rewards")
    e.add_argument("--prompts", default=None,
                   help="prompts for model folders: a .txt (one per line), rows with `prompt` (and `subset`), or "
                        "module:function called as fn(n_prompts, seed=prompt_seed)")
    e.add_argument("--n-prompts", type=int, default=None, help="use the first N prompts (needed for a function)")
    e.add_argument("--prompt-seed", type=int, default=0, help="seed passed to a prompts function")
    e.add_argument("--judge", default=None, help="rule:module:function | reward_model:PATH | llm:PATH")
    e.add_argument("--judge-template", default=None,
                   help="file with the LLM judge's pairwise template ({prompt}, {answer_a}, {answer_b})")
    e.add_argument("--samples", type=int, default=2, help="answers per prompt from each model (default 2)")
    e.add_argument("--max-new-tokens", type=int, default=64, help=H.MAX_NEW_TOKENS)
    e.add_argument("--temperature", type=float, default=1.0, help=H.TEMPERATURE)
    e.add_argument("--top-p", type=float, default=1.0, help=H.TOP_P)
    e.add_argument("--baseline", default=None, help="system the win rates are against (default: reference)")
    e.add_argument("--tournament", default="round-robin", choices=["round-robin", "single-elimination", "none"],
                   help="with more than two systems: every pair (round-robin), a bracket of S - 1 matches "
                        "(single-elimination) or none; ratings and leaderboard from its comparisons")
    e.add_argument("--preferences", default=None,
                   help="held-out preference pairs: implicit-reward and likelihood ranking accuracy per model")
    e.add_argument("--subset-by", default=None, help="module:function mapping a prompt to its subset name")
    e.add_argument("--no-reference-system", action="store_true",
                   help="use --reference only for KL and implicit rewards, not as a sampled system")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for win-rate intervals")
    e.add_argument("--rating-bootstrap", type=int, default=200, help="bootstrap resamples for ratings")
    e.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    e.add_argument("--batch-size", type=int, default=32, help=H.batch("prompts (sampling and judging)"))
    e.add_argument("--dtype", default="float32", help=H.DTYPE)
    e.add_argument("--out", required=True, help="folder for results.json, report.html, figures, outputs/")
    _diagnostic_args(e)
    e.set_defaults(fn=eval_command)

    r = sub.add_parser("report", help="HTML report of training runs (loss, rewards, margins, KL over steps)",
                       description="alignkit report RUN_DIR [RUN_DIR ...] [--out DIR]")
    r.add_argument("runs", nargs="+", help="run folders written by `alignkit train` (with metrics.jsonl)")
    r.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report for one run, else ./report)")
    r.set_defaults(fn=report_command)


def _diagnostic_args(e) -> None:
    e.add_argument("--diagnose", default=None, choices=["ranking", "entanglement", "token-shift"],
                   help="run one diagnostic instead of the evaluation: idealised ranking accuracy of --reference on "
                        "--preferences (ranking), chosen/rejected gradient inner products of --models on "
                        "--preferences (entanglement), base (--reference) ranks of --models' answers to --prompts "
                        "(token-shift); docs/evaluation.md")
    e.add_argument("--beta", type=float, nargs="+", default=[0.1],
                   help="ranking: β of the DPO optimum imagined, one for all or one per --models entry (default 0.1)")
    e.add_argument("--alpha", type=float, default=None,
                   help="ranking: P(chosen ≻ rejected) for every pair (default: each record's p, else its scores)")
    e.add_argument("--alpha-temperature", type=float, default=1.0,
                   help="ranking: α = σ((s_w − s_l) / T) for records with scores and no p")
    e.add_argument("--params", default=None,
                   help="entanglement: only parameters whose names match this regular expression (default all)")
    e.add_argument("--max-records", type=int, default=None, help="diagnostics: use the first N preference records")
    e.add_argument("--marginal-rank", type=int, default=3,
                   help="token-shift: base ranks 2..N count as marginal, higher as shifted (default 3)")


def diagnose_command(args: argparse.Namespace) -> int:
    from alignkit.eval import diagnose as D

    if args.judgments is not None:
        raise ConfigError("--diagnose reads models and data, not --judgments: give one of them")
    common = {"out_dir": args.out, "command": _command_line(), "dtype": args.dtype, "names": args.names}
    if args.diagnose == "ranking":
        r = D.diagnose_ranking(reference=args.reference, preferences=args.preferences, beta=args.beta,
                               models=args.models or (), alpha=args.alpha, alpha_temperature=args.alpha_temperature,
                               max_records=args.max_records, batch_size=args.batch_size, **common)
        print(f"{r['idealised'][0]['n']} pairs: reference ranking accuracy {r['reference_accuracy']:.3f}; idealised "
              + ", ".join(f"at β = {i['beta']:g} {i['accuracy']:.3f} [{i['wilson'][0]:.3f}, {i['wilson'][1]:.3f}]"
                          for i in r["idealised"]))
        for m in r["models"]:
            print(f"{m['name']}: ranking accuracy {m['likelihood']['accuracy']:.3f}, idealised at β = {m['beta']:g} "
                  f"{m['idealised_accuracy']:.3f}, gap {m['alignment_gap']:+.3f}")
    elif args.diagnose == "entanglement":
        r = D.diagnose_entanglement(models=args.models, preferences=args.preferences, params=args.params,
                                    max_records=args.max_records, **common)
        for m in r["models"]:
            print(f"{m['name']}: {len(m['pairs'])} pairs over {m['parameters']} parameters, mean cosine "
                  f"{m['mean_cosine']:.3f}; chosen falls {m['chosen_falls']:.3f}, rejected rises {m['rejected_rises']:.3f}")
    else:
        from alignkit.eval.systems import load_prompts

        if not args.prompts:
            raise ConfigError("--diagnose token-shift needs --prompts")
        prompts = load_prompts(args.prompts, args.n_prompts, args.prompt_seed)[0]
        r = D.diagnose_token_shift(reference=args.reference, models=args.models, prompts=prompts,
                                   max_new_tokens=args.max_new_tokens, marginal_rank=args.marginal_rank,
                                   batch_size=args.batch_size, **common)
        for m in r["models"]:
            print(f"{m['name']}: {m['positions']} positions; unshifted {m['unshifted']:.3f}, marginal "
                  f"{m['marginal']:.3f}, shifted {m['shifted']:.3f}")
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
    return 0


def _command_line() -> str:
    return "alignkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "alignkit"


def eval_command(args: argparse.Namespace) -> int:
    from alignkit.console import setup_console_logging
    from alignkit.eval.eval_report import summary_table
    from alignkit.eval.evaluate import evaluate

    setup_console_logging()
    if args.diagnose:
        return diagnose_command(args)
    if (args.models is None) == (args.judgments is None):
        raise ConfigError("alignkit eval needs --models (systems to sample or read) or --judgments FILE, one of them")
    if args.judgments is not None:
        from alignkit.eval.judgments import evaluate_judgments

        tournament = "none" if args.tournament == "none" else "round-robin"
        results = evaluate_judgments(args.judgments, baseline=args.baseline, tournament=tournament,
                                     on_bad_row=args.on_bad_row, lc_anchors=args.lc_anchors, seed=args.seed,
                                     n_boot=args.bootstrap, rating_boot=args.rating_bootstrap, out_dir=args.out,
                                     command=_command_line())
        return _print_summary(results, args.out, summary_table)
    template = Path(args.judge_template).read_text(encoding="utf-8") if args.judge_template else None
    results = evaluate(
        args.models, names=args.names, reference=args.reference, prompts=args.prompts, n_prompts=args.n_prompts,
        prompt_seed=args.prompt_seed, judge=args.judge, judge_template=template, samples=args.samples,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, baseline=args.baseline,
        tournament=args.tournament, preferences=args.preferences, subset_by=args.subset_by, seed=args.seed,
        n_boot=args.bootstrap, rating_boot=args.rating_bootstrap, batch_size=args.batch_size, dtype=args.dtype,
        include_reference=not args.no_reference_system, lc_anchors=args.lc_anchors, portia=args.portia,
        out_dir=args.out, command=_command_line())
    return _print_summary(results, args.out, summary_table)


def _print_summary(results: dict, out: str, summary_table) -> int:
    if results.get("judgments"):
        j = results["judgments"]
        skipped = ", ".join(f"{n} {reason}" for reason, n in j["skipped"].items())
        print(f"judgments: {j['read']} read from {j['source']}" + (f"; skipped {skipped} -> {j['rejects']}"
                                                                  if skipped else ""))
    print(summary_table(results))
    t = results["tournament"]
    if t:
        top = t["ratings"]["leaderboard"][0]
        print(f"tournament ({t['format']}): {t['matches']} matches, {t['comparisons']} comparisons; "
              f"leader {top['system']} (Bradley–Terry {top['bt_elo']:.0f})")
    if results["position_bias"]:
        b = results["position_bias"]
        print(f"judge position bias: consistency {b['consistency']:.3f}, "
              f"first-position win rate {b['first_position_win_rate']:.3f}"
              + (f"; with PORTIA {b['portia']['consistency']:.3f} ({b['portia']['rejudged']} re-judged)"
                 if b.get("portia") else ""))
    print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'report.html'}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from alignkit.eval.runs_report import format_runs, runs_report

    out = args.out or (str(Path(args.runs[0]) / "report") if len(args.runs) == 1 else "report")
    results = runs_report(args.runs, out, command=_command_line())
    print(format_runs(results))
    print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'report.html'}")
    return 0
