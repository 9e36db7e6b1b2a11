"""Systems under evaluation: samples from a model, or pre-generated outputs, aligned prompt by prompt.

A `System` is a list of prompt rows with K completions each. It comes from

* a model folder: K samples per prompt (`alignkit.generation.generate`), or
* an outputs file (JSONL / CSV / Parquet): one row per prompt with ``prompt`` and ``completion`` (or
  ``completions``: a list, as `alignkit generate` writes, or ``response`` / ``output``), optional
  ``subset`` (or ``meta.subset``).

Two systems are compared on the prompts they share: `align` pairs the j-th completion of A for a prompt
with the j-th completion of B for the same prompt text (repeated prompts pool their completions), so
a file of outputs lines up with samples generated from the same prompts, in any order.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data.io import iter_rows
from alignkit.data.schema import Text
from alignkit.errors import ConfigError, DataError
from alignkit.generation import generate
from alignkit.inference.commands import read_prompts
from alignkit.io_atomic import atomic_write
from alignkit.rewards.judges import load_callable

OUTPUT_FIELDS = ("completion", "completions", "response", "responses", "output")


@dataclass
class System:
    """``completions[i]`` are the K_i answers to ``prompts[i]``; ``subsets[i]`` its subset (or None)."""

    name: str
    source: str
    prompts: list[Text]
    completions: list[list[str]]
    subsets: list[str | None]
    finished: list[list[bool]] | None = None
    is_reference: bool = False

    def flat(self) -> tuple[list[Text], list[str]]:
        """(prompt, completion) of every answer, row by row."""
        pairs = [(p, c) for p, row in zip(self.prompts, self.completions) for c in row]
        return [p for p, _ in pairs], [c for _, c in pairs]

    def unflatten(self, values: list) -> list[list]:
        out, pos = [], 0
        for row in self.completions:
            out.append(values[pos:pos + len(row)])
            pos += len(row)
        return out

    @property
    def num_answers(self) -> int:
        return sum(len(row) for row in self.completions)


def prompt_key(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def align(a: System, b: System) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``[((row_a, k_a), (row_b, k_b)), ...]``: answers of A and B to the same prompt, paired in order."""
    queue: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (p, row) in enumerate(zip(b.prompts, b.completions)):
        queue[prompt_key(p)] += [(i, k) for k in range(len(row))]
    used: dict[str, int] = defaultdict(int)
    out = []
    for i, (p, row) in enumerate(zip(a.prompts, a.completions)):
        key = prompt_key(p)
        for k in range(len(row)):
            if used[key] < len(queue[key]):
                out.append(((i, k), queue[key][used[key]]))
                used[key] += 1
    if not out:
        raise DataError(f"systems {a.name!r} and {b.name!r} share no prompt: nothing to compare")
    return out


def system_name(path: str) -> str:
    """A short name for a model folder or outputs file: ``runs/dpo/final`` → ``dpo``,
    ``runs/dpo/checkpoints/step-000100`` → ``dpo@step-000100``, ``out/sft.jsonl`` → ``sft``."""
    p = Path(path.rstrip("/"))
    if p.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        return p.stem
    if p.name == "final" and p.parent.name:
        return p.parent.name
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return f"{p.parent.parent.name}@{p.name}"
    return p.name


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", name).strip("_") or "system"


def _subset(row: dict[str, Any]) -> str | None:
    value = row.get("subset", (row.get("meta") or {}).get("subset") if isinstance(row.get("meta"), dict) else None)
    return None if value is None else str(value)


def read_outputs(path: str, name: str | None = None) -> System:
    """A `System` from a file of pre-generated outputs (see the module docstring)."""
    if not Path(path).is_file():
        raise DataError(f"outputs file {path} does not exist")
    prompts, completions, subsets = [], [], []
    for n, row in iter_rows(path):
        field = next((f for f in OUTPUT_FIELDS if f in row), None)
        if "prompt" not in row or field is None:
            raise DataError(f"{path} row {n}: an outputs row needs 'prompt' and one of {list(OUTPUT_FIELDS)}; "
                             f"it has {sorted(row)}")
        value = row[field]
        texts = value if isinstance(value, list) and all(isinstance(v, str) for v in value) else [value]
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path} row {n}: field {field!r} must be a string or a list of strings")
        prompts.append(row["prompt"])
        completions.append(list(texts))
        subsets.append(_subset(row))
    if not prompts:
        raise DataError(f"{path}: no outputs")
    return System(name or system_name(path), str(path), prompts, completions, subsets)


def write_outputs(system: System, path: Path, scores: list[list[float]] | None = None) -> Path:
    """The system's answers as an outputs file (``prompt``, ``completions``, optional ``scores``/``subset``),
    which `read_outputs` (and so ``alignkit eval --models FILE``) reads back."""
    with atomic_write(path) as f:
        for i, (p, row) in enumerate(zip(system.prompts, system.completions)):
            out: dict[str, Any] = {"prompt": p, "completions": row}
            if scores is not None:
                out["scores"] = scores[i]
            if system.subsets[i] is not None:
                out["subset"] = system.subsets[i]
            f.write(json.dumps(out) + "\n")
    return path


def load_prompts(spec: str, n: int | None = None, seed: int = 0) -> tuple[list[Text], list[str | None]]:
    """(prompts, subsets) from a file (``.txt``: one per line; JSONL / CSV / Parquet: ``prompt`` and optional
    ``subset`` columns; the first ``n``) or a function ``module:function`` called as ``fn(n, seed=seed)``
    (e.g. ``alignkit.worlds.reviews:prompts``)."""
    if not Path(spec).exists() and ":" in spec:
        if n is None:
            raise ConfigError(f"prompts from a function ({spec}) need a count: pass --n-prompts")
        prompts = list(load_callable(spec, "prompts")(n, seed=seed))
        return prompts, [None] * len(prompts)
    if Path(spec).suffix == ".txt":
        prompts = read_prompts(spec)[:n]
        return prompts, [None] * len(prompts)

    if not Path(spec).exists():
        raise DataError(f"prompts file {spec} does not exist (or give a function as module:function)")
    prompts, subsets = [], []
    for row_n, row in iter_rows(spec):
        if row.get("prompt") in (None, ""):
            raise DataError(f"{spec} row {row_n}: field 'prompt' is missing or empty")
        prompts.append(row["prompt"])
        subsets.append(_subset(row))
        if n is not None and len(prompts) >= n:
            break
    if not prompts:
        raise DataError(f"{spec}: no prompts")
    return prompts, subsets


def sample_system(name: str, source: str, model, tokenizer, prompts: list[Text], subsets: list[str | None],
                  samples: int, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  batch_size: int) -> System:
    """K = ``samples`` answers per prompt from a model (same seed for every system)."""
    gen = generate(model, tokenizer, prompts, k=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, seed=seed, batch_size=batch_size)
    return System(name, source, list(prompts), gen.texts, list(subsets), gen.finished)


def apply_subsets(system: System, subset_by: Callable | None) -> None:
    if subset_by is not None:
        system.subsets = [str(subset_by(p)) for p in system.prompts]


def lengths(system: System, tokenizer=None) -> list[list[int]]:
    """Length of every answer: tokens of ``tokenizer`` (no special tokens), else characters."""
    if tokenizer is None:
        return [[len(c) for c in row] for row in system.completions]
    return [[len(ids) for ids in tokenizer(row, add_special_tokens=False)["input_ids"]] if row else []
            for row in system.completions]
