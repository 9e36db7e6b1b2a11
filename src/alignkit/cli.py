"""``alignkit`` command line: train | logprobs | generate | score | eval-rm | eval | report | data | demo | objectives.

    alignkit train configs/dpo.yaml max_steps=50
    alignkit train objective=dpo model=PATH data=pairs.jsonl max_steps=50
    alignkit logprobs --model PATH --data FILE --out OUT.jsonl
    alignkit logprobs --model REF --data FILE --out ref.safetensors --cache --max-length 512
    alignkit score --reward-model RM --data FILE --out scored.jsonl
    alignkit eval-rm --reward-model RM --data pairs.jsonl
    alignkit eval --models A_DIR B.jsonl --reference REF --prompts FILE --judge rule:mod:fn --out DIR
    alignkit report RUN_DIR [RUN_DIR ...]
    alignkit data convert|inspect|pairs|dedup|select|split|synthesize ...   (alignkit data --help)
    alignkit doctor MODEL [--data FILE] [--batch-size N --max-length L] [--load-weights]
    alignkit demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from alignkit import help_text as H

# Each command imports what it runs inside its handler: building the parser (every `alignkit ...` call, `--help`
# included) loads this module, and must not load the models, data readers and trainers of every other command.


def _train(args: argparse.Namespace) -> int:
    from alignkit import train
    from alignkit.config import TrainConfig, load_config

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    config = load_config(TrainConfig, path, items)
    result = train(config)
    if result.interrupted:
        return 130
    if result.final_dir is None:  # not the main process of a multi-process run
        return 0
    steps = sum(1 for h in result.history if "loss" in h)
    print(f"done: {steps} steps logged to {result.output_dir / 'metrics.jsonl'}; "
          f"final model in {result.final_dir}")
    return 0


def _logprobs(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from alignkit.console import setup_console_logging
    from alignkit.data.io import read_records
    from alignkit.engine.score import iter_logprobs
    from alignkit.io_atomic import atomic_write
    from alignkit.models.load import load_model, load_tokenizer

    setup_console_logging()
    rejects = Path(args.out).with_suffix(".rejects.jsonl")  # skipped rows land next to the output
    result = read_records(args.data, layout=args.layout, on_bad_row=args.on_bad_row, rejects_path=rejects)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    if args.cache:
        return _write_cache(args, result.records, tokenizer, model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_write(out) as f:  # a failure part-way leaves any earlier OUT as it was
        for row in iter_logprobs(model, tokenizer, result.records, args.batch_size, _tokenize_config(args),
                                 progress=True):
            f.write(json.dumps(row) + "\n")
            n += 1
    tqdm.write(f"wrote {n} log-probs for {len(result.records)} records to {out}")
    return 0


def _tokenize_config(args: argparse.Namespace, max_length: int | None = None):
    """How `alignkit logprobs` tokenizes: the same settings, and keys, as `alignkit train`."""
    from alignkit.config import parse_mapping
    from alignkit.data.tokenize import TokenizeConfig

    return TokenizeConfig(max_length if max_length is not None else args.max_length, args.max_prompt_length,
                          chat_template=args.chat_template,
                          chat_template_kwargs=parse_mapping(args.chat_template_kwargs, "--chat-template-kwargs"))


def _write_cache(args: argparse.Namespace, records, tokenizer, model) -> int:
    """A reference cache that `alignkit train ... ref_cache_file=OUT` accepts (see engine/refcache.py)."""
    from alignkit.config import TrainConfig, parse_mapping
    from alignkit.data.dataset import TokenizedDataset
    from alignkit.engine import refcache as rc
    from alignkit.engine.reference import ModelReference
    from alignkit.engine.rundir import model_folder, within_position_limit
    from alignkit.engine.score import model_layout, model_scorer
    from alignkit.objectives import build_objective

    extras = build_objective(args.objective).extras
    # the settings `alignkit train` would use for these records: train's default max_length, lowered to the
    # model's position limit as train lowers it (the cache stores them, so a refusal can name what differs)
    settings = TrainConfig(model=args.model, data=args.data, layout=args.layout, on_bad_row=args.on_bad_row,
                           max_length=args.max_length if args.max_length is not None else TrainConfig.max_length,
                           max_prompt_length=args.max_prompt_length, chat_template=args.chat_template,
                           chat_template_kwargs=parse_mapping(args.chat_template_kwargs, "--chat-template-kwargs") or {},
                           seed=args.seed, trust_remote_code=args.trust_remote_code)  # fmt: skip
    settings = within_position_limit(settings, model_folder(settings))
    max_length = settings.max_length
    data = TokenizedDataset.build(records, tokenizer, _tokenize_config(args, max_length), "data", extras, args.seed)
    weights = rc.files_digest(args.model)
    weights = (weights or rc.weights_digest(model)) + rc.load_key(model, args.dtype)
    _, layout, _ = model_scorer(model)
    model.eval()
    layout = model_layout(model, data, tokenizer.pad_token_id, layout)
    table = rc.compute_table(ModelReference(model, "path", 0), data, tokenizer.pad_token_id, layout, 256,
                             args.batch_size, next(model.parameters()).device)
    rc.store_table(Path(args.out), table, rc.cache_meta(weights, data, "no", rc.record_settings(settings, extras)))
    print(f"wrote reference log-probs of {len(records)} records to {args.out}; train with ref_cache_file={args.out} "
          f"(same data, max_length={max_length}, max_prompt_length={args.max_prompt_length}, "
          f"chat_template={args.chat_template}, seed={args.seed}, eval_split=0)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from alignkit.demo import evaluate_checkpoints, run_demo

    if args.evaluate:
        evaluate_checkpoints(args.evaluate, out_dir=args.out, seed=args.seed)
        return 0
    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)
    return 0


def _objectives(args: argparse.Namespace) -> int:
    from alignkit.objectives import available, get_objective

    for name in available():
        spec = get_objective(name)
        hp = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        ref = "reference" if spec.needs_reference else "no reference"
        k = f"K>={spec.min_responses}" + (f", K<={spec.max_responses}" if spec.max_responses else "")
        print(f"{name:16s} ({hp})  [{ref}; labels: {'/'.join(spec.label_kinds)}; {k}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alignkit import __version__
    from alignkit.config_help import format_keys

    p = argparse.ArgumentParser(prog="alignkit", description="Align language models with preference feedback.")
    p.add_argument("--version", action="version", version=f"alignkit {__version__}",
                   help="print alignkit's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train with any objective: offline (data=), online (prompts= reward=), "
                                     "reward models",
                       description="alignkit train [CONFIG.yaml] [key=value ...]", epilog=format_keys(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="an optional YAML config, then key=value settings that override it (keys below)")
    t.set_defaults(fn=_train)

    from alignkit.models.hub import OFFLINE_HELP

    lp = sub.add_parser("logprobs", help="log-prob of every response of every record")
    lp.add_argument("--model", required=True, help="the model whose log-probs to compute: a folder or a Hub id")
    lp.add_argument("--data", required=True, help="records to score (any layout `alignkit train` reads)")
    lp.add_argument("--out", required=True,
                    help="JSONL, one row per response: id (the record's, or its position), response_index, logp "
                         "(summed log-prob of its tokens), n_tokens; with --cache a .safetensors reference cache")
    lp.add_argument("--max-length", type=int, default=None,
                    help=H.max_length("default: no limit (with --cache: train's default, 512)"))
    lp.add_argument("--batch-size", type=int, default=8, help=H.batch("records"))
    lp.add_argument("--dtype", default="float32", help=H.DTYPE)
    lp.add_argument("--layout", default=None, help=H.LAYOUT)
    lp.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help=H.BAD_ROW)
    lp.add_argument("--trust-remote-code", action="store_true", help=H.TRUST_REMOTE_CODE)
    lp.add_argument("--cache", action="store_true",
                    help="write a reference cache (safetensors) for `train ref_cache_file=OUT` instead of JSONL")
    lp.add_argument("--objective", default="dpo", help="with --cache: the objective to train (KTO adds completions)")
    lp.add_argument("--max-prompt-length", type=int, default=None,
                    help="prompt tokens kept when a sequence is too long, as train's max_prompt_length "
                         "(default: half of --max-length)")
    lp.add_argument("--chat-template", default="auto", choices=["auto", "always", "never"], help=H.CHAT_TEMPLATE)
    lp.add_argument("--chat-template-kwargs", default=None, metavar="MAPPING", help=H.CHAT_TEMPLATE_KWARGS)
    lp.add_argument("--seed", type=int, default=0, help="with --cache: the training seed (KTO's pairing)")
    lp.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    lp.set_defaults(fn=_logprobs)

    d = sub.add_parser("demo", help="the built-in demo world: pretrain, label, DPO at several betas")
    d.add_argument("--out", default="demo_out",
                   help="folder for the world, pairs, runs and results (default demo_out); reused by later commands")
    d.add_argument("--quick", action="store_true", help="a much smaller run (< 1 minute)")
    d.add_argument("--seed", type=int, default=0, help=H.seed("the world, sampling and training"))
    d.add_argument("--evaluate", nargs="+", metavar="MODEL",
                   help="instead of the demo: the gold reward and KL of these policies on the demo's held-out "
                        "prompts (the demo's world in --out must exist)")
    d.set_defaults(fn=_demo)

    from alignkit.data.tools.commands import add_parsers as data_parsers
    from alignkit.doctor import add_parser as doctor_parser
    from alignkit.eval.commands import add_parsers as eval_parsers
    from alignkit.eval.rm_commands import add_parsers as reward_parsers
    from alignkit.inference.commands import add_parsers as generate_parsers

    reward_parsers(sub)
    generate_parsers(sub)
    eval_parsers(sub)
    data_parsers(sub)
    doctor_parser(sub)

    o = sub.add_parser("objectives", help="list the registered objectives and their hyper-parameters")
    o.set_defaults(fn=_objectives)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard load/save bars; alignkit shows its own progress
    from alignkit.errors import AlignkitError
    from alignkit.models.hub import set_offline

    if getattr(args, "offline", False):  # --offline: Hub names from the local cache only
        set_offline(True)
    try:
        return args.fn(args)
    except KeyboardInterrupt:  # Ctrl-C: a training run has saved and said how to resume; no traceback
        return 130
    except ImportError as e:  # an optional extra that is not installed says so; anything else is a bug: raise
        if "pip install" not in str(e) or os.environ.get("ALIGNKIT_DEBUG"):
            raise
        return _error(args, e)
    except AlignkitError as e:  # the user's mistake: one line. Anything else is a bug and keeps its traceback.
        if os.environ.get("ALIGNKIT_DEBUG"):
            raise
        return _error(args, e)


def _error(args: argparse.Namespace, e: BaseException) -> int:
    """``alignkit data convert: error: ...`` on one line of stderr; exit status 2 (as argparse's own errors)."""
    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    message = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    print(f"alignkit {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
