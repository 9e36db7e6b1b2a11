"""One TRL `DPOTrainer` run for bench/dpo_vs_trl.py; runs in bench/.venv-trl and writes a JSON result.

``--variant default``: DPOConfig defaults, except what the comparison fixes for every framework (batch
size, max_length, lr, beta, steps, precision (fp32 on CPU, ``bf16=True`` on CUDA), seed, no eval/saving,
sequential order, a log line per step).
``--variant best``: additionally ``precompute_ref_log_probs=True`` (no reference forward per step),
``gradient_checkpointing=False`` (TRL turns it on by default: it saves memory and costs a recomputation)
and ``padding_free=True`` when the installed DPOTrainer honours it (otherwise recorded as a note).

The data is fed in alignkit's batch order (`alignkit.data.dataset.BatchOrder`, same seed) with a
sequential sampler, so step k sees the same pairs in both frameworks. A step is timed from the end of the
previous optimizer step to the end of this one (batch fetch, collate, forward/backward, optimizer, log).
"""

from __future__ import annotations

import json
import time

from _worker_common import (
    alignkit_order,
    current_memory_mb,
    device_name,
    import_run_libraries,
    peak_memory_mb,
    precision,
    run_and_write,
    step_timer,
    worker_parser,
)

T_START = time.perf_counter()


def build_config(args, variant: str, drop: set[str]):
    from trl import DPOConfig

    kwargs = dict(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch, max_length=args.max_length,
        learning_rate=args.lr, beta=args.beta, max_steps=args.warmup + args.steps, seed=args.seed,
        bf16=precision(args.precision) == "bf16", fp16=False,  # fp32 on CPU, bf16 autocast on CUDA (auto)
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        train_sampling_strategy="sequential",
    )
    if variant == "best":
        best = {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 4 * args.batch,
                "gradient_checkpointing": False, "padding_free": True}
        if args.compile:  # opt-in: inductor compile (minutes of compile on CPU, recompiles per batch shape)
            best["torch_compile"] = True
        kwargs.update({k: v for k, v in best.items() if k not in drop})
    return DPOConfig(**kwargs), {k: v for k, v in kwargs.items() if k != "output_dir"}


def run(args) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from trl import DPOTrainer

    import_run_libraries(args.model)
    baseline = current_memory_mb(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # post-import
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    perm = alignkit_order(len(rows), args.batch, args.seed)  # fed sequentially
    dataset = Dataset.from_list([rows[i] for i in perm])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    notes, drop, errors = [], set(), []
    t_init = time.perf_counter()
    for droppable in ("padding_free", "precompute_ref_log_probs", None):
        config, used = build_config(args, args.variant, drop)
        timer = step_timer(device)
        try:
            trainer = DPOTrainer(model=args.model, args=config, train_dataset=dataset, callbacks=[timer])
            break
        except Exception as e:  # record which option failed, then retry without it
            if args.variant != "best" or droppable is None:
                raise
            errors.append(f"{droppable}: {type(e).__name__}: {e}")
            notes.append(f"{droppable}=... failed ({type(e).__name__}: {str(e)[:200]}); retried without it")
            drop.add(droppable)
    setup = time.perf_counter() - t_init
    if used.get("padding_free") and not getattr(trainer, "padding_free", True):
        notes.append(f"padding_free=True accepted but not honoured by DPOTrainer in trl {trl.__version__} "
                     "(it warns and falls back to padded batches)")
    if used.get("precompute_ref_log_probs"):
        notes.append(f"precompute_ref_log_probs: reference log-probs of the {len(dataset)} pairs computed "
                     f"during setup ({setup:.1f} s incl. tokenization), not in the step time")
    rss_after_setup = peak_memory_mb(device)

    # first batch: per-pair summed log-probs of the initial model (= reference), TRL's own code path
    train = trainer.train_dataset
    first = trainer.data_collator([train[i] for i in range(args.batch)])
    first = {k: v.to(trainer.accelerator.device) for k, v in first.items()}
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, first)

    total = args.warmup + args.steps
    tokens, positions = [], []
    for s in range(total):
        ex = [train[i] for i in range(s * args.batch, (s + 1) * args.batch)]
        tokens.append(sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in ex))
        longest = max(len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in ex)
        positions.append(2 * args.batch * min(longest, args.max_length))

    t_train = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t_train
    step_seconds, step_cpu = timer.step_times()
    timed = step_seconds[args.warmup : total]
    timed_tokens = sum(tokens[args.warmup : total])
    history = [{"step": i + 1, **{k: log.get(k) for k in ("loss", "logps/chosen", "logps/rejected",
                                                         "rewards/accuracies", "grad_norm", "learning_rate")}}
               for i, log in enumerate(timer.logs)]
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "framework": "trl", "variant": args.variant, "device": str(device), "device_name": device_name(device),
        "precision": precision(args.precision), "trl_version": trl.__version__,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "attn_implementation": model.config._attn_implementation,
        "options": used, "option_errors": errors, "notes": notes,
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "setup_seconds": setup, "train_seconds": train_seconds, "step_seconds": step_seconds,
        "seconds_per_step": sum(timed) / len(timed), "min_seconds_per_step": min(timed),
        "median_seconds_per_step": sorted(timed)[len(timed) // 2],
        "cpu_seconds_per_step": sum(step_cpu[args.warmup : total]) / len(timed), "tokens_per_step": tokens,
        "tokens_per_second": timed_tokens / sum(timed), "positions_per_step": sum(positions) / len(positions),
        "peak_memory_mb": peak_memory_mb(device), "peak_memory_after_setup_mb": rss_after_setup,
        "baseline_memory_mb": baseline,
        "first_batch_rows": perm[: args.batch],
        "step_rows": [perm[s * args.batch : (s + 1) * args.batch] for s in range(total)],
        "first_batch_logps": {"chosen": chosen.float().tolist(), "rejected": rejected.float().tolist()},
        "history": history, "worker_seconds": time.perf_counter() - T_START,
    }


def main() -> None:
    p = worker_parser()
    p.add_argument("--variant", choices=["default", "best"], default="default")
    p.add_argument("--compile", action="store_true", help="best variant: also torch_compile=True")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    run_and_write(p.parse_args(), run)


if __name__ == "__main__":
    main()
