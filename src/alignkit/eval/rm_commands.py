"""``alignkit score`` and ``alignkit eval-rm``: reward models on data files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit import help_text as H
from alignkit.data.schema import chosen_rejected
from alignkit.errors import ConfigError, DataError, ModelError
from alignkit.io_atomic import atomic_write
from alignkit.models.hub import OFFLINE_HELP


def add_parsers(sub) -> None:
    s = sub.add_parser("score", help="add reward-model scores to every response of a data file",
                       description="alignkit score --reward-model PATH [PATH ...] --data FILE --out OUT.jsonl")
    _common(s)
    s.add_argument("--out", required=True, help="JSONL of records with `scores` (old labels move to meta)")
    s.add_argument("--aggregate", default="mean", choices=["mean", "min", "mean_minus_std"],
                   help="with several reward models (an ensemble): how to combine them")
    s.add_argument("--lam", type=float, default=1.0, help="λ of mean_minus_std")
    s.add_argument("--workers", type=int, default=0,
                   help='score on N Ray actors, each holding the reward model(s) (pip install "alignkit[ray]"); '
                        "0: in-process")
    s.set_defaults(fn=score_command)

    e = sub.add_parser("eval-rm", help="RewardBench-style evaluation of a reward model on preference pairs",
                       description="alignkit eval-rm --reward-model PATH --data PAIRS --out DIR")
    _common(e)
    e.add_argument("--out", default=None, help="report folder (default: <reward-model>/eval-<data stem>)")
    e.add_argument("--subset-field", default="subset", help="meta field (or `group`) naming each pair's subset")
    e.add_argument("--tie-rtol", type=float, default=None,
                   help="pairs whose rewards differ by at most rtol·max(|r_w|, |r_l|, 1) are ties, as are pairs of "
                        "identical responses (default: 1e-5; 1e-2 for --dtype bfloat16, 1e-3 for float16)")
    e.set_defaults(fn=eval_rm_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward-model", required=True, nargs="+", help="one reward model, or several (an ensemble)")
    p.add_argument("--data", required=True,
                   help="records whose responses get a reward (any layout `alignkit train` reads; eval-rm: pairs "
                        "or ranked lists, the best response counts as chosen)")
    p.add_argument("--batch-size", type=int, default=32, help=H.batch("records"))
    p.add_argument("--max-length", type=int, default=None, help=H.max_length("default: no limit"))
    p.add_argument("--layout", default=None, help=H.LAYOUT)
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help=H.BAD_ROW)
    p.add_argument("--dtype", default="float32", help=H.DTYPE)
    p.add_argument("--trust-remote-code", action="store_true", help=H.TRUST_REMOTE_CODE)
    p.add_argument("--offline", action="store_true", help=OFFLINE_HELP)


def _load(args, rejects: Path, load_models: bool = True):
    from alignkit.console import setup_console_logging
    from alignkit.data.io import read_records
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards.rm_scores import expand_members, reward_info

    setup_console_logging()
    args.reward_model = expand_members(args.reward_model)
    result = read_records(args.data, layout=args.layout, on_bad_row=args.on_bad_row, rejects_path=rejects)
    tokenizer = load_tokenizer(args.reward_model[0], trust_remote_code=args.trust_remote_code)
    models = [load_reward_model(p, dtype=args.dtype, trust_remote_code=args.trust_remote_code) for p in
              args.reward_model] if load_models else []  # Ray workers load their own
    return result.records, tokenizer, models, [reward_info(p) for p in args.reward_model]


def score_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from alignkit.data.tokenize import TokenizeConfig
    from alignkit.rewards.rm_scores import score_records, scored_record

    out = Path(args.out)
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    records, tokenizer, models, infos = _load(args, out.with_suffix(".rejects.jsonl"), load_models=not args.workers)
    tokenize = TokenizeConfig(max_length=args.max_length)
    if args.workers:
        from alignkit.rollout.ray_backend import score_on_workers

        scores, unc = score_on_workers(args.reward_model, records, args.workers, args.dtype, args.trust_remote_code,
                                       batch_size=args.batch_size, aggregate=args.aggregate, lam=args.lam,
                                       tokenize=tokenize)
    else:
        scores, unc = score_records(models, tokenizer, records, args.batch_size, args.aggregate, args.lam, tokenize,
                                    infos=infos)
    scores, note = _personal(scores, records, infos)
    with atomic_write(out) as f:  # a failure part-way leaves any earlier OUT as it was
        for i, r in enumerate(records):
            f.write(json.dumps(scored_record(r, scores[i], unc[i] if unc else None)) + "\n")
    n = sum(r.k for r in records)
    tqdm.write(f"scored {n} responses of {len(records)} records with {len(args.reward_model)} reward model(s)"
               f"{note}; wrote {out}")
    return 0


def _personal(scores: list[list], records, infos: list[dict]) -> tuple[list[list], str]:
    """One personalised model (``pal``): each record scored with its user's weights (`personal_scores`), and
    what the command says about it once; other models' scores as they are and no note."""
    from alignkit.rewards.rm_scores import personal_scores

    if len(infos) != 1 or not infos[0].get("users"):
        return scores, ""
    scores, unseen, anonymous = personal_scores(scores, records, infos[0])
    note = " (each record with its user's weights"
    if unseen:
        shown = ", ".join(sorted(unseen)[:3]) + (", ..." if len(unseen) > 3 else "")
        note += f"; {len(unseen)} user(s) the model never saw ({shown}) got the population mixture"
    if anonymous:
        note += f"; {anonymous} record(s) without a user column got the population mixture"
    return scores, note + ")"


def eval_rm_command(args: argparse.Namespace) -> int:
    from alignkit.data.tokenize import TokenizeConfig
    from alignkit.eval.rm_report import rm_report, write_report
    from alignkit.rewards.rm_scores import score_records

    out = Path(args.out) if args.out else Path(args.reward_model[0]) / f"eval-{Path(args.data).stem}"
    records, tokenizer, models, infos = _load(args, out / "rejects.jsonl")
    chosen_idx = [chosen_rejected(r) for r in records]
    keep = [i for i, c in enumerate(chosen_idx) if c is not None]
    if not keep:
        raise DataError(f"{args.data}: no record has a strict preference between two responses")
    pairs = [records[i] for i in keep]
    scores, _ = score_records(models, tokenizer, pairs, args.batch_size,
                              tokenize=TokenizeConfig(max_length=args.max_length), infos=infos)
    scores, note = _personal(scores, pairs, infos)
    chosen = [scores[j][chosen_idx[i][0]] for j, i in enumerate(keep)]
    rejected = [scores[j][chosen_idx[i][1]] for j, i in enumerate(keep)]
    if isinstance(chosen[0], list):
        chosen, rejected = _vector_pairs(chosen, rejected, infos[0])
    subsets = [_subset(records[i], args.subset_field) for i in keep]
    identical = [records[i].responses[chosen_idx[i][0]] == records[i].responses[chosen_idx[i][1]] for i in keep]
    rtol = args.tie_rtol if args.tie_rtol is not None else TIE_RTOL.get(args.dtype, 1e-5)
    report = rm_report(chosen, rejected, subsets if any(s != "all" for s in subsets) else None,
                       extra={"data": str(args.data), "reward_model": args.reward_model,
                              "skipped_records": len(records) - len(keep), "dtype": args.dtype},
                       identical=identical, tie_rtol=rtol)
    write_report(report, out)
    acc = report.get("accuracy")
    print(f"eval-rm: {len(keep)} pairs, accuracy {acc:.4f} ({report['correct']} correct, {report['wrong']} wrong, "
          f"{report['ties']} ties at rtol {rtol:g}); {len(records) - len(keep)} records skipped "
          f"(ties or fewer than 2 responses){note}; report in {out}/report.md")
    return 0


TIE_RTOL = {"bfloat16": 1e-2, "float16": 1e-3}  # scores carry about 3 (bf16) or 4 (fp16) significant digits


def _vector_pairs(chosen: list, rejected: list, info: dict) -> tuple[list[float], list[float]]:
    """Multi-output models on pairs: GPM compares embeddings with its skew-symmetric score s(w, l), given
    to the report as (s, 0) so that accuracy is P(s > 0) and calibration uses σ(s)."""
    import torch

    from alignkit.objectives.reward_structured import gpm_score

    if info.get("objective") != "gpm":
        raise ModelError("eval-rm compares one score per response, a GPM's embeddings, or an ensemble; this "
                         f"model has {len(chosen[0])} outputs and was trained with {info.get('objective', '?')}")
    hp = info.get("hparams", {})
    s = gpm_score(torch.tensor(chosen), torch.tensor(rejected), hp.get("beta", 10.0), hp.get("normalize", True))
    return s.tolist(), [0.0] * len(s)


def _subset(record, field: str) -> str:
    if field == "group":
        return record.group or "all"
    value = record.meta.get(field, record.group if field == "subset" else None)
    return str(value) if value is not None else "all"
