"""One TRL `GRPOTrainer` run for bench/grpo_vs_trl.py; runs in bench/.venv-trl and writes a JSON result.

GRPOConfig defaults except what the comparison fixes for both frameworks: B prompts x K completions per
step (``per_device_train_batch_size = B*K``, ``num_generations = K``: one generate call of B*K rows per
step, as alignkit), ``max_completion_length``, temperature 1 / top_p 1 / top_k 0, lr, beta, one policy
update per rollout (``num_iterations=1``, ``steps_per_generation=1``), fp32 (``bf16=False``), no
gradient checkpointing (TRL's default is on; alignkit's off), seed, no eval/saving, a log line per step.
Prompts come in alignkit's batch order (`BatchOrder`, same seed) with ``shuffle_dataset=False``; the
reward is alignkit's own ``rule:exact_answer`` function. ``_generate_single_turn`` is wrapped to time
generation and count the completion tokens (EOS included). A step is timed from the end of the previous
optimizer step to the end of this one.
"""

from __future__ import annotations

import json
import time

from _grpo_common import grpo_parser, summarize_steps, time_hf_generate
from _worker_common import (
    alignkit_order,
    import_run_libraries,
    peak_memory_mb,
    run_and_write,
    step_timer,
    sync,
)

T_START = time.perf_counter()


def build_config(args):
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch * args.k, num_generations=args.k,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.lr, beta=args.beta, num_iterations=1, steps_per_generation=1,
        max_steps=args.warmup + args.steps, seed=args.seed, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        shuffle_dataset=False,
    )
    return GRPOConfig(**kwargs), {k: v for k, v in kwargs.items() if k != "output_dir"}


def reward_func(tokenizer, seen: list):
    """alignkit's ``rule:exact_answer`` in TRL's reward signature; records each call's prompts."""
    from alignkit.rollout import build_reward

    fn = build_reward("rule:exact_answer", tokenizer, "cpu")

    def exact_answer(prompts, completions, answer, **kwargs):
        seen.append(list(prompts))
        return fn(list(prompts), list(completions), [{"answer": a} for a in answer])

    return exact_answer


def run(args) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    perm = alignkit_order(len(rows), args.batch, args.seed)  # fed sequentially
    dataset = Dataset.from_list([{"prompt": rows[i]["prompt"], "answer": str(rows[i]["answer"])} for i in perm])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    seen: list = []
    config, used = build_config(args)
    timer = step_timer(device)
    import_run_libraries(args.model)  # model code imported before the setup timer starts
    t_init = time.perf_counter()
    trainer = GRPOTrainer(model=args.model, reward_funcs=reward_func(tokenizer, seen), args=config,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    setup = time.perf_counter() - t_init
    gen_log: list = []
    hf_log: list = []
    time_hf_generate(hf_log)
    inner = trainer._generate_single_turn

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        sync(device)
        gen_log.append((time.perf_counter() - t0, sum(len(c) for c in out[0])))
        return out

    trainer._generate_single_turn = timed
    trainer.train()
    step_seconds, step_cpu = timer.step_times()
    history = [{"step": i + 1, **{k: log.get(k) for k in ("loss", "reward", "completions/mean_length", "kl",
                                                         "grad_norm", "learning_rate")}}
               for i, log in enumerate(timer.logs)]
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "framework": "trl", "device": str(device), "trl_version": trl.__version__,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "options": used, "notes": [],
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "setup_seconds": setup, **summarize_steps(step_seconds, step_cpu, gen_log, args.warmup, hf_log),
        "peak_memory_mb": peak_memory_mb(device),
        "step_prompts": [p[:: args.k] for p in seen], "history": history,
        "worker_seconds": time.perf_counter() - T_START,
    }


def main() -> None:
    run_and_write(grpo_parser().parse_args(), run)


if __name__ == "__main__":
    main()
