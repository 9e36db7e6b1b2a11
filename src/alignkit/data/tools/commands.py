"""``alignkit data SUBCOMMAND``: convert | inspect | pairs | dedup | select | split | synthesize.

    alignkit data convert hh-rlhf.jsonl --out prefs.jsonl            # --from auto|hh|ultrafeedback|trl|openai|csv|native
    alignkit data inspect prefs.jsonl --tokenizer MODEL --max-length 1024 --out inspect/
    alignkit data pairs scored.jsonl --out pairs.jsonl --strategy best_vs_worst --min-margin 0.5
    alignkit data dedup prefs.jsonl --out dedup.jsonl --threshold 0.8
    alignkit data select pool.jsonl --out picked.jsonl --target domain.jsonl --fraction 0.1
    alignkit data split prefs.jsonl --eval-fraction 0.1 --seed 0
    alignkit data synthesize --model CHAT_MODEL --n 1000 --out magpie.jsonl

Every subcommand that reads records takes ``--layout`` and ``--on-bad-row error|skip`` (skipped rows go
to ``<out stem>.rejects.jsonl``, counted) and prints what it read, kept and dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignkit import help_text as H
from alignkit.errors import ConfigError, DataError
from alignkit.models.hub import OFFLINE_HELP

# Each command imports what it runs inside its handler: building the parser (every `alignkit ...` call, `--help`
# included) loads this module, and must not load the models, data readers and trainers of every other command.


def add_parsers(sub) -> None:
    d = sub.add_parser("data", help="convert, inspect, pair, dedup, select, split or synthesize data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _convert_parser(dsub)
    _inspect_parser(dsub)
    _pairs_parser(dsub)
    _dedup_parser(dsub)
    _select_parser(dsub)
    _split_parser(dsub)
    _synthesize_parser(dsub)


def _reading(p: argparse.ArgumentParser, out_help: str = "output file (.jsonl, .parquet or .csv)") -> None:
    p.add_argument("data", help="input records (.jsonl, .json, .parquet, .csv or a save_to_disk folder)")
    p.add_argument("--out", required=out_help.startswith("output file"), help=out_help)
    p.add_argument("--layout", default=None, help=H.LAYOUT)
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help=H.BAD_ROW)


def _read(args: argparse.Namespace, rejects_near: Path):
    from alignkit.console import setup_console_logging
    from alignkit.data.io import read_records

    setup_console_logging()
    rejects = rejects_near.with_name(rejects_near.stem + ".rejects.jsonl")
    return read_records(args.data, layout=args.layout, on_bad_row=args.on_bad_row, rejects_path=rejects).records


def _write(records, path: str) -> Path:
    from alignkit.data.io import write_records

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_records(records, out)


# --------------------------------------------------------------------------------------- convert
def _convert_parser(dsub) -> None:
    from alignkit.data.tools.converters import FORMATS, ON_EMPTY

    p = dsub.add_parser("convert", help="public layouts (HH-RLHF, UltraFeedback, TRL, OpenAI, OpenAssistant, CSV) -> alignkit",
                        description="alignkit data convert IN --out OUT.jsonl [--from FORMAT]")  # fmt: skip
    p.add_argument("data", help="input rows (.jsonl, .json, .parquet, .csv, a save_to_disk folder or a Hub dataset)")
    p.add_argument("--out", required=True, help=".jsonl (alignkit native), .parquet or .csv")
    p.add_argument("--from", dest="fmt", default="auto", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--columns", default=None, help="rename columns first: prompt=question,chosen=good,...")
    p.add_argument("--score-key", default=None, help="ultrafeedback: the score field of each completion")
    p.add_argument("--split", default="train", help="the split of a save_to_disk DatasetDict")
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help=H.BAD_ROW)
    p.add_argument("--on-empty", default="keep", choices=ON_EMPTY,
                   help="records with an empty reply: keep them (counted in the summary) or skip them "
                        "(to the rejects file as empty_reply, counted)")  # fmt: skip
    p.set_defaults(fn=convert_command)


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"--columns must look like prompt=question,chosen=good; got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def convert_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.converters import convert

    result = convert(args.data, args.out, args.fmt, columns=_columns(args.columns), score_key=args.score_key,
                     on_bad_row=args.on_bad_row, on_empty=args.on_empty, split=args.split,
                     show_progress=True)  # fmt: skip
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------- inspect
def _inspect_parser(dsub) -> None:
    p = dsub.add_parser("inspect", help="counts, lengths, labels, length bias, duplicates, truncation",
                        description="alignkit data inspect IN [--tokenizer PATH --max-length N] [--out DIR]")  # fmt: skip
    _reading(p, out_help="folder for inspection.json (every figure of the table) and the histograms "
                          "prompt_lengths.png, response_lengths.png and scores.png (default: <stem>.inspect/ next "
                          "to the input); with --on-bad-row skip also data.rejects.jsonl")
    p.add_argument("--tokenizer", default=None, help="count tokens with this tokenizer (default: whitespace words)")
    p.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    p.add_argument("--max-length", type=int, default=None, help="report the truncation this limit causes")
    p.add_argument("--chat-template", default="auto", choices=["auto", "always", "never"], help=H.CHAT_TEMPLATE)
    p.set_defaults(fn=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.inspection import format_table, inspect_data

    out = Path(args.out) if args.out else Path(args.data).with_name(Path(args.data).stem + ".inspect")
    records = _read(args, out / "data")
    tokenizer = None
    if args.tokenizer:
        from alignkit.models.load import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    result = inspect_data(records, tokenizer=tokenizer, max_length=args.max_length, chat_template=args.chat_template,
                          show_progress=True)  # fmt: skip
    print(format_table(result.report))
    paths = result.save(out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


# ----------------------------------------------------------------------------------------- pairs
def _pairs_parser(dsub) -> None:
    from alignkit.data.transforms_pairs import PAIR_STRATEGIES

    p = dsub.add_parser("pairs", help="pairs from ranked or scored lists (the `pairs` transform)",
                        description="alignkit data pairs IN --out OUT [--strategy S] [--min-margin M]")  # fmt: skip
    _reading(p)
    p.add_argument("--strategy", default="best_vs_worst", choices=PAIR_STRATEGIES,
                   help="which pairs each list gives: the best vs the worst response, the best vs a seeded pick "
                        "among the worse ones, or every strictly ordered pair (all_pairs)")
    p.add_argument("--min-margin", type=float, default=0.0, help="drop pairs whose score (or rank) gap is smaller")
    p.add_argument("--seed", type=int, default=0, help="best_vs_random's draw")
    p.set_defaults(fn=pairs_command)


def pairs_command(args: argparse.Namespace) -> int:
    from alignkit.data.transforms import format_report, pairs

    records = _read(args, Path(args.out))
    out, report = pairs(records, strategy=args.strategy, min_margin=args.min_margin, seed=args.seed)
    print(format_report(report))
    if not out:
        raise DataError("pairs: no pairs left (see the counts above); nothing written")
    print(f"wrote {len(out)} pairs to {_write(out, args.out)}")
    return 0


# ----------------------------------------------------------------------------------------- dedup
def _dedup_parser(dsub) -> None:
    p = dsub.add_parser("dedup", help="remove exact and near-duplicate prompts (MinHash), with a report",
                        description="alignkit data dedup IN --out OUT [--threshold 0.8] [--report R.jsonl]")  # fmt: skip
    _reading(p)
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of shingle sets")
    p.add_argument("--shingle", default="char", choices=["char", "word"],
                   help="compare prompts by character n-grams (default) or word n-grams")
    p.add_argument("--ngram", type=int, default=None, help="shingle length (default: 5 chars or 3 words)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    p.add_argument("--exact-only", action="store_true", help="only exact duplicates (after normalising)")
    p.add_argument("--keep-same-prompt", action="store_true",
                   help="keep records whose prompt is identical to a kept one (several pairs per prompt)")
    p.add_argument("--report", default=None, help="JSONL of removed records (default: <out stem>.removed.jsonl)")
    p.add_argument("--seed", type=int, default=0, help=H.seed("the MinHash permutations"))
    p.set_defaults(fn=dedup_command)


def dedup_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.common import counts, write_jsonl
    from alignkit.data.tools.duplicates import dedup

    records = _read(args, Path(args.out))
    result = dedup(records, near=not args.exact_only, threshold=args.threshold, shingle=args.shingle,
                   ngram=args.ngram, num_perm=args.num_perm, keep_same_prompt=args.keep_same_prompt,
                   seed=args.seed, show_progress=True)  # fmt: skip
    out = _write(result.kept, args.out)
    report = Path(args.report) if args.report else out.with_name(out.stem + ".removed.jsonl")
    write_jsonl(result.removed, report)
    print(f"dedup: {len(records)} records in -> {len(result.kept)} out; removed: {counts(result.report['removed'])}")
    print(f"wrote {out}; what was removed and why: {report}")
    return 0


# ---------------------------------------------------------------------------------------- select
def _select_parser(dsub) -> None:
    p = dsub.add_parser("select", help="ZIP-FIT (gzip NCD to a target set), Deita, MIG, random or length selection",
                        description="alignkit data select IN --out OUT --target T --fraction 0.1")  # fmt: skip
    _reading(p)
    p.add_argument("--method", default="zipfit", choices=["zipfit", "deita", "mig", "random", "length"],
                   help="zipfit: closest to --target by gzip compression distance; deita: scorer models' complexity "
                        "× quality with a diversity filter; mig: greedy information gain over meta tags; random: a "
                        "seeded sample; length: the longest")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--fraction", type=float, help="keep this fraction of the records")
    size.add_argument("--n", type=int, help="keep this many records")
    p.add_argument("--target", default=None, help="zipfit: target examples (.txt: one per line; or records)")
    p.add_argument("--text", default="all", choices=["all", "prompt", "responses"], help="what to compare")
    p.add_argument("--max-targets", type=int, default=200, help="zipfit: use a seeded sample of this many targets")
    p.add_argument("--scores", default=None, help="JSONL of every record's score (default: <out stem>.scores.jsonl)")
    p.add_argument("--seed", type=int, default=0, help=H.seed("random selection and of the --max-targets sample"))
    p.add_argument("--scorer", default=None,
                   help="deita: complexity scorer model (e.g. hkust-nlp/deita-complexity-scorer); not needed when "
                        "every record's meta has complexity and quality")
    p.add_argument("--quality-scorer", default=None,
                   help="deita: quality scorer model (e.g. hkust-nlp/deita-quality-scorer; default: --scorer)")
    p.add_argument("--embedder", default=None,
                   help="deita: model whose mean last hidden state embeds records (default: --scorer); mig: embeds "
                        "the labels for the label graph (default: no graph)")
    p.add_argument("--diversity-threshold", type=float, default=0.9,
                   help="deita: skip a record this cosine-similar to a kept one (1 = no diversity filter)")
    p.add_argument("--tags-key", default="tags", help="mig: the meta field holding each record's labels (a list)")
    p.add_argument("--quality-key", default=None, help="mig: the meta field with each record's quality (default 1)")
    p.add_argument("--label-threshold", type=float, default=0.9,
                   help="mig: labels whose embeddings are this cosine-similar are joined in the label graph")
    p.add_argument("--mig-exponent", type=float, default=0.8, help="mig: b of the concave Φ(m) = (m + 1e-6)^b")
    p.set_defaults(fn=select_command)


def read_targets(path: str, text: str) -> list[str]:
    """Target texts: a .txt file (one per non-empty line), rows with a ``text`` column, or records."""
    from alignkit.data.io import iter_rows, read_records, read_text_lines
    from alignkit.data.tools.common import record_text

    p = Path(path)
    if p.suffix.lower() == ".txt":
        lines = [x for x in read_text_lines(p) if x.strip()]
    else:
        first = next(iter_rows(p), (0, {}))[1]
        lines = ([str(row["text"]) for _, row in iter_rows(p) if row.get("text")] if "text" in first
                 else [record_text(r, text) for r in read_records(p).records])  # fmt: skip
    if not lines:
        raise DataError(f"{path}: no target texts")
    return lines


def select_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.common import write_jsonl
    from alignkit.data.tools.selection import select

    records = _read(args, Path(args.out))
    targets = read_targets(args.target, args.text) if args.method == "zipfit" and args.target else None
    sel = select(records, method=args.method, fraction=args.fraction, n=args.n, targets=targets, text=args.text,
                 max_targets=args.max_targets, seed=args.seed, show_progress=True, scorer=args.scorer,
                 quality_scorer=args.quality_scorer, embedder=args.embedder,
                 diversity_threshold=args.diversity_threshold, tags_key=args.tags_key, quality_key=args.quality_key,
                 label_threshold=args.label_threshold, mig_exponent=args.mig_exponent)  # fmt: skip
    out = _write(sel.kept, args.out)
    scores = Path(args.scores) if args.scores else out.with_name(out.stem + ".scores.jsonl")
    write_jsonl(sel.score_rows(), scores)
    r = sel.report
    print(f"select ({r['method']}): {r['records_in']} records in -> {r['records_out']} kept, {r['dropped']} not "
          f"selected; mean score kept {r['mean_score_kept']:g} vs all {r['mean_score_all']:g}")  # fmt: skip
    print(f"wrote {out}; every record's score: {scores}")
    return 0


# ----------------------------------------------------------------------------------------- split
def _split_parser(dsub) -> None:
    p = dsub.add_parser("split", help="train/eval split by prompt (no prompt in both), seeded",
                        description="alignkit data split IN [--eval-fraction 0.1] [--seed 0]")  # fmt: skip
    p.add_argument("data", help="input records (.jsonl, .json, .parquet, .csv or a save_to_disk folder)")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="share of the prompts (with all their records) that go to the eval file (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help=H.seed("the split"))
    p.add_argument("--train-out", default=None, help="default: <stem>.train.jsonl next to the input")
    p.add_argument("--eval-out", default=None, help="default: <stem>.eval.jsonl next to the input")
    p.add_argument("--layout", default=None, help=H.LAYOUT)
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help=H.BAD_ROW)
    p.set_defaults(fn=split_command)


def split_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.splitting import split

    src = Path(args.data)
    train_out = args.train_out or str(src.with_name(src.stem + ".train.jsonl"))
    eval_out = args.eval_out or str(src.with_name(src.stem + ".eval.jsonl"))
    parts = split(_read(args, Path(train_out)), args.eval_fraction, args.seed)
    r = parts.report
    print(f"split: {r['records_in']} records -> train {r['train_records']} ({r['train_prompts']} prompts), "
          f"eval {r['eval_records']} ({r['eval_prompts']} prompts); no prompt in both")  # fmt: skip
    print(f"wrote {_write(parts.train, train_out)} and {_write(parts.eval, eval_out)}")
    return 0


# ------------------------------------------------------------------------------------ synthesize
def _synthesize_parser(dsub) -> None:
    p = dsub.add_parser("synthesize", help="Magpie: instructions and responses from a chat model alone",
                        description="alignkit data synthesize --model PATH --n 1000 --out OUT.jsonl")  # fmt: skip
    p.add_argument("--model", required=True, help="a chat model (folder or Hub id) whose tokenizer has a chat template")
    p.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    p.add_argument("--n", type=int, required=True, help="instructions to sample (before filtering)")
    p.add_argument("--out", required=True,
                   help="records (.jsonl, .parquet or .csv): each kept instruction with its --k responses")
    p.add_argument("--k", type=int, default=1, help="responses per instruction")
    p.add_argument("--system", default=None, help="a system prompt to condition both steps on")
    p.add_argument("--max-instruction-tokens", type=int, default=128,
                   help="the most tokens of an instruction (longer ones are cut and dropped, counted)")
    p.add_argument("--max-response-tokens", type=int, default=512,
                   help="the most tokens of a response (longer ones are cut and dropped, counted)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the instructions")
    p.add_argument("--top-p", type=float, default=1.0, help=H.TOP_P)
    p.add_argument("--response-temperature", type=float, default=None, help="default: 0 (greedy) if k=1, else 1")
    p.add_argument("--keep-unfinished", action="store_true", help="keep texts cut at the token limit")
    p.add_argument("--seed", type=int, default=0, help=H.seed("sampling"))
    p.add_argument("--batch-size", type=int, default=16, help=H.batch("prompts"))
    p.add_argument("--dtype", default="float32", help=H.DTYPE)
    p.add_argument("--trust-remote-code", action="store_true", help=H.TRUST_REMOTE_CODE)
    p.set_defaults(fn=synthesize_command)


def synthesize_command(args: argparse.Namespace) -> int:
    from alignkit.data.tools.common import counts
    from alignkit.data.tools.synthesis import synthesize
    from alignkit.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    result = synthesize(model, tokenizer, args.n, k=args.k, system=args.system,
                        max_instruction_tokens=args.max_instruction_tokens,
                        max_response_tokens=args.max_response_tokens, temperature=args.temperature,
                        top_p=args.top_p, response_temperature=args.response_temperature,
                        keep_unfinished=args.keep_unfinished, seed=args.seed, batch_size=args.batch_size,
                        show_progress=True)  # fmt: skip
    r = result.report
    print(f"synthesize: pre-query template {r['pre_query_template']!r}; {r['instructions_sampled']} instructions "
          f"sampled, {r['instructions_kept']} kept -> {r['records']} records, {r['responses']} responses; "
          f"dropped: {counts(r['dropped'])}")  # fmt: skip
    if not result.records:
        raise DataError("synthesize: every sample was filtered out (see the counts above); nothing written")
    print(f"wrote {_write(result.records, args.out)}")
    return 0
