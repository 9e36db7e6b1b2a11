"""GRPO on the arithmetic world with vLLM rollouts vs transformers rollouts: held-out accuracy, same steps.

    .venv-vllm/bin/python scripts/vllm_learning.py [--out runs/vllm_learning] [--steps 120] [--seeds 0 1 2]

Runs in the vLLM environment (`make test-vllm` builds it). Builds the arithmetic world with a head size
vLLM's CPU attention accepts (`alignkit.worlds.common.vllm_shape`: 2 heads of 32 instead of 4 of 16),
then trains GRPO from it with ``rollout_backend=local`` (transformers ``generate`` in-process) and
``rollout_backend=vllm`` for each seed, each run in its own process, with `scripts/rl_table.py`'s
settings (16 prompts x 8 samples, ``max_new_tokens=4``, ``unfinished_penalty=0``, lr 1e-3). Held-out
accuracy: 200 problems of another seed, 16 samples each at temperature 1, and greedy, scored with
transformers for both. Writes ``results.json`` and prints a table with the mean and spread over seeds,
and, for vLLM, the mean per-step ``rollout/logp_diff``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_run(out: Path, backend: str, seed: int, steps: int) -> dict:
    import torch

    from alignkit import train
    from alignkit.config import TrainConfig
    from alignkit.worlds import arithmetic
    from alignkit.worlds.common import vllm_shape

    sys.path.insert(0, str(HERE))
    from rl_table import accuracy

    torch.set_num_threads(1)
    world = arithmetic.build_world(out / "world", **vllm_shape(arithmetic.ArithmeticConfig().hidden_size))
    data = out / "prompts.jsonl"
    run_dir = out / f"{backend}-seed{seed}"
    t0 = time.perf_counter()
    result = train(TrainConfig(model=str(world), objective="grpo", prompts=str(data), reward="rule:exact_answer",
                               num_samples=8, max_new_tokens=4, unfinished_penalty=0.0, batch_size=16, seed=seed,
                               max_steps=steps, lr=1e-3, output_dir=str(run_dir), progress=False, overwrite=True,
                               rollout_backend=backend, save_every=0, eval_every=0))
    seconds = time.perf_counter() - t0
    held_prompts, held_answers = arithmetic.problems(200, seed=99)
    acc = accuracy(str(result.final_dir), held_prompts, held_answers)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    diffs = [r["rollout/logp_diff"] for r in records if "rollout/logp_diff" in r]
    return {"backend": backend, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1), **acc,
            "logp_diff_mean": statistics.fmean(diffs) if diffs else None, "logp_diff_max": max(diffs, default=None)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/vllm_learning")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--one", nargs=2, metavar=("BACKEND", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.one:
        print("RESULT " + json.dumps(one_run(out, args.one[0], int(args.one[1]), args.steps)), flush=True)
        return []
    from alignkit.worlds import arithmetic
    from alignkit.worlds.common import vllm_shape

    out.mkdir(parents=True, exist_ok=True)
    world = arithmetic.build_world(out / "world", **vllm_shape(arithmetic.ArithmeticConfig().hidden_size))
    prompts, answers = arithmetic.problems(512, seed=11)
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n"
                                               for q, a in zip(prompts, answers)))
    sys.path.insert(0, str(HERE))
    from rl_table import accuracy

    held_prompts, held_answers = arithmetic.problems(200, seed=99)
    rows = [{"backend": "pretrained", **accuracy(str(world), held_prompts, held_answers)}]
    for seed in args.seeds:  # interleaved: both backends see the same machine load
        for backend in ("local", "vllm"):
            cmd = [sys.executable, __file__, "--out", str(out), "--steps", str(args.steps), "--one", backend, str(seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{backend} seed {seed} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(line[len("RESULT "):]))
            print(rows[-1], flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\nGRPO, arithmetic world (vLLM shape), {args.steps} steps, seeds {args.seeds}")
    print(f"pretrained: sampled {rows[0]['sampled']:.3f}, greedy {rows[0]['greedy']:.3f}")
    for backend in ("local", "vllm"):
        mine = [r for r in rows if r["backend"] == backend]
        s = [r["sampled"] for r in mine]
        spread = statistics.stdev(s) if len(s) > 1 else 0.0
        extra = f", logp_diff mean {statistics.fmean(r['logp_diff_mean'] for r in mine):.2e}" if backend == "vllm" else ""
        print(f"{backend:>6}: sampled {statistics.fmean(s):.3f} ± {spread:.3f} (per seed {', '.join(f'{x:.3f}' for x in s)}), "
              f"greedy {statistics.fmean(r['greedy'] for r in mine):.3f}, train s {statistics.fmean(r['train_seconds'] for r in mine):.0f}"
              + extra)
    return rows


if __name__ == "__main__":
    main()
