"""The model-family matrix: each family of `alignkit.models.families` through the executor, the trainer,
generation, best-of-N and an online step, with what was measured.

Per family (a tiny random model, paired with the family's real tokenizer when the vendored tokenizers are
on the machine), `check_family` measures:

* ``shared_prompt`` / ``padded`` — the largest |executor − naive| over the token log-probs of 5 responses
  (2 records, K = 2 and 3, prompts of 24 tokens: three times the test models' sliding window), where naive is
  the model's own full forward on each prompt + response alone, fp32;
* ``flex`` — the same three errors with the model loaded with FlexAttention (`flex_errors`: alignkit's
  block-sparse `BlockMask` for shared-prompt rows, unfused on CPU) against the naive forward of the same weights
  under SDPA / eager, or why the family is skipped;
* ``grad`` — the largest |∂| difference of a weighted sum of those log-probs with respect to every parameter,
  executor (shared-prompt rows) vs naive, relative to the largest gradient;
* ``generate`` — the largest |log-prob the sampler reported − executor log-prob| of the same sampled tokens
  (`alignkit.generation.prefill.sample_shared`, KV cache and left padding included);
* ``dpo`` — the first loss of a one-step DPO run through `alignkit.train` (policy = reference: ln 2) and the
  layout the start-up check settled on; ``lora`` — the same with ``lora=true`` and the modules LoRA found;
* ``bt`` — a one-step Bradley–Terry reward-model run (the reward read at each response's last token
  matches the sequence-classification model's own forward at start-up);
* ``bon`` — best-of-4 returns the candidate of highest reward; ``grpo`` — one GRPO step.

``scripts/model_matrix.py`` writes ``docs/models.md`` from `check_family`; ``tests/test_model_matrix.py``
runs the same checks with assertions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit import train
from alignkit.data.collate import collate_padded, collate_shared_prompt
from alignkit.data.tokenize import TokenizedRecord
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import LogProbModel, attention_windows, sum_per_slot
from alignkit.generation import prompt_ids
from alignkit.generation.prefill import sample_shared
from alignkit.inference import InferenceSettings, run_method
from alignkit.models.families import FAMILIES, build_family_model, save_family, tokenizer_dir
from alignkit.models.load import load_model, load_tokenizer, lora_targets

PROMPT_WORDS = ("The film opens on a quiet harbour town where an old keeper tells the story of a storm that "
                "changed everything for the people who lived there")
PROMPTS = [PROMPT_WORDS, "After the storm the keeper's daughter " + PROMPT_WORDS.lower()]


@dataclass
class FamilyResult:
    name: str
    tokenizer: str
    attention: str
    windows: dict
    errors: dict = field(default_factory=dict)  # shared_prompt, padded, grad, generate
    flex: dict | str = field(default_factory=dict)  # flex_errors: per layout, or why skipped
    runs: dict = field(default_factory=dict)  # dpo, lora, bt, grpo: first loss; layout
    lora_modules: list = field(default_factory=list)
    lora_parameters: list = field(default_factory=list)
    bon: bool = False
    seconds: float = 0.0


def random_records(vocab: int, seed: int = 0, prompt_len: int = 24) -> list[TokenizedRecord]:
    """Two records of random ids (K = 2 and 3), prompts ``prompt_len`` long, responses 5-13 tokens."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    return [TokenizedRecord(ids(prompt_len), [ids(n) for n in lens], [0] * len(lens), index=i)
            for i, lens in enumerate([(6, 13), (5, 9, 11)])]


def naive_token_logps(model, items: list[TokenizedRecord]) -> torch.Tensor:
    """Token log-probs of every response from the model's own forward on prompt + response alone, in slot order."""
    out = []
    for tr in items:
        for k in range(tr.k):
            ids = torch.tensor([tr.full_ids(k)])
            logps = model(input_ids=ids).logits.float().log_softmax(-1)[0]
            start = len(tr.prompt_ids) + tr.score_start[k]
            out.append(logps[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1))
    return torch.cat(out)


def flex_errors(name: str, vocab: int = 1000) -> dict[str, float] | str:
    """`logprob_errors` of the family's model loaded with FlexAttention (shared-prompt rows through alignkit's
    `BlockMask`, padded rows through transformers' own flex mask; unfused on CPU) against the naive forward of
    the same weights under SDPA / eager, or why the family is skipped."""

    try:
        model = build_family_model(name, vocab_size=vocab, attn_implementation="flex_attention")
    except ConfigError as e:
        return str(e).split(":", 1)[1].split(";")[0].strip()
    return logprob_errors(model, reference=build_family_model(name, vocab_size=vocab))


def _slot_order(batch) -> torch.Tensor:
    return torch.argsort(batch.slot * 10_000 + batch.token_pos)


def logprob_errors(model, seed: int = 0, reference=None) -> dict[str, float]:
    """Executor vs naive forward: token log-prob errors in both layouts, and the relative gradient error.
    ``reference``: the same weights under another attention backend for the naive forward (default: ``model``)."""
    reference = reference if reference is not None else model
    items = random_records(model.config.vocab_size, seed)
    K = max(tr.k for tr in items)
    with torch.no_grad():
        naive = naive_token_logps(reference, items)
    errors = {}
    for layout in ("shared_prompt", "padded"):
        batch = collate_shared_prompt(items, 0, 256) if layout == "shared_prompt" else collate_padded(items, 0)
        with torch.no_grad():
            ours = LogProbModel(model)(batch)[_slot_order(batch)]
        errors[layout] = float((ours - naive).abs().max())
    weights = torch.randn(len(items), K, generator=torch.Generator().manual_seed(seed + 1))
    batch = collate_shared_prompt(items, 0, 256)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad((sum_per_slot(LogProbModel(model)(batch), batch) * weights).sum(), params,
                               allow_unused=True)
    naive = naive_token_logps(reference, items)
    lengths = [len(tr.segments[k]) for tr in items for k in range(tr.k)]
    per_slot = torch.stack([t.sum() for t in naive.split(lengths)])
    slot_weights = torch.cat([weights[b, : tr.k] for b, tr in enumerate(items)])
    theirs = torch.autograd.grad((per_slot * slot_weights).sum(), [p for p in reference.parameters() if p.requires_grad],
                                 allow_unused=True)
    pairs = [(a, b) for a, b in zip(ours, theirs) if a is not None and b is not None]
    scale = max(float(b.abs().max()) for _, b in pairs)
    errors["grad"] = max(float((a - b).abs().max()) for a, b in pairs) / scale
    return errors


def generation_error(model, tokenizer, n: int = 3, max_new_tokens: int = 12) -> float:
    """|sampler log-prob − executor log-prob| of the sampled tokens, largest over prompts x samples."""
    got = sample_shared(model, tokenizer, PROMPTS, n, max_new_tokens=max_new_tokens, seed=0, chat_template="never")
    g = got.generation
    items = []
    for b, prompt in enumerate(PROMPTS):
        segs = [ids + ([stop] if stop is not None else []) for ids, stop in zip(g.token_ids[b], g.stop_ids[b])]
        items.append(TokenizedRecord(prompt_ids(tokenizer, prompt, "never"), segs, [0] * len(segs), index=b))
    batch = collate_shared_prompt(items, tokenizer.pad_token_id, 512)
    with torch.no_grad():
        ours = sum_per_slot(LogProbModel(model)(batch), batch)
    return float((ours - got.logps).abs().max())


def best_of_n_picks_the_best(model, tokenizer) -> bool:
    def reward(prompts, completions, rows):
        return [float(len(c)) + 1e-3 * i for i, c in enumerate(completions)]

    outs = run_method("bon", model, tokenizer, PROMPTS, settings=InferenceSettings(max_new_tokens=8, chat_template="never"),
                      options={"n": 4}, reward_fn=reward)
    return all(len(o.candidates) == 4 and o.reward == max(o.rewards) for o in outs)


def distinct_characters(prompts, completions, rows) -> list[float]:
    """A reward that tells random completions apart (GRPO's advantages are then not all zero)."""
    return [float(len(set(c))) for c in completions]


def write_data(folder: Path) -> tuple[Path, Path]:
    """Four preference pairs with long plain-text prompts, and the prompts as a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = folder / "pairs.jsonl"
    words = [("a calm and moving ending.", "a dull and empty ending."), ("wonderful acting.", "awful acting."),
             ("a story worth telling.", "a story nobody needed."), ("great music.", "boring music.")]
    with open(pairs, "w", encoding="utf-8") as f:
        for i, (good, bad) in enumerate(words):
            f.write(json.dumps({"prompt": PROMPTS[i % 2] + ". In short it was", "chosen": " " + good,
                                "rejected": " " + bad}) + "\n")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(p + ". In short it was" for p in PROMPTS) + "\n", encoding="utf-8")
    return pairs, prompts


def train_once(path: Path, data: Path, prompts: Path, out: Path, objective: str, **extra) -> dict:
    """One optimizer step of ``objective`` through `alignkit.train`: (first loss, layout the run used)."""
    settings = {"model": str(path), "objective": objective, "batch_size": 2, "max_steps": 1, "lr": 1e-4,
                "output_dir": str(out), "progress": False, "max_length": 96, **extra}
    if objective == "grpo":
        settings.update(prompts=str(prompts), reward="alignkit.model_matrix:distinct_characters", num_samples=2,
                        max_new_tokens=6)
    else:
        settings["data"] = str(data)
    result = train(settings)
    first = next(h for h in result.history if "loss" in h)
    return {"loss": first["loss"], "grad_norm": first["grad_norm"], "layout": result.layout}


def check_family(name: str, root: Path, trainer_runs: bool = True, lora_run: bool = True) -> FamilyResult:
    """Every check of the module docstring for family ``name``; model, data and runs go under ``root``.
    ``trainer_runs=False`` skips the four `alignkit.train` runs, ``lora_run=False`` the LoRA one."""
    start = time.perf_counter()
    family = FAMILIES[name]
    path = root / name / "model"
    if not (path / "config.json").exists():
        save_family(name, path)
    tokenizer, model = load_tokenizer(str(path)), load_model(str(path))
    result = FamilyResult(name, family.tokenizer if tokenizer_dir(family.tokenizer) else "built-in tiny",
                          model.config._attn_implementation, attention_windows(model.config) or {})
    model.eval()
    result.errors = logprob_errors(model)
    result.errors["generate"] = generation_error(model, tokenizer)
    result.flex = flex_errors(name)
    result.bon = best_of_n_picks_the_best(model, tokenizer)
    result.lora_modules, result.lora_parameters, _ = lora_targets(model)
    if trainer_runs:
        data, prompts = write_data(root / name / "data")
        runs = [("dpo", "dpo", {}), ("lora", "dpo", {"lora": True}), ("bt", "bt", {}), ("grpo", "grpo", {})]
        for run, objective, extra in runs if lora_run else [r for r in runs if r[0] != "lora"]:
            result.runs[run] = train_once(path, data, prompts, root / name / run, objective, **extra)
    result.seconds = time.perf_counter() - start
    return result


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def _flex(flex: dict | str) -> str:
    if isinstance(flex, str):
        return f"skipped: {flex}"
    return f"{_fmt(flex['shared_prompt'])}, {_fmt(flex['padded'])}; grad {_fmt(flex['grad'])}"


def _windows(windows: dict) -> str:
    if not windows:
        return "a layer type no mask expresses"
    if list(windows) == ["full_attention"]:
        return "none" if windows["full_attention"] is None else f"{windows['full_attention']} on every layer"
    return ", ".join(f"{w} on {t.split('_')[0]} layers" if w else f"{t.split('_')[0]} layers global"
                     for t, w in windows.items())


def to_markdown(results: list[FamilyResult], header: str) -> str:
    lines = [header, "",
             "| family | tokenizer | attention | sliding windows | shared-prompt | padded | flex (shared-prompt, "
             "padded; grad) | grad (rel.) | generate | DPO step (loss, layout) | LoRA step | BT step | GRPO step | best-of-4 "
             "| LoRA targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        runs = {k: (f"{v['loss'] + 0.0:.4f}" + (f", {v['layout']}" if k == "dpo" else "")) if math.isfinite(v["loss"])
                else "non-finite" for k, v in r.runs.items()}
        targets = ", ".join(r.lora_modules) + (f"; experts: {', '.join(r.lora_parameters)}" if r.lora_parameters else "")
        lines.append(f"| {FAMILIES[r.name].config_class.removesuffix('Config')} | {r.tokenizer} | {r.attention} | "
                     f"{_windows(r.windows)} | {_fmt(r.errors['shared_prompt'])} | {_fmt(r.errors['padded'])} | "
                     f"{_flex(r.flex)} | "
                     f"{_fmt(r.errors['grad'])} | {_fmt(r.errors['generate'])} | {runs.get('dpo', '-')} | "
                     f"{runs.get('lora', '-')} | {runs.get('bt', '-')} | {runs.get('grpo', '-')} | "
                     f"{'picks the best' if r.bon else 'WRONG'} | {targets} |")
    return "\n".join(lines) + "\n"


def quiet() -> None:
    """Keep the matrix's output to its table: no per-run logging or transformers warnings."""
    from transformers.utils import logging as hf_logging

    logging.getLogger("alignkit").setLevel(logging.WARNING)
    hf_logging.set_verbosity_error()
