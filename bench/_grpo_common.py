"""What both GRPO benchmark workers share (on top of `_worker_common`): their arguments and step summary."""

from __future__ import annotations

import argparse

from _worker_common import worker_parser


def grpo_parser() -> argparse.ArgumentParser:
    """`worker_parser` (``--data`` is the prompt file, rows ``{prompt, answer}``) plus the rollout settings."""
    p = worker_parser()
    p.add_argument("--k", type=int, default=8, help="completions per prompt (num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    return p


def time_hf_generate(log: list) -> None:
    """Record the seconds of every call of transformers' ``GenerationMixin.generate`` in ``log``: the sampling
    itself, without what each framework does around it (TRL's timed `_generate_single_turn` gets token ids and
    returns token ids; alignkit's `generate` also tokenizes the prompts and decodes the samples), so the
    engines compare like for like. A synchronised GPU is timed too."""
    import time

    import torch
    from transformers.generation.utils import GenerationMixin

    inner = GenerationMixin.generate

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        out = inner(self, *a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        log.append(time.perf_counter() - t0)
        return out

    GenerationMixin.generate = timed


def summarize_steps(step_seconds: list[float], step_cpu: list[float], gen_log: list[tuple[float, int]],
                    warmup: int, hf_log: list[float] | None = None) -> dict:
    """Per-step wall/CPU seconds and one (generation seconds, generated tokens) per step -> the timed
    means: s/step, generation s/step, train s/step (step - generation), rollout tokens/s."""
    if len(gen_log) != len(step_seconds):
        raise ValueError(f"{len(gen_log)} generation calls for {len(step_seconds)} steps: one per step expected")
    steps, cpu, gens = step_seconds[warmup:], step_cpu[warmup:], gen_log[warmup:]
    if not steps:
        raise ValueError("no timed steps: --steps must be >= 1")
    n = len(steps)
    gen_s = sum(g for g, _ in gens)
    hf = {}
    if hf_log and len(hf_log) == len(step_seconds):  # one transformers generate call per step (not vLLM)
        hf_s = sum(hf_log[warmup:])
        hf = {"hf_generate_seconds": hf_log, "hf_generate_seconds_per_step": hf_s / n,
              "hf_generate_tokens_per_second": sum(t for _, t in gens) / hf_s}
    return {**hf,
        "step_seconds": step_seconds, "generation_seconds": [g for g, _ in gen_log],
        "generated_tokens": [t for _, t in gen_log],
        "seconds_per_step": sum(steps) / n, "min_seconds_per_step": min(steps),
        "cpu_seconds_per_step": sum(cpu) / n, "generation_seconds_per_step": gen_s / n,
        "train_seconds_per_step": (sum(steps) - gen_s) / n,
        "generated_tokens_per_step": sum(t for _, t in gens) / n,
        "rollout_tokens_per_second": sum(t for _, t in gens) / gen_s,
    }
