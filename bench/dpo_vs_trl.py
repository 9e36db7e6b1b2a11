"""alignkit DPO vs TRL's DPOTrainer: seconds/step, tokens/s and peak memory on the same model and data.

    python3 bench/dpo_vs_trl.py [--size tiny|120m|0.5b] [--steps 5] [--warmup 2] [--rounds 2] [--peak-tflops X]
                                [--threads N] [--profile]   (see --help)

On first run it creates ``bench/.venv-trl`` (TRL lives there only, never in alignkit's dependencies):
``torch==2.13.0`` first (a CPU wheel; override with TORCH_SPEC / TORCH_PIP_ARGS as in the Makefile), then
``-e .`` and ``bench/requirements-trl.txt``. It then builds, in a work folder (``bench/.work/dpo_vs_trl``),
a local Qwen2-style model with random weights (``--size tiny``: vocab 8192, 4 layers, hidden 256;
``--size 0.5b``: the Qwen2-0.5B shape, see SIZES) with a byte-level BPE tokenizer, and a synthetic preference set (prompts 100-150 tokens, completions 40-80 tokens incl. EOS).
It runs, each in a fresh process and one after the other: TRL with its defaults, TRL with its fastest
options, alignkit with its defaults, alignkit with a live reference model (``ref_cache=off``): same
model, data order, batch size, max length, lr, beta, precision (fp32 on CPU, bf16 autocast on CUDA), no eval, no checkpoint saving. Only the
steps after ``--warmup`` are timed; the variants run ``--rounds`` times, interleaved, and the fastest
round of each is reported. See bench/README.md.

tokens/s counts real tokens of each pair once: len(prompt) + len(chosen) + len(rejected) (EOS
included), the same count for every variant, whatever padding or packing a framework does.
Peak memory: peak RSS of the worker process on CPU; ``torch.cuda.max_memory_allocated`` on GPU.

MFU (model FLOPs utilisation) = model FLOPs per step / s/step / peak FLOP/s, with model FLOPs from the
same real tokens for every variant (see `model_flops`), never from what a framework pads, recomputes
(gradient checkpointing) or runs twice (an unshared prompt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv-trl"
REQS = BENCH / "requirements-trl.txt"
# model shapes (all Qwen2-style, random weights). 0.5b = Qwen2-0.5B's config.json: hidden 896, 24 layers,
# 14 heads / 2 KV heads (head dim 64), MLP 4864, tied embeddings, vocab 151,936. Its tokenizer is trained
# locally to `tok_vocab` only (the synthetic pseudo-word corpus has nowhere near 150k distinct merges); the
# model keeps the real 151,936-row embedding / LM head, so the logits and softmax cost what Qwen2-0.5B's do.
SIZES = {
    "tiny": dict(tok_vocab=8192, vocab=8192, hidden=256, layers=4, heads=8, kv_heads=4, mlp=688, tie=False),
    # ~126M parameters (75M in the 12 layers, 50M in the untied 32k embedding and head) for CPU
    # memory comparisons at a size where weights and optimizer state, not the framework, dominate
    "120m": dict(tok_vocab=32768, vocab=32768, hidden=768, layers=12, heads=12, kv_heads=4, mlp=2048, tie=False),
    "0.5b": dict(tok_vocab=32768, vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, mlp=4864, tie=True),
}
# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendor datasheets (NVIDIA H100 Tensor Core GPU
# datasheet: SXM 989 / PCIe 756 / NVL 835 ("1,979 / 1,513 / 1,671 teraFLOPS with sparsity", halved); H200
# datasheet: SXM 989 / NVL 835 (1,979 / 1,671 with sparsity); A100 datasheet: 312; L4 datasheet: 121 (242 with sparsity); A10
# datasheet: 125 (250 with sparsity)). Matched against torch.cuda.get_device_name(), first match wins;
# A10G (AWS's A10 variant) has no NVIDIA datasheet figure, so it is left out: pass --peak-tflops. Figures as
# recalled from those datasheets, not re-fetched when this table was written: check before publishing MFU.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
               ("A100", 312.0), ("L4", 121.0), ("A10G", None), ("A10", 125.0)]
VARIANTS = {  # name -> (label, worker script, extra args)
    "trl_default": ("TRL defaults", "_trl_worker.py", ["--variant", "default"]),
    "trl_best": ("TRL best options", "_trl_worker.py", ["--variant", "best"]),
    "alignkit": ("alignkit defaults", "_alignkit_worker.py", []),
    "alignkit_live_ref": ("alignkit ref_cache=off", "_alignkit_worker.py", ["--ref-cache", "off"]),
}


# ---------------------------------------------------------------------------------------------- environment
def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_env() -> Path:
    """Create bench/.venv-trl once (again when requirements-trl.txt or the torch spec change).

    ``BENCH_PYTHON=/path/to/python`` skips that and runs every worker with that interpreter as it is (it must
    already import torch, trl and alignkit): for a machine without a package index, e.g. a GPU box where the
    wheels were carried in by hand."""
    if os.environ.get("BENCH_PYTHON"):
        return Path(os.environ["BENCH_PYTHON"])
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    torch_args = os.environ.get("TORCH_PIP_ARGS", "").split()
    key = hashlib.sha256((REQS.read_text() + torch_spec + " ".join(torch_args)).encode()).hexdigest()
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text().strip() == key:
        return venv_python()
    print(f"[bench] setting up {VENV} (a few minutes, once) ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
    subprocess.run([*pip, *torch_args, torch_spec], check=True)
    subprocess.run([*pip, "-e", str(REPO), "-r", str(REQS)], check=True)
    marker.write_text(key + "\n")
    print(f"[bench] {VENV} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return venv_python()


def cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine so far (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(max_wait: float, threshold: float = 0.2) -> None:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` cores."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        b0 = cpu_busy_seconds()
        if b0 is None:
            return
        time.sleep(2)
        busy = (cpu_busy_seconds() - b0) / 2
        if busy < threshold:
            return
        print(f"[bench]   machine busy ({busy:.1f} cores in use by other processes); waiting ...", flush=True)
        time.sleep(8)


# ---------------------------------------------------------------------------------------------- model + data
def save_model(folder: Path, size: str, tok, seed: int, arch: str = "qwen2", max_positions: int = 2048):
    """A random-weight model of ``size`` (`SIZES`) for tokenizer ``tok``, saved with it to ``folder``:
    (model, folder)."""
    from alignkit.models.tiny import build_model

    cfg = SIZES[size]
    model = build_model(cfg["vocab"], arch, hidden_size=cfg["hidden"], num_layers=cfg["layers"],
                        num_heads=cfg["heads"], num_kv_heads=cfg["kv_heads"], intermediate_size=cfg["mlp"],
                        max_positions=max_positions, tie_embeddings=cfg["tie"], seed=seed,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def prepare(work: Path, rows: int, seed: int, size: str = "tiny") -> dict:
    """Tokenizer + model (save_pretrained) and a JSONL preference set; runs inside the bench venv."""
    import random

    from alignkit.models.tiny import build_tokenizer

    rng = random.Random(seed)
    cons = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl".split()
    vows = "a e i o u ai ea ou io".split()

    def word() -> str:
        syl = rng.choice([1, 2, 2, 3, 3, 4])
        return "".join(rng.choice(cons) + rng.choice(vows) for _ in range(syl)) + rng.choice(["", "", "n", "s", "t"])

    lexicon = list(dict.fromkeys(word() for _ in range(12000)))
    weights = [1 / (i + 1) ** 0.8 for i in range(len(lexicon))]  # Zipf-like

    def words(n: int) -> list[str]:
        return rng.choices(lexicon, weights, k=n)

    def sentence() -> str:
        s = " ".join(words(rng.randint(6, 24))).capitalize()
        if rng.random() < 0.3:
            s += f" {rng.randint(0, 9999)}"
        return s + rng.choice([".", "!", "?", ",", ";"])

    cfg = SIZES[size]
    tok = build_tokenizer([sentence() for _ in range(40000)], vocab_size=cfg["tok_vocab"], chat_template=False)
    model, model_dir = save_model(work / "model", size, tok, seed)

    def n_tok(text: str) -> int:
        return len(tok(text)["input_ids"])

    def grow(prefix: str, lo: int, hi: int, base: int, suffix: str = "") -> str:
        """Append words to ``prefix`` until prefix + text + suffix is lo..hi tokens (minus ``base``)."""
        while True:
            target, text = rng.randint(lo, hi), ""
            for w in words(400):
                text += " " + w
                n = n_tok(prefix + text + suffix) - base
                if n >= target:
                    break
            if lo <= n <= hi:
                return text + suffix

    out, stats = [], {"prompt": [], "chosen": [], "rejected": []}  # per row, in row order
    for i in range(rows):
        prompt = (f"Review {i}:" + grow(f"Review {i}:", 100, 150, 0, suffix="\nAnswer:"))
        p_ids = tok(prompt)["input_ids"]
        row = {"prompt": prompt}
        for col in ("chosen", "rejected"):
            comp = grow(prompt, 39, 79, len(p_ids), suffix=".")  # + EOS -> 40..80 completion tokens
            full = tok(prompt + comp)["input_ids"]
            assert full[: len(p_ids)] == p_ids, "the prompt/completion boundary must be a token boundary"
            row[col] = comp
            stats[col].append(len(full) - len(p_ids) + 1)
        stats["prompt"].append(len(p_ids))
        out.append(row)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    emb = model.get_input_embeddings().weight.numel()
    info = {"model": str(model_dir), "data": str(data), "rows": rows, "size": size, "tokenizer_vocab": len(tok),
            "model_vocab": model.config.vocab_size, "params": sum(p.numel() for p in model.parameters()),
            "params_non_embedding": sum(p.numel() for p in model.parameters()) - emb
            - (0 if cfg["tie"] else model.get_output_embeddings().weight.numel()),
            "lm_head_params": model.get_output_embeddings().weight.numel(), "hidden": cfg["hidden"],
            "layers": cfg["layers"], "tied_embeddings": cfg["tie"],
            "row_tokens": [list(t) for t in zip(stats["prompt"], stats["chosen"], stats["rejected"])],
            **{f"{k}_tokens": [min(v), max(v)] for k, v in stats.items()}}
    (work / "prepared.json").write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------------------------------------- MFU
def reference_forwards(r: dict) -> int:
    """No-grad reference forwards per step: 1 for a live reference model, 0 for cached/precomputed log-probs."""
    if r.get("framework") == "alignkit":
        return 0 if r.get("reference") == "cache" else 1
    return 0 if r.get("options", {}).get("precompute_ref_log_probs") else 1


def model_flops(info: dict, rows: list[int], ref_forwards: int) -> float:
    """Model FLOPs of one DPO step on ``rows`` (indices into the data), from the real tokens only.

    Per pair with p prompt, c chosen, r rejected tokens (EOS incl.), one forward is
        2 * N_body * (p + c + r)                   N_body: non-embedding parameters; the prompt counted once
      + 2 * N_head * (c + r)                       N_head: vocab x hidden, the LM head at the positions whose
                                                   log-probs DPO needs (completion tokens), tied or not
      + 4 * layers * hidden * ((p+c)^2 + (p+r)^2)  attention scores and weighted sum (QK^T, AV) of the two
                                                   sequences, full square (PaLM convention, no causal halving)
    and a training step costs 3x that (forward + backward) plus 1x per no-grad reference forward.
    Recomputation (gradient checkpointing), padding and a prompt run twice are not model FLOPs.
    """
    body, head, lh = info["params_non_embedding"], info["lm_head_params"], info["layers"] * info["hidden"]
    fwd = 0.0
    for i in rows:
        p, c, r = info["row_tokens"][i]
        fwd += 2 * body * (p + c + r) + 2 * head * (c + r) + 4 * lh * ((p + c) ** 2 + (p + r) ** 2)
    return (3 + ref_forwards) * fwd


def peak_tflops(r: dict, override: float | None) -> tuple[float | None, str]:
    """Peak dense bf16 FLOP/s (TFLOP/s) for the worker's device, and where it came from."""
    if override:
        return override, f"--peak-tflops {override:g}"
    name = r.get("device_name") or ""
    if not str(r.get("device", "")).startswith("cuda"):
        return None, "CPU: MFU only with --peak-tflops"
    for key, tf in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name):  # whole words: "L4" is not "L40S", "A10" not "A10G"
            return tf, (f"{name}: {tf:g} TFLOP/s dense bf16 (datasheet)" if tf else f"{name}: no datasheet "
                        "figure here, pass --peak-tflops")
    return None, f"{name}: unknown GPU, pass --peak-tflops"


def add_mfu(results: dict, info: dict, args) -> str:
    """Fill model_tflops_per_step / achieved_tflops / mfu into each result; returns the peak's source."""
    source = ""
    for r in results.values():
        if "error" in r or "step_rows" not in r:
            continue
        timed = r["step_rows"][args.warmup : args.warmup + args.steps]
        flops = sum(model_flops(info, rows, reference_forwards(r)) for rows in timed) / len(timed)
        r["model_tflops_per_step"] = flops / 1e12
        r["achieved_tflops"] = flops / r["seconds_per_step"] / 1e12
        peak, source = peak_tflops(r, args.peak_tflops)
        r["peak_tflops"] = peak
        r["mfu"] = r["achieved_tflops"] / peak if peak else None
    return source


# ---------------------------------------------------------------------------------------------- reporting
def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(results: dict, info: dict, args) -> None:
    ok = {k: r for k, r in results.items() if "error" not in r}
    first = next(iter(ok.values()), {})
    peak_source = add_mfu(results, info, args)
    dev = first.get("device", "?") + (f" {first['device_name']}" if first.get("device_name") else "")
    print(f"\n== DPO step time: {args.steps} timed steps after {args.warmup} warm-up, batch {args.batch} pairs, "
          f"max_length {args.max_length}, {first.get('precision', 'fp32')}, device {dev} "
          f"({first.get('torch_threads', '?')} torch threads) ==")
    versions = {r["trl_version"] for r in ok.values() if "trl_version" in r}
    print(f"trl {', '.join(versions) or '-'}, transformers {first.get('transformers_version', '?')}, "
          f"torch {first.get('torch_version', '?')}")
    print(f"model ({info.get('size', 'tiny')}): Qwen2-style, {info.get('layers', '?')} layers, hidden "
          f"{info.get('hidden', '?')}, vocab {info['model_vocab']} (tokenizer {info['tokenizer_vocab']}), "
          f"{info['params'] / 1e6:.1f}M params ({info.get('params_non_embedding', 0) / 1e6:.1f}M non-embedding, "
          f"{'tied' if info.get('tied_embeddings') else 'untied'} head); prompts {info['prompt_tokens']}, chosen {info['chosen_tokens']}, "
          f"rejected {info['rejected_tokens']} tokens")
    print("tokens = prompt + chosen + rejected tokens per pair (each real token once, EOS included)\n")
    head = (f"{'variant':<24}{'s/step':>8}{'min':>7}{'CPU s/step':>11}{'tokens/s':>10}{'peak MB':>9}{'+MB':>7}"
            f"{'setup s':>9}{'positions':>10}{'other':>7}{'TFLOP/st':>9}{'TFLOP/s':>9}{'MFU %':>7}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        label = VARIANTS[name][0]
        if "error" in r:
            print(f"{label:<24}FAILED: {r['error'][:200]}")
            continue
        print(f"{label:<24}{r['seconds_per_step']:>8.3f}{r['min_seconds_per_step']:>7.3f}"
              f"{r['cpu_seconds_per_step']:>11.3f}{r['tokens_per_second']:>10.0f}{r['peak_memory_mb']:>9.0f}"
              f"{fmt(above_baseline(r), '.0f'):>7}"
              f"{r['setup_seconds']:>9.1f}{r['positions_per_step']:>10.0f}{fmt(r.get('other_cores'), '.2f'):>7}"
              f"{fmt(r.get('model_tflops_per_step'), '.3f'):>9}{fmt(r.get('achieved_tflops'), '.3f'):>9}"
              f"{fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.2f'):>7}")
    print(f"s/step: mean wall time of the timed steps (min next to it; tokens/s uses the mean); CPU s/step:\n"
          f"process CPU time (all threads) per timed step; +MB: peak memory above the process's own\n"
          f"memory right after its imports (torch, transformers and the framework), what the run itself costs;\n"
          f"positions: model input positions per step, padding\n"
          f"included; other: cores used by other processes during the run (of {os.cpu_count()}; ideally ~0)\n"
          f"TFLOP/st: model FLOPs per step from the real tokens (6*N_body*tokens + 6*N_head*completion tokens +\n"
          f"12*layers*hidden*seq^2 per sequence, +1/3 of that per live reference forward; the same tokens for\n"
          f"every variant, no credit for padding or recomputation); TFLOP/s: that / mean s/step; MFU: TFLOP/s /\n"
          f"peak ({peak_source or '-'})")
    if args.rounds > 1:
        per = "; ".join(f"{VARIANTS[n][0]} " + ", ".join(fmt(x, ".3f") for x in r["rounds_seconds_per_step"])
                        for n, r in results.items())
        print(f"mean s/step of each round (the table shows the fastest): {per}")
    for ak in ("alignkit", "alignkit_live_ref"):
        for name in ("trl_default", "trl_best"):
            if ak in ok and name in ok:
                a, r = ok[ak], ok[name]
                speed = r["seconds_per_step"] / a["seconds_per_step"]
                print(f"{VARIANTS[ak][0]} vs {VARIANTS[name][0]:<17} speed-up x{speed:.2f}"
                      f" (min x{r['min_seconds_per_step'] / a['min_seconds_per_step']:.2f}, CPU time "
                      f"x{r['cpu_seconds_per_step'] / a['cpu_seconds_per_step']:.2f}), "
                      f"peak memory above post-import baseline alignkit/TRL {memory_ratio(a, r)}"
                      f" (whole peak {a['peak_memory_mb'] / r['peak_memory_mb']:.2f})")
    for name, r in ok.items():
        if r.get("overrides"):
            print(f"note [{VARIANTS[name][0]}]: TrainConfig overrides {r['overrides']}")
        for note in r.get("notes", []):
            print(f"note [{VARIANTS[name][0]}]: {note}")
    compare_first_step(ok)


def above_baseline(r: dict) -> float | None:
    """Peak memory minus the worker's memory right after its imports (None for results from before the
    baseline was recorded)."""
    base = r.get("baseline_memory_mb")
    return None if base is None else r["peak_memory_mb"] - base


def memory_ratio(a: dict, r: dict) -> str:
    above_a, above_r = above_baseline(a), above_baseline(r)
    return "-" if above_a is None or above_r is None or above_r <= 0 else f"{above_a / above_r:.2f}"


def compare_first_step(ok: dict) -> None:
    if len(ok) < 2:
        return
    print("\n== agreement (same initial model = reference, same first batch) ==")
    orders = {k: r["first_batch_rows"] for k, r in ok.items()}
    same = len({tuple(v) for v in orders.values()}) == 1
    verdict = "same in every run" if same else f"DIFFER: {orders}"
    print(f"first batch rows: {next(iter(orders.values()))} ({verdict})")
    names = list(ok)
    print(f"{'metric':<28}" + "".join(f"{VARIANTS[n][0]:>24}" for n in names))
    for key in ("loss", "logps/chosen", "logps/rejected"):
        vals = [ok[n]["history"][0].get(key) for n in names]
        print(f"{'step 1 ' + key:<28}" + "".join(f"{fmt(v, '.6f'):>24}" for v in vals))
    ref = ok.get("alignkit") or ok[names[0]]
    for n in names:
        r = ok[n]
        if r is ref:
            continue
        for col in ("chosen", "rejected"):
            a, b = r["first_batch_logps"][col], ref["first_batch_logps"][col]
            diff = max(abs(x - y) for x, y in zip(a, b))
            rel = diff / max(abs(y) for y in b)
            print(f"per-pair summed logps/{col:<8} max |{VARIANTS[n][0]} - alignkit| = {diff:.2e} (rel {rel:.1e})")
    print("\nloss by step (same data, lr schedule and optimizer; later steps agree only approximately):")
    steps = min(len(r["history"]) for r in ok.values())
    print(f"{'step':<6}" + "".join(f"{VARIANTS[n][0]:>24}" for n in names))
    for s in range(steps):
        print(f"{s + 1:<6}" + "".join(f"{fmt(ok[n]['history'][s].get('loss'), '.6f'):>24}" for n in names))


def run_worker(cmd: list[str], work: Path, tag: str, label: str, wait: float) -> dict:
    """One variant in a fresh process; its JSON result, plus the wall time and the other load on the machine."""
    out, log = work / f"{tag}.json", work / "logs" / f"{tag}.log"
    out.unlink(missing_ok=True)
    run_dir = work / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)  # no cached reference from an earlier run
    print(f"[bench] {label} (fresh process, log {log}) ...", flush=True)
    wait_quiet(wait)
    t0, busy0, own0 = time.perf_counter(), cpu_busy_seconds(), children_cpu_seconds()
    with open(log, "w") as fh:
        rc = subprocess.run([*cmd, "--out", str(out), "--output-dir", str(run_dir)], stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    # cores used by *other* processes while the worker ran (machine busy time minus the worker's own)
    other = None if busy0 is None else max(0.0, cpu_busy_seconds() - busy0 - (children_cpu_seconds() - own0)) / wall
    if out.exists():
        result = json.loads(out.read_text())
    else:
        tail = log.read_text().strip().splitlines()[-5:]
        result = {"error": f"worker exited {rc}: " + " | ".join(tail)}
    result.update(process_seconds=wall, other_cores=other)
    print(f"[bench]   {wall:.0f} s" + (f", {result['seconds_per_step']:.3f} s/step" if "error" not in result else
                                        f", FAILED: {result['error'][:120]}"), flush=True)
    return result


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--size", choices=list(SIZES), default="tiny",
                   help="model shape: tiny (7M, CPU), 120m (126M, 32k vocabulary: CPU memory at a size where "
                   "weights dominate) or 0.5b (Qwen2-0.5B's shape, 494M, for a GPU)")
    p.add_argument("--peak-tflops", dest="peak_tflops", type=float, default=None, metavar="X",
                   help="peak FLOP/s (TFLOP/s) for the MFU column; default: a datasheet table by GPU name "
                        "(bf16 dense), none on CPU")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA (fp32 weights, TRL bf16=True / alignkit mixed_precision=bf16), "
                        "fp32 on CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=2,
                   help="run the variants this many times, interleaved; the table shows each one's fastest round")
    p.add_argument("--rows", type=int, default=64, help="preference pairs in the synthetic set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="work folder (default bench/.work/dpo_vs_trl, "
                   "bench/.work/dpo_vs_trl_SIZE for another --size)")
    p.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true", help="profile one extra alignkit step (torch.profiler)")
    p.add_argument("--alignkit", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig key in the alignkit runs (experiments), e.g. max_row_tokens=256")
    p.add_argument("--trl-compile", dest="trl_compile", action="store_true",
                   help="add torch_compile=True to TRL's best options (off by default: measured ~7%% faster "
                        "per step with 1 CPU thread, plus compile time in the warm-up steps)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per worker (0: torch's default, one per core); on a shared machine 1 is "
                        "less disturbed by other load")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each worker, wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--prepare-only", dest="prepare_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.work is None:
        args.work = BENCH / ".work" / ("dpo_vs_trl" if args.size == "tiny" else f"dpo_vs_trl_{args.size}")
    work = args.work.resolve()

    if args.prepare_only:  # internal: runs inside the bench venv
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(prepare(work, args.rows, args.seed, args.size)))
        return

    t_all = time.perf_counter()
    python = setup_env()
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    stamp, made = work / "prepared.key", f"{args.size} rows={args.rows} seed={args.seed}"
    if stamp.exists() and stamp.read_text() == made and (work / "prepared.json").exists():
        print(f"[bench] reusing the model and data in {work} ({made})", flush=True)
    else:
        print(f"[bench] building model and data in {work}", flush=True)
        stamp.unlink(missing_ok=True)  # a failed rebuild must not leave the old stamp over half-new files
        subprocess.run([str(python), __file__, "--prepare-only", "--work", str(work), "--rows", str(args.rows),
                        "--seed", str(args.seed), "--size", args.size], check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(made)
    info = json.loads((work / "prepared.json").read_text())
    common = ["--model", info["model"], "--data", info["data"], "--batch", str(args.batch), "--max-length",
              str(args.max_length), "--lr", str(args.lr), "--beta", str(args.beta), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--seed", str(args.seed), "--threads", str(args.threads),
              "--precision", args.precision]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(1, args.rounds + 1):  # rounds interleave the variants: A B C D A B C D
        for name in names:
            cmd = [str(python), str(BENCH / VARIANTS[name][1]), *common, *VARIANTS[name][2]]
            if name.startswith("alignkit"):
                cmd += [f"--set={kv}" for kv in args.alignkit]
            if name == "trl_best" and args.trl_compile:
                cmd.append("--compile")
            if name == "alignkit" and args.profile and rnd == args.rounds:
                cmd.append("--profile")
            runs[name].append(run_worker(cmd, work, f"{name}-r{rnd}", VARIANTS[name][0], args.wait_quiet))
    results = {}
    for name, rs in runs.items():  # the round with the lowest mean s/step (other load only adds time)
        good = [r for r in rs if "error" not in r]
        results[name] = min(good, key=lambda r: r["seconds_per_step"]) if good else rs[-1]
        results[name]["rounds_seconds_per_step"] = [r.get("seconds_per_step") for r in rs]
    print_report(results, info, args)
    profile = next((r["profile"] for r in runs.get("alignkit", []) if r.get("profile")), None)
    if profile:
        print("\n== one alignkit step under torch.profiler ==\n" + profile)
    (work / "results.json").write_text(json.dumps({"info": info, "args": {k: str(v) for k, v in vars(args).items()},
                                                   "results": results, "rounds": runs}, indent=1))
    print(f"\nresults: {work / 'results.json'}; whole bench {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
