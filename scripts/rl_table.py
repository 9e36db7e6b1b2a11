"""GRPO and RLOO on the verifiable arithmetic world: held-out accuracy before and after.

    .venv/bin/python scripts/rl_table.py [--out runs/rl_table] [--steps 200]

Builds (or reuses) the arithmetic world (`alignkit.worlds.arithmetic`: a tiny model pretrained on sums
that are right 40% of the time), then trains each objective from it with the same settings
(`alignkit train objective=... prompts=... reward=rule:exact_answer`) and measures accuracy on held-out
problems (16 samples each at temperature 1, and greedy). Writes ``results.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignkit import train
from alignkit.config import TrainConfig
from alignkit.console import setup_console_logging
from alignkit.generation import generate
from alignkit.models.load import load_model, load_tokenizer
from alignkit.worlds import arithmetic


def accuracy(path: str, prompts: list[str], answers: list[int], samples: int = 16, seed: int = 3) -> dict:
    tok, model = load_tokenizer(path), load_model(path)
    gen = generate(model, tok, prompts, k=samples, max_new_tokens=4, seed=seed)
    greedy = generate(model, tok, prompts, k=1, max_new_tokens=4, temperature=0.0)
    hits = [arithmetic.reward(c, a) for row, a in zip(gen.texts, answers) for c in row]
    return {"sampled": sum(hits) / len(hits),
            "greedy": sum(arithmetic.reward(r[0], a) for r, a in zip(greedy.texts, answers)) / len(answers)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rl_table")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--objectives", nargs="+", default=["grpo", "rloo"])
    args = p.parse_args(argv)
    setup_console_logging()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = arithmetic.build_world(out / "world")
    prompts, answers = arithmetic.problems(512, seed=11)
    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in zip(prompts, answers)))
    held_prompts, held_answers = arithmetic.problems(200, seed=99)
    rows = [{"objective": "pretrained", **accuracy(str(world), held_prompts, held_answers)}]
    for objective in args.objectives:
        t0 = time.perf_counter()
        result = train(TrainConfig(
            model=str(world), objective=objective, prompts=str(data), reward="rule:exact_answer", num_samples=8,
            max_new_tokens=4, unfinished_penalty=0.0, batch_size=16, max_steps=args.steps, lr=1e-3,
            output_dir=str(out / objective), progress=False, log_every=25, seed=0))
        rows.append({"objective": objective, "seconds": round(time.perf_counter() - t0, 1),
                     **accuracy(str(result.final_dir), held_prompts, held_answers)})
    lines = ["| policy | held-out accuracy (16 samples, T=1) | greedy accuracy | training time |", "|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['sampled']:.1%} | {r['greedy']:.1%} | {r.get('seconds', '—')} s |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "steps": args.steps}, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
