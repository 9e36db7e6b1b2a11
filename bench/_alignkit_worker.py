"""One alignkit DPO run for bench/dpo_vs_trl.py (defaults of `TrainConfig`); writes a JSON result.

Uses `alignkit.engine.trainer.Trainer` and calls ``step()`` itself, timing each call, so no checkpoint is
written. ``--profile`` runs one more step under ``torch.profiler`` after the timed ones (phases are
marked by wrapping the trainer's collate / reference / policy / backward / optimizer calls).
"""

from __future__ import annotations

import dataclasses
import time

from _worker_common import (
    current_memory_mb,
    device_name,
    import_run_libraries,
    peak_memory_mb,
    precision,
    run_and_write,
    worker_parser,
)

T_START = time.perf_counter()


def first_batch_logps(trainer) -> dict:
    """Per-pair summed log-probs of the first batch under the reference (= the initial policy)."""
    from alignkit.executor.logprobs import sum_per_slot

    c, ref = trainer.config, trainer.reference
    batch = trainer.train_data.collate(trainer.order.indices(0), trainer.tokenizer.pad_token_id, trainer.layout,
                                       c.max_row_tokens).to(trainer.accelerator.device)
    if hasattr(ref, "sequence_logps"):  # a live reference model or the cached table (ref_cache)
        logps = ref.sequence_logps(batch)
    else:
        logps = sum_per_slot(ref.token_logps(batch), batch)
    # [B, 2]; slot 0 = chosen (rank 0)
    return {"chosen": logps[:, 0].float().tolist(), "rejected": logps[:, 1].float().tolist()}


def profile_step(trainer, rows: int = 12) -> str:
    """One optimizer step under torch.profiler; phase totals, then the top ops by self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark(obj, attr, label):
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            with record_function(label):
                return fn(*a, **k)

        setattr(obj, attr, wrapped)

    mark(trainer.train_data, "collate", "phase: collate (pack + block mask)")
    ref_call = "sequence_logps" if hasattr(trainer.reference, "sequence_logps") else "token_logps"
    mark(trainer.reference, ref_call, f"phase: reference ({trainer.reference.strategy})")
    mark(trainer.scorer, "forward", "phase: policy forward")
    mark(trainer.accelerator, "backward", "phase: backward")
    mark(trainer.accelerator, "clip_grad_norm_", "phase: clip grad norm")
    mark(trainer.optimizer, "step", "phase: optimizer step")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        trainer.step()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    phases = sorted((e for e in events if e.key.startswith("phase:")), key=lambda e: -e.cpu_time_total)
    lines = [f"step wall {wall:.3f} s (profiler overhead included)", "phase                                   total s"]
    lines += [f"{e.key:<40}{e.cpu_time_total / 1e6:>8.3f}" for e in phases]
    if torch.cuda.is_available():  # is the GPU busy, or waiting for the CPU to launch work?
        from torch.autograd import DeviceType

        # kernels only: a CPU op also reports its kernels' time, and annotations (phases, Optimizer.step) theirs
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                   and not e.key.startswith("phase:")]
        busy = sum(getattr(e, "self_device_time_total", 0) or 0 for e in kernels) / 1e6
        lines.append(f"GPU busy {busy:.3f} s of the step's {wall:.3f} s (sum of kernel self times; the rest of the "
                     "step the GPU waits for launches)")
        lines.append(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    return "\n".join(lines)


def run(args) -> dict:
    import torch
    import transformers

    from alignkit.config import TrainConfig
    from alignkit.engine.trainer import Trainer

    import_run_libraries(args.model)
    baseline = current_memory_mb(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # post-import
    total = args.warmup + args.steps
    prec = precision(args.precision)  # bf16: fp32 weights + bf16 autocast, like TRL's bf16=True
    config = TrainConfig(model=args.model, data=args.data, objective="dpo", beta=args.beta, batch_size=args.batch,
                         max_length=args.max_length, lr=args.lr, max_steps=total, dtype="float32",
                         mixed_precision="bf16" if prec == "bf16" else "no", seed=args.seed,
                         output_dir=args.output_dir, progress=False)
    if args.ref_cache:  # e.g. off: a live reference model, like TRL's default
        config = dataclasses.replace(config, ref_cache=args.ref_cache)
    if args.set:  # experiments: any TrainConfig key, e.g. max_row_tokens=256
        from alignkit.config import from_dict, parse_overrides

        config = from_dict(TrainConfig, {**config.__dict__, **parse_overrides(args.set)}, source="--set")
    t_init = time.perf_counter()
    trainer = Trainer(config)
    setup = time.perf_counter() - t_init
    device = trainer.accelerator.device
    notes = []
    if trainer.reference.strategy == "cache":
        notes.append(f"ref_cache={config.ref_cache}: reference log-probs of the {len(trainer.train_data)} pairs "
                     f"computed during setup ({setup:.1f} s incl. tokenization), not in the step time")
    rss_after_setup = peak_memory_mb(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    first = first_batch_logps(trainer)
    tokens, positions = [], []
    for s in range(total):
        idx = trainer.order.indices(s)
        tokens.append(sum(trainer.train_data.items[i].num_tokens for i in idx))
        batch = trainer.train_data.collate(idx, trainer.tokenizer.pad_token_id, trainer.layout,
                                           config.max_row_tokens)
        positions.append(batch.input_ids.numel())

    history, step_seconds, step_cpu = [], [], []
    t_train = time.perf_counter()
    for _ in range(total):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        record = trainer.step()
        sync()
        step_seconds.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - c0)
        history.append({k: record.get(k) for k in ("step", "loss", "logps/chosen", "logps/rejected",
                                                   "rewards/accuracy", "grad_norm", "lr", "seconds_per_step")})
    train_seconds = time.perf_counter() - t_train
    timed = step_seconds[args.warmup :]
    result = {
        "framework": "alignkit", "variant": "default", "device": str(device), "device_name": device_name(device),
        "precision": prec,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "layout": trainer.layout,
        "attn_implementation": trainer.policy.config._attn_implementation, "reference": trainer.reference.strategy,
        "options": {k: getattr(config, k, None) for k in (
            "ref_cache", "batch_size", "max_length", "lr", "beta", "max_steps", "dtype", "mixed_precision", "packing", "max_row_tokens",
            "chunk_size", "scheduler", "max_grad_norm", "seed")},
        "overrides": args.set,
        "notes": notes,
        "setup_seconds": setup, "train_seconds": train_seconds, "step_seconds": step_seconds,
        "seconds_per_step": sum(timed) / len(timed), "min_seconds_per_step": min(timed),
        "median_seconds_per_step": sorted(timed)[len(timed) // 2],
        "cpu_seconds_per_step": sum(step_cpu[args.warmup :]) / len(timed), "tokens_per_step": tokens,
        "tokens_per_second": sum(tokens[args.warmup :]) / sum(timed),
        "positions_per_step": sum(positions) / len(positions),
        "peak_memory_mb": peak_memory_mb(device), "peak_memory_after_setup_mb": rss_after_setup,
        "baseline_memory_mb": baseline,
        "first_batch_rows": trainer.order.indices(0), "step_rows": [trainer.order.indices(s) for s in range(total)],
        "first_batch_logps": first,
        "history": history,
    }
    if args.profile:
        result["profile"] = profile_step(trainer)
    result["worker_seconds"] = time.perf_counter() - T_START
    return result


def main() -> None:
    p = worker_parser()
    p.add_argument("--profile", action="store_true")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--ref-cache", default=None, help="override TrainConfig.ref_cache (auto | on | off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig key")
    run_and_write(p.parse_args(), run)


if __name__ == "__main__":
    main()
