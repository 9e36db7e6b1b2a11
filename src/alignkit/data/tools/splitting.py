"""Train/eval split by prompt (`alignkit data split`): no prompt lands in both parts.

Wraps `alignkit.data.dataset.split_by_prompt` (the split the trainer makes for ``eval_fraction``):
the distinct (system, prompt) pairs are shuffled with ``seed`` and ``round(eval_fraction * prompts)``
of them (at least one) are held out with all their records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignkit.data.dataset import prompt_key, split_by_prompt
from alignkit.data.schema import PreferenceRecord
from alignkit.errors import ConfigError, DataError


@dataclass
class Split:
    train: list[PreferenceRecord]
    eval: list[PreferenceRecord]
    report: dict[str, Any]


def split(records: list[PreferenceRecord], eval_fraction: float = 0.1, seed: int = 0) -> Split:
    """Records split into train and eval by prompt; both keep the input order."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"split: eval_fraction must be in (0, 1), got {eval_fraction}")
    train, evals = split_by_prompt(records, eval_fraction, seed)
    prompts = {name: len({prompt_key(r) for r in part}) for name, part in (("train", train), ("eval", evals))}
    if not train:
        raise DataError(f"split: all {prompts['eval']} distinct prompt(s) went to eval; lower eval_fraction "
                         "or add prompts")
    report = {"records_in": len(records), "train_records": len(train), "eval_records": len(evals),
              "train_prompts": prompts["train"], "eval_prompts": prompts["eval"], "eval_fraction": eval_fraction,
              "seed": seed}  # fmt: skip
    return Split(train, evals, report)
