"""Rollout tokens/s on CPU: vLLM (alignkit's rollout_backend=vllm engine) vs transformers ``generate``.

    .venv-vllm/bin/python bench/vllm_rollout.py [--lengths 32 128] [--rounds 3] [--threads 1] [--hidden 64]
        [--workers 2]

Runs in the vLLM environment (`make test-vllm` builds it). One tiny Qwen2-style model with random weights
(`build_tiny`; random weights rarely sample EOS, so completions run to the length asked) in a vLLM-accepted
shape (`alignkit.worlds.common.vllm_shape`), fp32. Each round times, for every completion length, B prompts
x K samples from `alignkit.generation.generate` (what rollout_backend=local samples with) and from
`VLLMRollout.generate` (the engine plus alignkit's stop/text handling), alternating, so both see the same
machine load; the table shows each variant's best round and every round's tokens/s. Tokens counted: the
completion tokens generated, the stop token included. ``--workers W`` (Ray installed) adds two whole
rollouts (weight push, sampling, scoring, the `Experience`): the colocated engine's, and W Ray actors' with
a vLLM engine each (``rollout_workers=W rollout_backend=vllm``, ``--threads`` CPUs per actor; a local Ray).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def count(gen) -> int:
    return sum(len(ids) + (s is not None) for row, stops in zip(gen.token_ids, gen.stop_ids)
               for ids, s in zip(row, stops))


def ray_runs(args, model, tok, engine, rows) -> dict:
    """Whole rollouts, weights pushed every time: the colocated engine's, and ``args.workers`` Ray actors'."""
    import ray

    from alignkit.config import TrainConfig
    from alignkit.rollout.ray_backend import RayRollout

    ray.init(num_cpus=args.workers * args.threads, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    config = TrainConfig(model=model.config._name_or_path, rollout_backend="vllm", rollout_workers=args.workers)
    pool = RayRollout(model, tok, engine.reward_fn, args.workers, args.threads, vllm=config)

    def colocated(n, seed):
        engine.push_weights()
        return engine.sample(rows, seed, args.k, max_new_tokens=n).num_tokens

    return {"vLLM rollout, colocated": colocated,
            f"vLLM rollout, {args.workers} Ray actors": lambda n, seed: pool.rollout(rows, seed, k=args.k,
                                                                                   max_new_tokens=n).num_tokens}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--threads", type=int, default=1, help="torch threads (both)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="also time rollouts on this many Ray vLLM actors")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.config import TrainConfig
    from alignkit.generation import generate
    from alignkit.models.tiny import build_tiny
    from alignkit.rollout.vllm_engine import VLLMRollout
    from alignkit.worlds import arithmetic
    from alignkit.worlds.common import vllm_shape

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vllm_rollout_"))
    corpus = arithmetic.corpus(500)
    path = build_tiny(work / "model", corpus=corpus, vocab_size=256, chat_template=False, seed=0,
                      hidden_size=args.hidden, num_layers=args.layers, **vllm_shape(args.hidden))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    engine = VLLMRollout(TrainConfig(model=str(path), rollout_backend="vllm"), model, tok,
                         lambda p, c, r, **kw: [0.0] * len(c))
    engine.push_weights()
    setup = time.perf_counter() - t0
    prompts, _ = arithmetic.problems(args.batch, seed=1)
    runs = {
        "transformers generate": lambda n, seed: count(generate(model, tok, prompts, k=args.k, max_new_tokens=n,
                                                                seed=seed)),
        "vLLM (alignkit engine)": lambda n, seed: count(engine.generate(prompts, args.k, seed, max_new_tokens=n)[0]),
    }
    if args.workers:
        runs.update(ray_runs(args, model, tok, engine, [{"prompt": x} for x in prompts]))
    for fn in runs.values():  # warm-up (first-call allocations, kernel dispatch)
        fn(8, 0)
    results: dict = {name: {n: [] for n in args.lengths} for name in runs}
    for r in range(args.rounds):
        for n in args.lengths:
            for name, fn in runs.items():
                t = time.perf_counter()
                tokens = fn(n, 100 + r)
                dt = time.perf_counter() - t
                results[name][n].append(tokens / dt)
    print(f"\n== rollout tokens/s, CPU fp32, {args.threads} torch thread(s); {args.batch} prompts x {args.k} samples; "
          f"model: Qwen2-style, hidden {args.hidden}, {args.layers} layers, {vllm_shape(args.hidden)}, "
          f"vocab {len(tok)}; {args.rounds} interleaved rounds; vLLM engine setup {setup:.1f} s ==")
    head = f"{'variant':<36}" + "".join(f"{f'len {n}: best':>14}{'rounds':>26}" for n in args.lengths)
    print(head + "\n" + "-" * len(head))
    for name in runs:
        cells = "".join(f"{max(results[name][n]):>14.0f}{' / '.join(f'{x:.0f}' for x in results[name][n]):>26}"
                        for n in args.lengths)
        print(f"{name:<36}{cells}")
    base, fast = list(runs)[:2]
    print("vLLM / generate (best): " + ", ".join(f"len {n}: {max(results[fast][n]) / max(results[base][n]):.2f}x"
                                               for n in args.lengths))
    out = {"setup_seconds": setup, "args": vars(args), "tokens_per_second": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
