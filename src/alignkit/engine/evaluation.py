"""Evaluation during training (`Trainer.evaluate`): the objective's loss and metrics on the held-out data,
averaged over records and merged across processes, plus sampled metrics on ``eval_prompts`` judged by
``eval_judge``. Nothing here changes the trainer's state (the objective's state is put back after each batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alignkit.errors import ConfigError
from alignkit.executor.logprobs import unwrap

# (config, tokenizer) -> (policy -> {metric: value}); `alignkit.eval.training_metrics.TrainingEvaluator` is one
SampledEval = Callable[[Any, Any], Callable[[Any], dict[str, float]]]


def check_sampled_eval(config, sampled_eval: SampledEval | None) -> SampledEval | None:
    """``sampled_eval`` itself; a run with ``eval_judge`` but no evaluator wired is refused, naming the key."""
    if config.eval_judge and sampled_eval is None:
        raise ConfigError("eval_judge: a Trainer built by hand needs the evaluator that samples and judges: "
                          "Trainer(config, sampled_eval=alignkit.eval.training_metrics.TrainingEvaluator), "
                          "or train with alignkit.train / `alignkit train`")
    return sampled_eval


@torch.no_grad()
def held_out(trainer) -> dict[str, float]:
    """``eval/<metric>``: the record-weighted mean of the objective's loss and metrics over the eval data (each
    process takes every num_processes-th batch), and the sampled metrics of `sampled`."""
    if trainer.eval_data is None:
        return trainer.generation_eval()
    from accelerate.utils import gather_object

    trainer.scorer.eval()
    acc, bs = trainer.accelerator, trainer.config.batch_size
    totals: dict[str, float] = {"_n": 0.0}
    for start in range(acc.process_index * bs, len(trainer.eval_data), bs * acc.num_processes):
        idx = list(range(start, min(start + bs, len(trainer.eval_data))))
        out, _ = trainer._micro_loss(idx, trainer.eval_data, train=False)
        w = len(idx)
        for k, v in {"loss": float(out.loss), **out.metrics}.items():
            totals[k] = totals.get(k, 0.0) + v * w
        totals["_n"] += w
    parts = gather_object([totals]) if acc.num_processes > 1 else [totals]
    merged: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            merged[k] = merged.get(k, 0.0) + v
    n = merged.pop("_n")
    return {**{f"eval/{k}": v / n for k, v in merged.items()}, **trainer.generation_eval()}


def sampled(trainer) -> dict[str, float]:
    """Sampled metrics on ``eval_prompts`` judged by ``eval_judge`` (main process), if configured."""
    if not trainer.config.eval_judge or not trainer.accelerator.is_main_process:
        return {}
    if getattr(trainer, "_gen_eval", None) is None:
        trainer._gen_eval = trainer.sampled_eval(trainer.config, trainer.tokenizer)
    return trainer._gen_eval(unwrap(trainer.policy))
