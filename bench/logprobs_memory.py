"""Executor vs naive forward: peak memory and time of one forward+backward of sequence log-probs.

Each variant runs in a fresh process (peak RSS is per process). The model is a local Qwen2-style
model (4 layers, hidden 256) with random weights; the batch is B prompts of 100-150 tokens with K
responses of 40-80 tokens each (or ``--completion N`` tokens).

    python bench/logprobs_memory.py [--batch 8] [--k 2] [--vocab 8192]
    python bench/logprobs_memory.py --sweep     # vocab 8k -> 128k, then completion length 64 -> 1024

"naive" is ``model(ids).logits.log_softmax(-1)`` gathered over padded rows (one per response);
"alignkit" is the executor (shared-prompt rows, head on completion positions only, in chunks).
Memory is the peak RSS above the process's RSS after building the model and inputs. Prints tables
and alignkit/naive ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time


def make_inputs(args):
    import torch

    rng = random.Random(0)
    from alignkit.data.tokenize import TokenizedRecord

    items = []
    for b in range(args.batch):
        prompt = [rng.randrange(10, args.vocab) for _ in range(rng.randint(100, 150))]
        n = (lambda: args.completion) if args.completion else (lambda: rng.randint(40, 80))
        segs = [[rng.randrange(10, args.vocab) for _ in range(n())] for _ in range(args.k)]
        items.append(TokenizedRecord(prompt, segs, [0] * args.k, b))
    torch.manual_seed(0)
    return items


def build_model(args):
    from alignkit.models.tiny import build_model as build

    return build(args.vocab, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, max_positions=4096,
                 intermediate_size=688, tie_embeddings=False)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(args) -> dict:
    import torch

    from alignkit.data.collate import choose_layout, collate_padded, collate_shared_prompt
    from alignkit.executor.logprobs import LogProbModel, attention_cost_weight, sum_per_slot

    torch.set_num_threads(2)
    model = build_model(args)
    items = make_inputs(args)
    base = rss_mb()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        if args.variant == "naive":
            batch = collate_padded(items, pad_id=0)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            lp = logits.log_softmax(-1).view(-1, logits.shape[-1])[batch.pred_index].gather(
                -1, batch.targets[:, None]).squeeze(-1)
            total = sum_per_slot(lp, batch).sum()
        else:
            # alignkit's default packing=auto: shared-prompt rows unless padded rows are cheaper
            layout = choose_layout(items, args.max_row_tokens, attention_cost_weight(model))
            batch = (collate_shared_prompt(items, pad_id=0, max_row_tokens=args.max_row_tokens)
                     if layout == "shared_prompt" else collate_padded(items, pad_id=0))
            total = sum_per_slot(LogProbModel(model)(batch), batch).sum()
        total.backward()
        model.zero_grad(set_to_none=True)
    dt = (time.perf_counter() - t0) / args.repeats
    grads_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"variant": args.variant, "layout": batch.layout, "seconds": dt, "param_grads_mb": grads_mb, "peak_rss_mb": rss_mb(), "baseline_rss_mb": base,
            "tokens": batch.num_tokens, "value": float(total.detach())}


def run_pair(args, **over) -> dict:
    rows = {}
    for variant in ("naive", "alignkit"):
        opts = {**vars(args), **over, "variant": variant}
        cmd = [sys.executable, __file__] + [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()
                                            if k != "sweep" and v is not None]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows[variant] = json.loads(out)
    return rows


def delta(r: dict) -> float:
    return r["peak_rss_mb"] - r["baseline_rss_mb"]


def print_one(args, rows) -> None:
    print(f"B={args.batch} K={args.k} vocab={args.vocab}, prompts 100-150, completions 40-80 tokens, CPU")
    print(f"{'variant':10s} {'s/step':>8s} {'input tokens':>13s} {'peak RSS MB':>12s} {'delta MB':>9s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['seconds']:8.3f} {r['tokens']:13d} {r['peak_rss_mb']:12.0f} {delta(r):9.0f}")
    n, a = rows["naive"], rows["alignkit"]
    print(f"ratio alignkit/naive: time {a['seconds'] / n['seconds']:.2f}, "
          f"peak RSS {a['peak_rss_mb'] / n['peak_rss_mb']:.2f}, memory above baseline {delta(a) / delta(n):.2f}")
    print(f"summed log-prob: naive {n['value']:.4f} alignkit {a['value']:.4f} "
          f"(|diff| {abs(n['value'] - a['value']):.2e})")


def sweep(args) -> None:
    print(f"B={args.batch} K={args.k}, prompts 100-150 tokens, one forward+backward, CPU; "
          "memory = peak RSS above the post-setup baseline (MB)")
    print("grads = parameter gradients (the same for both; they grow with the vocabulary whatever the method)")
    print(f"{'vocab':>7s} {'completion':>10s} {'grads MB':>9s} {'naive MB':>9s} {'alignkit MB':>12s} {'ratio':>6s} "
          f"{'act. ratio':>10s} {'naive s':>8s} {'alignkit s':>10s}  alignkit layout")
    grid = [(v, None) for v in (8192, 32768, 131072)] + [(32768, c) for c in (64, 256, 1024)]
    for vocab, comp in grid:
        rows = run_pair(args, vocab=vocab, completion=comp, repeats=1)
        n, a = rows["naive"], rows["alignkit"]
        g = n["param_grads_mb"]
        print(f"{vocab:7d} {comp or '40-80':>10} {g:9.0f} {delta(n):9.0f} {delta(a):12.0f} {delta(a) / delta(n):6.2f} "
              f"{(delta(a) - g) / (delta(n) - g):10.2f} {n['seconds']:8.2f} {a['seconds']:10.2f}  {a['layout']}",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--completion", type=int, default=None, help="fixed completion length (default 40-80)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", default=None)
    p.add_argument("--max-row-tokens", type=int, default=256)
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
    elif args.sweep:
        sweep(args)
    else:
        print_one(args, run_pair(args))


if __name__ == "__main__":
    main()
