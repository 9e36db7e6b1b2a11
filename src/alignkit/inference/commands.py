"""``alignkit generate``: sample from a model, plainly or with an inference-time alignment method.

Without ``--method``: K samples per prompt, written as records that `alignkit score` labels and the
``pairs`` transform turns into training data. Output rows are ``{"prompt", "completions": [...K],
"ranks": [0, ...]}``: every rank tied — no preference yet — plus ``meta.finished`` (whether each sample
ended with EOS).

With ``--method NAME`` (see ``alignkit.inference.METHODS``): one row per prompt,
`InferenceOutput.to_row` — ``prompt, completion, finished, reward, calls, tokens, kl`` (+ ``candidates``
and ``rewards`` for the best-of-N family, + the method's extras) — and a summary line.
``--set key=value`` sets the method's options (``--n N`` is a shortcut for ``--set n=N``).

Prompts come from a text file (one prompt per line) or a JSONL / CSV / Parquet file with a ``prompt``
column (text or chat messages); a row's other fields reach the reward (e.g. ``answer``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit import help_text as H
from alignkit.config import parse_mapping
from alignkit.errors import ConfigError, DataError
from alignkit.io_atomic import atomic_write
from alignkit.models.hub import OFFLINE_HELP

# Each command imports what it runs inside its handler: building the parser (every `alignkit ...` call, `--help`
# included) loads this module, and must not load the models, data readers and trainers of every other command.


def add_parsers(sub) -> None:
    from alignkit.inference.base import ALIASES, builtin_methods

    methods = builtin_methods()
    g = sub.add_parser("generate", help="sample completions, plainly (K per prompt) or with an inference method",
                       description="alignkit generate --model PATH --prompts FILE --k 4 --out samples.jsonl\n"
                                   "alignkit generate --model PATH --prompts FILE --method bon --n 16 "
                                   "--reward rm:PATH --out best.jsonl",
                       epilog=methods_epilog(methods), formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", required=True, help="the model to sample from: a folder or a Hub id")
    g.add_argument("--prompts", required=True, help="a .txt file (one prompt per line) or rows with `prompt`")
    g.add_argument("--out", required=True,
                   help="JSONL: without --method one record per prompt with K completions (tied ranks, "
                        "meta.finished); with --method one row per prompt (completion, reward, calls, tokens, kl)")
    g.add_argument("--k", type=int, default=None, help="samples per prompt without --method (default 4)")
    g.add_argument("--method", default=None, metavar="METHOD",
                   help=f"an inference-time alignment method: {', '.join(sorted(methods))} (each described below; "
                        f"its options with --set; aliases: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())})")
    g.add_argument("--reward", default=None, help="reward spec for --method: rm:PATH, module:function, rule:...")
    g.add_argument("--helper", default=None, help="a second model for --method (nudging, genarm, interpolate, cd; rsd's draft model)")
    g.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="options of --method, e.g. --set n=16 tau=0.5")
    g.add_argument("--n", type=int, default=None, help="shortcut for --set n=N")
    g.add_argument("--max-new-tokens", type=int, default=64, help=H.MAX_NEW_TOKENS)
    g.add_argument("--temperature", type=float, default=1.0, help=H.TEMPERATURE)
    g.add_argument("--top-p", type=float, default=1.0, help=H.TOP_P)
    g.add_argument("--stop", action="append", default=[], type=lambda s: s.replace("\\n", "\n").replace("\\t", "\t"),
                   help="without --method: end a sample at this string (repeatable; \\n, \\t unescaped): --stop '\\n\\n'")
    g.add_argument("--seed", type=int, default=0, help=H.seed("sampling"))
    g.add_argument("--batch-size", type=int, default=32, help=H.batch("prompts"))
    g.add_argument("--chat-template", default="auto", choices=["auto", "always", "never"], help=H.CHAT_TEMPLATE)
    g.add_argument("--chat-template-kwargs", default=None, metavar="MAPPING", help=H.CHAT_TEMPLATE_KWARGS)
    g.add_argument("--dtype", default="float32", help=H.DTYPE)
    g.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    g.set_defaults(fn=generate_command)


def methods_epilog(methods: dict) -> str:
    """``generate --help``'s list of every registered method: name, what it needs, summary, --set options."""
    import dataclasses

    lines = [f"methods (--method NAME; {len(methods)} registered in alignkit.inference.METHODS; docs/inference.md):"]
    for name, spec in sorted(methods.items()):
        needs = [flag for flag, on in (("--reward", spec.needs_reward), ("--helper", spec.needs_helper)) if on]
        lines.append(f"  {name:15s} {spec.summary}" + (f" [needs {', '.join(needs)}]" if needs else ""))
        opts = [f"{f.name}={_shown(f.default)}" for f in dataclasses.fields(spec.options)]
        if opts:
            lines.append(f"  {'':15s} --set {' '.join(opts)}")
    return "\n".join(lines)


def _shown(value) -> str:
    """A default as it is written after ``--set key=`` (YAML): null, true/false, '' for an empty string."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return value if isinstance(value, str) and value else repr(value)


def read_prompts(path: str) -> list:
    """Prompts from a text file (non-empty lines) or any tabular file with a ``prompt`` column."""
    return [row["prompt"] for row in _read_rows(path)]


def _read_rows(path: str) -> list[dict]:
    from alignkit.data.prompts import read_prompt_rows

    rows = read_prompt_rows(path)
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def generate_command(args: argparse.Namespace) -> int:
    if args.method is not None:
        return method_command(args)
    if args.reward or args.helper or args.set or args.n is not None:
        raise ConfigError("--reward, --helper, --set and --n go with --method NAME; plain sampling takes --k")
    return plain_command(args)


def plain_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from alignkit.console import setup_console_logging
    from alignkit.generation import generate
    from alignkit.models.load import load_model, load_tokenizer

    setup_console_logging()
    k = 4 if args.k is None else args.k
    prompts = read_prompts(args.prompts)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, dtype=args.dtype)
    out = Path(args.out)
    n = 0
    with atomic_write(out) as f, tqdm(total=len(prompts), desc="generate", unit="prompt") as bar:
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start:start + args.batch_size]
            gen = generate(model, tokenizer, chunk, k=k, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed + start,
                           batch_size=args.batch_size, chat_template=args.chat_template, stop=args.stop,
                           chat_template_kwargs=parse_mapping(args.chat_template_kwargs, "--chat-template-kwargs"))
            for prompt, texts, done in zip(chunk, gen.texts, gen.finished):
                keep = [(t, d) for t, d in zip(texts, done) if t.strip()]
                n += len(texts) - len(keep)
                if keep:
                    f.write(json.dumps({"prompt": prompt, "completions": [t for t, _ in keep],
                                        "ranks": [0] * len(keep), "meta": {"finished": [d for _, d in keep]}}) + "\n")
            bar.update(len(chunk))
    tqdm.write(f"wrote {len(prompts)} prompts x {k} samples to {out}" + (f"; {n} empty samples dropped" if n else ""))
    return 0


def method_options_from_args(args: argparse.Namespace):
    """The method's spec and checked options from ``--method``, ``--set`` and ``--n`` (errors name the flag)."""
    import dataclasses

    from alignkit.config import parse_overrides
    from alignkit.inference.base import get_method, method_options

    spec = get_method(args.method)
    if args.k is not None:
        raise ConfigError(f"--k is for plain sampling; --method {args.method} takes its sample count as --n / --set n=N")
    if getattr(args, "stop", None):
        raise ConfigError(f"--stop is for plain sampling; --method {args.method} stops at the model's stop tokens")
    values = parse_overrides(args.set)
    if args.n is not None:
        if "n" not in {f.name for f in dataclasses.fields(spec.options)}:
            raise ConfigError(f"--n: method {args.method} has no option n; its options are "
                             f"{', '.join(f.name for f in dataclasses.fields(spec.options))}")
        values["n"] = args.n
    if spec.needs_reward and not args.reward:
        raise ConfigError(f"--method {args.method} needs --reward SPEC (e.g. rm:PATH or module:function)")
    if spec.needs_helper and not args.helper:
        raise ConfigError(f"--method {args.method} needs --helper PATH (a second model sharing the tokenizer)")
    return spec, method_options(args.method, values)


def summary_line(outputs: list) -> str:
    """``mean reward, calls and tokens per prompt, KL`` over the outputs (fields that are None are skipped)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    parts = [f"{len(outputs)} prompts"]
    for name, value, fmt in (("mean reward", mean(o.reward for o in outputs), ".4f"),
                             ("calls/prompt", mean(o.calls for o in outputs), ".1f"),
                             ("tokens/prompt", mean(o.tokens for o in outputs), ".1f"),
                             ("mean KL", mean(o.kl for o in outputs), ".4f")):
        parts.append(f"{name} {'n/a' if value is None else format(value, fmt)}")
    accepted = mean(o.extra.get("acceptance") for o in outputs)  # speculative methods: share of draft steps kept
    if accepted is not None:
        parts.append(f"acceptance {accepted:.3f}")
    return ", ".join(parts)


def method_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from alignkit.console import setup_console_logging
    from alignkit.inference.base import InferenceSettings, run_method
    from alignkit.models.load import load_model, load_tokenizer

    setup_console_logging()
    spec, options = method_options_from_args(args)
    rows = _read_rows(args.prompts)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, dtype=args.dtype)
    helper = load_model(args.helper, dtype=args.dtype).to(next(model.parameters()).device) if args.helper else None
    reward_fn = inference_reward(args, model, tokenizer) if args.reward else None
    out = Path(args.out)
    results = []
    with atomic_write(out) as f, tqdm(total=len(rows), desc=args.method, unit="prompt") as bar:
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start:start + args.batch_size]
            settings = InferenceSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                         top_p=args.top_p, seed=args.seed + start, batch_size=args.batch_size,
                                         chat_template=args.chat_template,
                                         chat_template_kwargs=parse_mapping(args.chat_template_kwargs,
                                                                            "--chat-template-kwargs"))
            outputs = run_method(spec.name, model, tokenizer, [r["prompt"] for r in chunk], chunk, settings, options,
                                 reward_fn=reward_fn, helper=helper)
            for o in outputs:
                f.write(json.dumps(o.to_row()) + "\n")
            results += outputs
            bar.update(len(chunk))
    tqdm.write(f"{args.method}: {summary_line(results)}; wrote {out}")
    return 0


def inference_reward(args: argparse.Namespace, model, tokenizer):
    """The pointwise reward of ``--reward``; ``lsc(...)`` / ``calibrated(...)`` calibrate against ``model``'s own
    samples (best-of-N aligns the model against itself: it is the reference)."""
    from alignkit.rewards.build import build_group_reward
    from alignkit.rewards.calibration import model_sampler
    from alignkit.rewards.functions import GROUP_WRAPPERS, build_reward
    from alignkit.rewards.spec import parse_call

    if parse_call(args.reward, GROUP_WRAPPERS) is None:
        return build_reward(args.reward, tokenizer)
    group = build_group_reward(args.reward, tokenizer)
    kwargs = parse_mapping(args.chat_template_kwargs, "--chat-template-kwargs")
    return group.bound(model_sampler(model, tokenizer, args.max_new_tokens, args.temperature, args.top_p, [],
                                     args.chat_template, kwargs))
