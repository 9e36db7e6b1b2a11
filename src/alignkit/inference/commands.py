"""``alignkit generate``: K samples per prompt from a model, written as records that `alignkit score`
labels and the ``pairs`` transform turns into training data.

Prompts come from a text file (one prompt per line) or a JSONL / CSV / Parquet file with a ``prompt``
column (text or chat messages). Output rows are ``{"prompt", "completions": [...K], "ranks": [0, ...]}``:
every rank tied — no preference yet — plus ``meta.finished`` (whether each sample ended with EOS).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="sample K completions per prompt",
                       description="alignkit generate --model PATH --prompts FILE --k 4 --out samples.jsonl")
    g.add_argument("--model", required=True)
    g.add_argument("--prompts", required=True, help="a .txt file (one prompt per line) or rows with `prompt`")
    g.add_argument("--out", required=True)
    g.add_argument("--k", type=int, default=4)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--dtype", default="float32")
    g.set_defaults(fn=generate_command)


def read_prompts(path: str) -> list:
    """Prompts from a text file (non-empty lines) or any tabular file with a ``prompt`` column."""
    from alignkit.engine.online import read_prompt_rows

    prompts = [row["prompt"] for row in read_prompt_rows(path)]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def generate_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from alignkit.engine.logging import setup_console_logging
    from alignkit.generation import generate
    from alignkit.models.load import load_model, load_tokenizer

    setup_console_logging()
    prompts = read_prompts(args.prompts)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, dtype=args.dtype)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w", encoding="utf-8") as f, tqdm(total=len(prompts), desc="generate", unit="prompt") as bar:
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start:start + args.batch_size]
            gen = generate(model, tokenizer, chunk, k=args.k, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed + start,
                           batch_size=args.batch_size)
            for prompt, texts, done in zip(chunk, gen.texts, gen.finished):
                keep = [(t, d) for t, d in zip(texts, done) if t.strip()]
                n += len(texts) - len(keep)
                if keep:
                    f.write(json.dumps({"prompt": prompt, "completions": [t for t, _ in keep],
                                        "ranks": [0] * len(keep), "meta": {"finished": [d for _, d in keep]}}) + "\n")
            bar.update(len(chunk))
    tqdm.write(f"wrote {len(prompts)} prompts x {args.k} samples to {out}" + (f"; {n} empty samples dropped" if n else ""))
    return 0
