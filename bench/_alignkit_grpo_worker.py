"""One alignkit GRPO run for bench/grpo_vs_trl.py (`OnlineTrainer`, objective=grpo); writes a JSON result.

The worker calls ``step()`` itself and times each call; `alignkit.generation.generate` (what the rollout
samples with) is wrapped to time generation alone and count the generated completion tokens (EOS
included). "train" time = step time - generation time: rewards, old/reference log-probs, the update.
"""

from __future__ import annotations

import time

from _grpo_common import grpo_parser, summarize_steps, time_hf_generate
from _worker_common import import_run_libraries, peak_memory_mb, run_and_write

T_START = time.perf_counter()


def timed_generate(log: list, backend: str = "local"):
    """Wrap the rollout's `generate` (``backend="vllm"``: `VLLMRollout.generate`, the engine's sampling
    plus alignkit's stop/text handling): append (seconds, completion tokens incl. EOS) per call to ``log``."""
    import torch

    if backend == "vllm":
        from alignkit.rollout.vllm_engine import VLLMRollout as owner
    else:
        from alignkit.rollout import experience as owner
    inner = owner.generate

    def wrapped(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        gen = out[0] if isinstance(out, tuple) else out
        tokens = sum(len(ids) + (s is not None) for row, stops in zip(gen.token_ids, gen.stop_ids)
                     for ids, s in zip(row, stops))
        log.append((time.perf_counter() - t0, tokens))
        return out

    owner.generate = wrapped


def run(args) -> dict:
    import torch
    import transformers

    from alignkit.algorithms.online import OnlineTrainer
    from alignkit.config import TrainConfig

    total = args.warmup + args.steps
    config = TrainConfig(model=args.model, prompts=args.data, reward="rule:exact_answer", objective="grpo",
                         beta=args.beta, num_samples=args.k, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                         temperature=1.0, top_p=1.0, updates_per_batch=1, lr=args.lr, max_steps=total,
                         dtype="float32", seed=args.seed, output_dir=args.output_dir, progress=False,
                         rollout_backend=args.rollout_backend)
    import_run_libraries(args.model)  # model code imported before the setup timer starts
    t_init = time.perf_counter()
    trainer = OnlineTrainer(config)
    setup = time.perf_counter() - t_init
    device = trainer.accelerator.device
    gen_log: list = []
    hf_log: list = []
    time_hf_generate(hf_log)
    timed_generate(gen_log, args.rollout_backend)
    step_seconds, step_cpu, history, prompts = [], [], [], []
    for s in range(total):
        prompts.append([trainer.train_data.rows[i]["prompt"] for i in trainer.order.indices(s)])
        t0, c0 = time.perf_counter(), time.process_time()
        record = trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - c0)
        history.append({k: record.get(k) for k in ("step", "loss", "reward/mean", "response_length", "kl",
                                                   "clip_fraction", "grad_norm", "lr")})
    return {
        "framework": "alignkit", "device": str(device), "transformers_version": transformers.__version__,
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "options": {k: getattr(config, k) for k in ("objective", "beta", "num_samples", "batch_size",
                                                    "max_new_tokens", "temperature", "top_p", "lr", "scheduler",
                                                    "max_grad_norm", "updates_per_batch", "dtype", "seed",
                                                    "rollout_backend")},
        "setup_seconds": setup, "notes": [],
        **summarize_steps(step_seconds, step_cpu, gen_log, args.warmup, hf_log),
        "peak_memory_mb": peak_memory_mb(device), "step_prompts": prompts, "history": history,
        "worker_seconds": time.perf_counter() - T_START,
    }


def main() -> None:
    p = grpo_parser()
    p.add_argument("--rollout-backend", default="local", help="local (transformers generate) or vllm (the engine "
                   "is built in the first warm-up step)")
    run_and_write(p.parse_args(), run)


if __name__ == "__main__":
    main()
