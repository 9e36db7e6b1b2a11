"""DPO throughput on one GPU at real batch sizes: alignkit's attention paths against TRL's best options.

    PYTHONPATH=src python3 scripts/gpu_throughput.py                 # GPU: Qwen2-0.5B shape, bf16, ~8 min
    PYTHONPATH=src python3 scripts/gpu_throughput.py --tiny          # CPU smoke test: 7M model, ~2 min

Model: the Qwen2-0.5B shape (24 layers, hidden 896, 14 / 2 heads, MLP 4864, tied head) with the real
151,936-row vocabulary, random weights built from the config (no Hub download), as a Llama-architecture model:
the same blocks less Qwen2's q/k/v biases (27k parameters), because transformers loads a Qwen2 folder's
tokenizer as Qwen2's byte-level BPE whatever the folder holds. Tokenizer: a word-level one
made from a word list in no time (each word one token, so the data's token counts are exact and a prompt /
completion boundary is always a token boundary); ids above its vocabulary are never seen but the LM head
costs what Qwen2-0.5B's does. Data: random pairs, prompts 100-150 tokens, completions 40-80 (+ EOS).

For each batch size (``--batches``, default 8, 32, 64) the variants run in fresh processes through
bench/'s workers (bench/_alignkit_worker.py, bench/_trl_worker.py: `Trainer.step` / `DPOTrainer` steps,
timed after ``--warmup`` steps, which take the compile of flex attention's kernels):

* ``sdpa``: shared-prompt rows (``packing=shared_prompt``) under SDPA with the dense additive block mask;
* ``flex``: the same rows under FlexAttention with the block-sparse `BlockMask` (`alignkit.executor.flex`);
* ``flex_rows1024``: FlexAttention with ``max_row_tokens=1024``: several records share a row, which a dense
  mask pays for quadratically and a block-sparse one does not;
* ``padded``: one row per (prompt, response) under SDPA (``packing=padded``);
* ``trl_best``: TRL's `DPOTrainer` with its best options (precomputed reference log-probs, no gradient
  checkpointing), when ``trl`` is importable.

First, bench/lm_head_vs_liger.py (seconds): LM-head log-probs forward + backward at the 0.5B head, alignkit's
chunked path vs Liger's fused linear cross-entropy (when ``liger_kernel`` imports) vs full logits, with the
errors of each against fp32.

Every alignkit variant caches the reference log-probs before training (its default), as TRL's best options
precompute them. Reported per run: s/step, tokens/s (real tokens, each once), peak GPU memory, model TFLOP/s
and MFU (bench/dpo_vs_trl.py's FLOP count and datasheet peaks). Results go to ``--out`` (default
bench/results/) as ``gpu_throughput[_tiny].json`` and ``.md``, rewritten after every run, so a run cut short
by a time limit leaves what it measured; ``--budget`` seconds (default 540) stops starting new runs in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import dpo_vs_trl as bench  # noqa: E402  (bench/ is not a package)
import lm_head_vs_liger  # noqa: E402

VARIANTS = {  # name -> (label, worker, extra worker args)
    "sdpa": ("alignkit shared-prompt, SDPA", "_alignkit_worker.py",
             ["--set=attn_implementation=sdpa", "--set=packing=shared_prompt"]),
    "flex": ("alignkit shared-prompt, flex", "_alignkit_worker.py",
             ["--set=attn_implementation=flex_attention", "--set=packing=shared_prompt"]),
    "flex_rows1024": ("alignkit flex, 1024-token rows", "_alignkit_worker.py",
                      ["--set=attn_implementation=flex_attention", "--set=packing=shared_prompt",
                       "--set=max_row_tokens=1024"]),
    "padded": ("alignkit padded rows, SDPA", "_alignkit_worker.py",
               ["--set=attn_implementation=sdpa", "--set=packing=padded"]),
    "trl_best": ("TRL best options", "_trl_worker.py", ["--variant", "best"]),
}
SPECIALS = ["<pad>", "<eos>", "<unk>"]


def build_world(work: Path, size: str, rows: int, seed: int) -> dict:
    """A word-level tokenizer, a random-weight model of ``size`` (bench/dpo_vs_trl.py's SIZES) and ``rows``
    random pairs, all under ``work``; returns what the FLOP count needs (bench.model_flops)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = bench.SIZES[size]
    words = [f"w{i}" for i in range(cfg["tok_vocab"] - len(SPECIALS))]
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    model, model_dir = bench.save_model(work / "model", size, tok, seed, arch="llama", max_positions=4096)
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> tuple[str, int]:
        n = rng.randint(lo, hi)
        return "".join(" " + rng.choice(words) for _ in range(n)), n

    lines, row_tokens = [], []
    for _ in range(rows):
        (prompt, p), (chosen, c), (rejected, r) = text(100, 150), text(39, 79), text(39, 79)
        lines.append(json.dumps({"prompt": prompt.lstrip(), "chosen": chosen, "rejected": rejected}) + "\n")
        row_tokens.append([p, c + 1, r + 1])  # + EOS
    data = work / "pairs.jsonl"
    data.write_text("".join(lines), encoding="utf-8")
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    return {"model": str(model_dir), "data": str(data), "rows": rows, "size": size, "tokenizer_vocab": len(tok),
            "model_vocab": cfg["vocab"], "params": total,
            "params_non_embedding": total - model.get_input_embeddings().weight.numel() - (0 if cfg["tie"] else head),
            "lm_head_params": head, "hidden": cfg["hidden"], "layers": cfg["layers"], "row_tokens": row_tokens}


def add_throughput(r: dict, info: dict, args) -> None:
    """Model TFLOP/s and MFU of one worker result (bench/dpo_vs_trl.py's count), in place."""
    if "error" in r:
        return
    timed = r["step_rows"][args.warmup : args.warmup + args.steps]
    flops = sum(bench.model_flops(info, rows, bench.reference_forwards(r)) for rows in timed) / len(timed)
    r["achieved_tflops"] = flops / r["seconds_per_step"] / 1e12
    peak, r["peak_source"] = bench.peak_tflops(r, args.peak_tflops)
    r["mfu"] = r["achieved_tflops"] / peak if peak else None


def _cell(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(results: list[dict], info: dict, args, device: str) -> str:
    """The results table, and alignkit's tokens/s over TRL best options' at each batch size."""
    lines = [f"# DPO throughput: {device}", "",
             f"Model: {info['size']} shape, {info['params'] / 1e6:.1f}M parameters, vocabulary {info['model_vocab']:,}; "
             f"{args.precision} precision; {args.warmup} warm-up + {args.steps} timed steps per run, each in a fresh "
             "process. tokens/s: real tokens (prompt + chosen + rejected, each once) per second; peak: "
             "`torch.cuda.max_memory_allocated` (peak RSS on CPU). `scripts/gpu_throughput.py`.", "",
             "| batch | variant | attention | layout | s/step | tokens/s | x TRL best | peak GB | TFLOP/s | MFU % | "
             "positions/step |", "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    trl = {r["batch"]: r for r in results if r["variant"] == "trl_best" and "error" not in r}
    for r in results:
        label = VARIANTS[r["variant"]][0]
        if "error" in r:
            what = r["error"] if r["error"].startswith("not run") else f"failed: {r['error'][:160]}"
            lines.append(f"| {r['batch']} | {label} | | | {what} | | | | | | |")
            continue
        ratio = r["tokens_per_second"] / trl[r["batch"]]["tokens_per_second"] if r["batch"] in trl else None
        mfu = r["mfu"] * 100 if r.get("mfu") is not None else None
        lines.append(f"| {r['batch']} | {label} | {r.get('attn_implementation', '-')} | {r.get('layout', '-')} | "
                     f"{r['seconds_per_step']:.3f} | {r['tokens_per_second']:,.0f} | {_cell(ratio, '.2f')} | "
                     f"{r['peak_memory_mb'] / 1024:.2f} | {_cell(r.get('achieved_tflops'), '.1f')} | "
                     f"{_cell(mfu, '.2f')} | {r['positions_per_step']:,.0f} |")
    return "\n".join(lines) + "\n"


def lm_head_rows(work: Path, tiny: bool) -> list[dict]:
    """bench/lm_head_vs_liger.py in a fresh process (at most 3 minutes): its rows, or one row with the error."""
    out, log = work / "lm_head.json", work / "logs" / "lm_head.log"
    out.unlink(missing_ok=True)
    print(f"[gpu_throughput] LM-head log-probs vs Liger (log {log}) ...", flush=True)
    cmd = [sys.executable, str(REPO / "bench" / "lm_head_vs_liger.py"), "--json", str(out)] + (["--tiny"] if tiny else [])
    try:
        with open(log, "w") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=180)
    except subprocess.TimeoutExpired:
        pass
    if out.exists():
        return json.loads(out.read_text())
    return [{"kind": "all", "tokens": "-", "error": " | ".join(log.read_text().strip().splitlines()[-3:])}]


def write(stem: Path, results: list[dict], head: list[dict], info: dict, args, device: str) -> None:
    """``stem``.json and ``stem``.md with every run so far (rewritten after each run)."""
    summary = {k: v for k, v in info.items() if k != "row_tokens"}
    stem.with_suffix(".json").write_text(json.dumps({"device": device, "info": summary, "args": {
        k: str(v) for k, v in vars(args).items()}, "results": results, "lm_head": head}, indent=1))
    table = markdown(results, info, args, device)
    if head:
        table += ("\n## LM-head log-probs, forward + backward (bench/lm_head_vs_liger.py)\n\n"
                  + lm_head_vs_liger.markdown(head))
    stem.with_suffix(".md").write_text(table)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: the 7M model, batches 2 and 4, 1 + 1 steps")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 8,32,64; --tiny: 2,4)")
    p.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 4; --tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny: 1)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: datasheet table)")
    p.add_argument("--budget", type=float, default=540, help="start no run after this many seconds minus the "
                   "longest run so far")
    p.add_argument("--skip", default="", help="lm_head: leave out the LM-head comparison")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "gpu_throughput")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in (args.batches or ("2,4" if args.tiny else "8,32,64")).split(",")]
    args.steps = args.steps or (1 if args.tiny else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if args.precision == "auto":
        args.precision = "bf16" if torch.cuda.is_available() else "fp32"
    names = [n for n in args.only.split(",") if n]
    if "trl_best" in names and importlib.util.find_spec("trl") is None:
        print("[gpu_throughput] trl is not importable: no TRL rows", flush=True)
        names.remove("trl_best")
    work = args.work.resolve() / ("tiny" if args.tiny else "0.5b")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    rows = max(args.batches) * (args.warmup + args.steps)
    info = build_world(work, "tiny" if args.tiny else "0.5b", rows, args.seed)
    print(f"[gpu_throughput] {device}: model and {rows} pairs built in {time.perf_counter() - start:.0f} s",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("gpu_throughput_tiny" if args.tiny else "gpu_throughput")
    head = lm_head_rows(work, args.tiny) if "lm_head" not in args.skip else []
    results, longest = [], 0.0
    for batch in args.batches:
        common = ["--model", info["model"], "--data", info["data"], "--batch", str(batch), "--max-length",
                  str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed",
                  str(args.seed), "--precision", args.precision]
        for name in names:
            if time.perf_counter() - start + longest > args.budget:
                r = {"error": "not run: --budget reached"}
            else:
                label, worker, extra = VARIANTS[name]
                t0 = time.perf_counter()
                r = bench.run_worker([sys.executable, str(REPO / "bench" / worker), *common, *extra], work,
                                     f"{name}-b{batch}", f"{label}, batch {batch}", 0)
                longest = max(longest, time.perf_counter() - t0)
            r.update(batch=batch, variant=name)
            add_throughput(r, info, args)
            results.append(r)
            write(stem, results, head, info, args, device)
    print(stem.with_suffix(".md").read_text())
    print(f"[gpu_throughput] {time.perf_counter() - start:.0f} s; results in {stem}.json / .md")


if __name__ == "__main__":
    main()
