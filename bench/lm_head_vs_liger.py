"""LM-head log-probs, forward + backward: alignkit's chunked path vs Liger's fused linear cross-entropy.

    PYTHONPATH=src python3 bench/lm_head_vs_liger.py            # GPU: Qwen2-0.5B's head (896 x 151,936), bf16
    PYTHONPATH=src python3 bench/lm_head_vs_liger.py --tiny     # CPU: 256 x 8,192, fp32 (no Liger: Triton)

DPO needs log p(token) at the completion positions only: ``N`` hidden states ``[N, H]`` through a ``[V, H]`` head.
Three ways, each timed over forward + backward of ``sum(w * logp)`` with random per-token weights ``w`` (as a
DPO loss weighs each sequence's tokens differently):

* ``naive``: ``log_softmax(h @ W^T)`` gathered at the targets: ``[N, V]`` logits kept for backward;
* ``alignkit``: `alignkit.executor.logprobs.chunked_token_logps` (``chunk_size=0``: the automatic chunk; each
  chunk's logits recomputed in backward, so one ``[chunk, V]`` block lives at a time);
* ``liger``: ``LigerFusedLinearCrossEntropyLoss(reduction="none")`` (log-prob = −loss), when ``liger_kernel``
  imports (CUDA and Triton): it computes the head's gradients during the forward pass.

Each is checked against the same computation in fp32 (max |Δ log-prob|, and the gradient error relative to
the largest gradient entry): the per-token weights make it catch a fused kernel that scales its gradient by one
token's upstream gradient (Liger's ``reduction="none"`` backward did that before its fix of July 2026, PR 1298).
Reported: ms per forward + backward, peak memory above the inputs (GPU), the errors.
"""

from __future__ import annotations

import argparse
import json
import time


def _logps(kind: str, h, weight, targets, head):
    import torch

    from alignkit.executor.logprobs import chunked_token_logps

    if kind == "naive":
        return (h @ weight.t()).float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    if kind == "alignkit":
        return chunked_token_logps(h, head, targets)
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    out = LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, h, targets)
    loss = out if torch.is_tensor(out) else getattr(out, "loss", None) if not isinstance(out, tuple) else out[0]
    return -loss.float().view(-1)


def _step(kind: str, h, weight, targets, w, head):
    """log-probs and the gradients of sum(w * logp) with respect to h and the head's weight."""
    import torch

    logp = _logps(kind, h, weight, targets, head)
    grads = torch.autograd.grad((logp * w).sum(), (h, weight))
    return logp.detach(), grads


def measure(kinds: list[str], n: int, hidden: int, vocab: int, dtype, device, repeats: int, seed: int = 0) -> list[dict]:
    """One row per kind: ms per forward + backward (mean of ``repeats`` after one warm-up), peak memory above
    the inputs, and the errors against the fp32 computation."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False).to(device=device, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * hidden**-0.5)
    h = (torch.randn(n, hidden, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g).to(device)
    w = torch.randn(n, generator=g).to(device)
    ref_head = torch.nn.Linear(hidden, vocab, bias=False).to(device)
    with torch.no_grad():
        ref_head.weight.copy_(head.weight.float())
    ref_h = h.detach().float().requires_grad_()
    ref_logp, ref_grads = _step("naive", ref_h, ref_head.weight, targets, w, ref_head)
    del ref_head
    rows = []
    cuda = device.type == "cuda"
    for kind in kinds:
        try:
            logp, grads = _step(kind, h, head.weight, targets, w, head)  # warm-up (compiles, autotunes)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            for _ in range(repeats):
                logp, grads = _step(kind, h, head.weight, targets, w, head)
            if cuda:
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / repeats * 1e3
            scale = [float(r.abs().max()) for r in ref_grads]
            rows.append({
                "kind": kind, "tokens": n, "hidden": hidden, "vocab": vocab, "dtype": str(dtype).split(".")[-1],
                "ms": ms, "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None,
                "logp_error": float((logp.float() - ref_logp).abs().max()),
                "grad_h_error": float((grads[0].float() - ref_grads[0]).abs().max()) / scale[0],
                "grad_w_error": float((grads[1].float() - ref_grads[1]).abs().max()) / scale[1],
            })
        except Exception as e:  # e.g. liger_kernel missing or failing: recorded, the others still run
            rows.append({"kind": kind, "tokens": n, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| tokens | head | dtype | path | ms fwd+bwd | peak MB | max abs Δ log-prob | grad h (rel.) | grad W (rel.) |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | | | {r['kind']} | failed: {r['error']} | | | | |")
            continue
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
        lines.append(f"| {r['tokens']} | {r['hidden']} x {r['vocab']:,} | {r['dtype']} | {r['kind']} | {r['ms']:.2f} | "
                     f"{peak} | {r['logp_error']:.1e} | {r['grad_h_error']:.1e} | {r['grad_w_error']:.1e} |")
    return "\n".join(lines) + "\n"


def run(tiny: bool, tokens: list[int] | None = None, repeats: int = 5) -> list[dict]:
    """The comparison at the 0.5B head in bf16 on CUDA (``tiny``: a 256 x 8,192 head in fp32, where it runs)."""
    import importlib.util

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hidden, vocab, dtype = (256, 8192, torch.float32) if tiny else (896, 151936, torch.bfloat16)
    kinds = ["naive", "alignkit"] + (["liger"] if importlib.util.find_spec("liger_kernel") and device.type == "cuda"
                                     else [])
    rows = []
    for n in tokens or ([256] if tiny else [1024, 8192]):
        rows += measure(kinds, n, hidden, vocab, dtype, device, repeats)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a 256 x 8,192 head in fp32 (CPU)")
    p.add_argument("--tokens", default=None, help="comma-separated token counts (default 1024,8192; --tiny: 256)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    rows = run(args.tiny, [int(t) for t in args.tokens.split(",")] if args.tokens else None, args.repeats)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
