"""``alignkit doctor MODEL [--data FILE]``: what alignkit will do with a model (and data), on one screen,
before a run: family and size, tokenizer and chat template, special tokens, the attention path and batch
layout and why, LoRA's target modules, the prompt/completion boundary of the first rows of the data, and the
estimated peak training memory. It reads the tokenizer and the config only (the parameter count comes from
the config on the meta device); ``--load-weights`` also loads the weights and runs the executor check.

The exit status is 1 when something would fail in training (chat data without a chat template, a vocabulary
larger than the embedding, a tokenizer with neither pad nor eos, ``max_length`` beyond the position limit,
an executor that disagrees with the model's forward) and 2 when the model cannot be found (one line).

`diagnose` runs the checks and returns `Finding`s; `render` prints them; `doctor_command` is the CLI.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field

import torch

from alignkit import help_text as H
from alignkit.models.checks import position_limit
from alignkit.models.hub import OFFLINE_HELP, resolve_model

# Each command imports what it runs inside its handler: building the parser (every `alignkit ...` call, `--help`
# included) loads this module, and must not load the models, data readers and trainers of every other command.

MARK = {"ok": "✓", "fail": "✗", "warn": "!", "info": " "}
SAMPLE = {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
          "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
          "rejected": [{"role": "assistant", "content": "Lyon."}]}  # the executor check's record without --data
PLAIN = {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon."}  # ... without a template


@dataclass
class Finding:
    label: str  # the left column: model, tokenizer, attention, ...
    text: str
    status: str = "info"  # info | ok | warn | fail


@dataclass
class Diagnosis:
    model: str
    folder: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, label: str, text: str, status: str = "info") -> None:
        self.findings.append(Finding(label, text, status))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]


# ----------------------------------------------------------------------------------------------- checks
def diagnose(model: str, data: str | None = None, *, batch_size: int = 8, max_length: int = 512,
             load_weights: bool = False, rows: int = 3, split: str = "train", subset: str | None = None,
             dtype: str = "float32", lora_r: int = 8, trust_remote_code: bool = False) -> Diagnosis:
    """Every check on ``model`` (a folder or Hub id) and the first ``rows`` records of ``data``."""
    from transformers import AutoConfig, AutoTokenizer

    from alignkit.errors import ModelError

    folder = resolve_model(model, weights=load_weights, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as e:  # a model_type this transformers does not know
        raise ModelError(f"model '{model}': transformers cannot read its config.json ({e}); upgrade transformers "
                         "or, for a model with its own code, pass --trust-remote-code") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    d = Diagnosis(model, folder)
    meta, attn = _meta_model(config, trust_remote_code)
    n_params = sum(p.numel() for p in meta.parameters())
    check_family(d, config, meta, n_params)
    embedding = meta.get_input_embeddings().num_embeddings
    check_tokenizer(d, tokenizer, embedding)
    layout, windows = check_attention(d, config, meta, attn)
    n_lora = check_lora(d, config, lora_r, trust_remote_code)
    check_positions(d, config, max_length)
    records = check_data(d, data, tokenizer, rows, max_length, split, subset) if data else None
    check_memory(d, config, n_params, n_lora, batch_size, max_length, dtype, attn, layout, windows, lora_r)
    if load_weights:
        check_executor(d, folder, tokenizer, records, dtype, max_length, trust_remote_code)
    return d


def _meta_model(config, trust_remote_code: bool):
    """The model built from its config on the meta device (shapes, no memory) with the attention alignkit picks."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.load import attention_implementation

    attn = attention_implementation(config, "auto")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, trust_remote_code=trust_remote_code)
    return model, attn


def check_family(d: Diagnosis, config, meta, n_params: int) -> None:
    tied = " (tied embeddings)" if getattr(config, "tie_word_embeddings", False) else ""
    d.add("family", f"{config.model_type} · {type(meta).__name__} · {n_params / 1e6:,.1f}M parameters{tied}")


def check_tokenizer(d: Diagnosis, tok, embedding: int) -> None:
    n = len(tok)
    fits = n <= embedding
    d.add("tokenizer", f"{type(tok).__name__}: {n:,} tokens, embedding {embedding:,} rows" + (
        "" if fits else f"; token ids up to {n - 1:,} do not fit: use the model's own tokenizer, or resize the "
                        "embeddings (model.resize_token_embeddings) before training"), "ok" if fits else "fail")
    template = getattr(tok, "chat_template", None)
    d.add("chat", f"template present ({len(template):,} characters)" if template else
          "no chat template: plain-text prompts only (chat data needs one: use an -Instruct/-chat tokenizer)",
          "ok" if template else "warn")

    def show(name: str) -> str:
        token, tid = getattr(tok, f"{name}_token"), getattr(tok, f"{name}_token_id")
        return f"{name} {token!r} ({tid})" if token is not None else f"{name} none"

    text = "  ".join(show(s) for s in ("bos", "eos", "pad"))
    if tok.pad_token is None and tok.eos_token is None:
        d.add("special", text + ": no pad and no eos; add a pad token to the tokenizer and save it", "fail")
    elif tok.pad_token is None:
        d.add("special", text + f"; padding with eos {tok.eos_token!r} (masked out)", "ok")
    else:
        d.add("special", text, "ok")


def check_attention(d: Diagnosis, config, meta, attn: str) -> tuple[str, dict | None]:
    from alignkit.executor.logprobs import attention_windows, packing_layout

    cls = type(meta).__name__
    why = {"sdpa": "supports torch SDPA", "flex_attention": "supports FlexAttention (block-sparse masks on CUDA)"}.get(
        attn, "does not support SDPA")
    d.add("attention", f"{attn}: {cls} {why}; SDPA and eager take the block mask, flash-attention cannot (padded rows)")
    windows = attention_windows(config)
    layers = getattr(config, "layer_types", None) or []
    if windows is None:
        d.add("windows", f"layer types {sorted(set(layers))} that a block mask cannot express", "warn")
    elif set(windows.values()) == {None}:
        d.add("windows", "full attention on every layer")
    elif not layers:
        d.add("windows", f"a sliding window of {windows['full_attention']} tokens on every layer")
    else:
        d.add("windows", "; ".join(f"{t}: {'window ' + str(w) if w else 'full'}"
                                   + (f" ({layers.count(t)} of {len(layers)} layers)" if layers else "") for t, w in windows.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = packing_layout("auto", meta)
    if layout == "auto":
        d.add("layout", "shared-prompt packing: a prompt once, its responses behind a block mask"
              + (" + windows" if windows and set(windows.values()) != {None} else "") + " (padded rows where cheaper)",
              "ok")
    else:
        d.add("layout", f"padded rows: attention {attn!r} with these layers cannot take a shared-prompt block mask")
    return layout, windows


def check_lora(d: Diagnosis, config, r: int, trust_remote_code: bool) -> int:
    from alignkit.models.load import LoraConfig, apply_lora, lora_targets

    meta, _ = _meta_model(config, trust_remote_code)
    modules, params, routers = lora_targets(meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            peft_model = apply_lora(meta, LoraConfig(r=r))
            n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        except Exception as e:  # peft refused: report it, count nothing
            d.add("lora", f"peft cannot adapt this model: {type(e).__name__}: {e}", "warn")
            return 0
    text = f"all-linear -> {', '.join(modules)}"
    text += f"; fused experts: {', '.join(params)}" if params else ""
    text += f"; routers left alone: {len(routers)}" if routers else ""
    d.add("lora", f"{text} ({n / 1e6:,.2f}M trainable at r={r})")
    return n


def check_positions(d: Diagnosis, config, max_length: int) -> None:
    found = position_limit(config)
    limit = found[1] if found else None
    if limit is None:
        d.add("positions", f"max_length {max_length}; the config states no position limit", "warn")
    elif max_length > limit:  # training lowers it to the limit, with the same warning (engine/rundir.py)
        d.add("positions", f"max_length {max_length} is beyond the model's {limit:,} positions ({found[0]}): "
              f"training cuts sequences at {limit:,}; set max_length <= {limit} to keep this", "warn")
    else:
        d.add("positions", f"max_length {max_length} <= {limit:,} positions", "ok")


def check_data(d: Diagnosis, data: str, tok, rows: int, max_length: int, split: str, subset: str | None):
    """The layout and the prompt/completion boundary of the first ``rows`` records (None if unreadable)."""
    from alignkit.data.io import read_records
    from alignkit.data.tokenize import TokenizeConfig, tokenize_record
    from alignkit.errors import DataError

    try:  # as training reads it (on_bad_row=error): a bad row, a missing file or Hub dataset would stop the run
        result = read_records(data, split=split, subset=subset)
    except DataError as e:
        d.add("data", str(e), "fail")
        return None
    d.add("data", f"{result.source}: {len(result)} records; {result.layout_reason or 'layout ' + result.layout}")
    records = result.records[:rows]
    for i, record in enumerate(records):
        try:
            tr = tokenize_record(record, tok, TokenizeConfig(max_length=None), index=i)
        except ValueError as e:  # chat data without a template, an empty completion...
            d.add(f"  record {i + 1}", str(e), "fail")
            return None
        prompt = tr.prompt_ids + tr.segments[0][:tr.score_start[0]]
        completion = tr.completion_ids(0)
        over = len(prompt) + len(completion) > max_length
        d.add(f"  record {i + 1}", f"prompt {len(prompt)} + completion {len(completion)} tokens"
              + (f" (> max_length {max_length}: truncated)" if over else "") + f": {boundary(tok, prompt, completion)}",
              "warn" if over else "ok")
    return records


def boundary(tok, prompt: list[int], completion: list[int], before: int = 6, after: int = 6, end: int = 3) -> str:
    """``…<|im_start|>assistant\\n│Paris is…<|im_end|>``: the text around the prompt/completion boundary (│)
    and the completion's last tokens, special tokens shown, newlines escaped."""
    def text(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False).replace("\n", "\\n")

    head = completion if len(completion) <= after + end else completion[:after]
    tail = "" if head is completion else "…" + text(completion[-end:])
    return ("…" if len(prompt) > before else "") + text(prompt[-before:]) + "│" + text(head) + tail


def check_memory(d: Diagnosis, config, n_params: int, n_lora: int, batch_size: int, max_length: int, dtype: str,
                 attn: str, layout: str, windows: dict | None, r: int) -> None:
    from alignkit.executor.logprobs import auto_chunk_size
    from alignkit.models.memory import estimate_training_memory

    distinct = len(set(windows.values())) if windows else 1
    est = estimate_training_memory(config, n_params, n_lora, batch_size, max_length, dtype=dtype, attn=attn,
                                   windows=distinct, packed=layout != "padded",
                                   chunk_rows=auto_chunk_size(config.vocab_size, torch.device("cuda")))
    big = est.full() >= 2**30
    unit, scale = ("GB", 2**30) if big else ("MB", 2**20)

    def num(n: int) -> str:
        return f"{n / scale:,.2f}" if big else f"{n / scale:,.1f}"

    rest = (f"activations {num(est.activations)} + mask {num(est.mask)} + vocab chunk {num(est.logits_chunk)} "
            f"{unit}")
    d.add("memory", f"peak of one DPO step on a GPU, estimated (alignkit.models.memory): batch {batch_size} x 2 "
          f"x {max_length} tokens, {dtype} weights, bf16 autocast")
    d.add("  full FT", f"{num(est.full())} {unit} = weights {num(est.weights)} + grads {num(est.full_grads)} + "
          f"AdamW {num(est.full_adamw)} + {rest}")
    d.add(f"  LoRA r={r}", f"{num(est.lora())} {unit} = weights {num(est.weights)} + adapters with grads and AdamW "
          f"{num(est.lora_adapters)} + {rest}")
    d.add("  options", f"gradient_checkpointing=true: full {num(est.full(True))}, LoRA {num(est.lora(True))} {unit}; "
          f"a frozen reference (ref_cache=off): + {num(est.reference_copy)} {unit}")


def check_executor(d: Diagnosis, folder: str, tok, records, dtype: str, max_length: int,
                   trust_remote_code: bool) -> None:
    """The start-up check of a training run (`alignkit.engine.score.layout_checks`: every response of the longest
    record through the executor and through the model's own forward) in shared-prompt and in padded rows, on
    ``records`` (or a sample pair). Shared-prompt rows that disagree while padded rows agree: training falls
    back to padded rows by itself (a warning here); padded rows that disagree: a failure."""
    from alignkit.data.dataset import TokenizedDataset
    from alignkit.data.layouts import parse_row
    from alignkit.data.tokenize import TokenizeConfig
    from alignkit.engine.score import layout_checks
    from alignkit.executor.logprobs import (
        ExecutorMismatch,
        LogProbModel,
        attention_cost_weight,
        supports_packing,
        verify_against_forward,
    )
    from alignkit.models.load import load_model

    model = load_model(folder, dtype=dtype, trust_remote_code=trust_remote_code).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    records = records or [parse_row(SAMPLE if getattr(tok, "chat_template", None) else PLAIN, "paired")]
    try:
        data = TokenizedDataset.build(records, tok, TokenizeConfig(max_length=max_length), "doctor data")
    except ValueError as e:
        d.add("executor", f"cannot tokenize the records: {e}", "fail")
        return
    rtol = 1e-4 if dtype in ("float32", "fp32") else 3e-2
    scorer = LogProbModel(model)
    layouts = ("shared_prompt", "padded") if supports_packing(model) else ("padded",)
    with torch.no_grad():
        results = layout_checks(lambda b: verify_against_forward(model, b, rtol, scorer), data, tok.pad_token_id,
                                layouts, 256, attention_cost_weight(model), next(model.parameters()).device)
    shown = {k: f"DIFFERS ({str(v).split(';')[0]})" if isinstance(v, ExecutorMismatch) else f"|diff| {v:.1e}"
             for k, v in results.items()}
    text = "; ".join(f"{k}: {v}" for k, v in shown.items())
    if isinstance(results["padded"], ExecutorMismatch):
        d.add("executor", f"{text}: the log-probs would be wrong in every layout; report the model type", "fail")
    elif any(isinstance(v, ExecutorMismatch) for v in results.values()):
        d.add("executor", f"{text}: training falls back to padded rows for this model (automatic)", "warn")
    else:
        d.add("executor", f"matches the model's own forward on the longest of {len(records)} record(s): {text}", "ok")


# ----------------------------------------------------------------------------------------------- printing
def render(d: Diagnosis) -> str:
    """The findings as one screen of text: ``mark label  text`` lines, then the verdict."""
    head = f"alignkit doctor {d.model}" + (f"  ({d.folder})" if d.folder != d.model else "")
    lines = [head]
    lines += [f"{MARK[f.status]} {f.label:<11} {f.text}" for f in d.findings]
    fails = d.failures
    lines.append(f"{MARK['fail']} {len(fails)} problem(s): " + "; ".join(f.label.strip() for f in fails)
                 if fails else f"{MARK['ok']} nothing found that would stop a run")
    return "\n".join(lines)


def doctor_command(args: argparse.Namespace) -> int:
    d = diagnose(args.model, args.data, batch_size=args.batch_size, max_length=args.max_length,
                 load_weights=args.load_weights, rows=args.rows, split=args.split, subset=args.subset,
                 dtype=args.dtype, lora_r=args.lora_r, trust_remote_code=args.trust_remote_code)
    print(render(d))
    return 1 if d.failures else 0


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check a model (and data) before training: tokenizer, attention, LoRA, memory",
                       description="alignkit doctor MODEL [--data FILE] [--batch-size N --max-length L] [--load-weights]")
    p.add_argument("model", help="a model folder or a Hub id (Qwen/Qwen2.5-0.5B-Instruct)")
    p.add_argument("--data", default=None, help="a data file or Hub dataset: layout and boundary of the first rows")
    p.add_argument("--split", default="train", help="the split of a Hub dataset (default train)")
    p.add_argument("--subset", default=None, help="the subset (configuration) of a Hub dataset")
    p.add_argument("--rows", type=int, default=3, help="records to show (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step for the memory estimate (default 8)")
    p.add_argument("--max-length", type=int, default=512,
                   help="tokens per sequence: checked against the position limit, used by the memory estimate")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype for the memory estimate (and --load-weights)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank for the trainable-parameter count and memory")
    p.add_argument("--load-weights", action="store_true", help="also load the weights and check the executor")
    p.add_argument("--trust-remote-code", action="store_true", help=H.TRUST_REMOTE_CODE)
    p.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    p.set_defaults(fn=doctor_command)
