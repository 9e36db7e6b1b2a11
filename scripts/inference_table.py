"""The inference-time reward–KL frontier on the demo world, next to the DPO frontier of `alignkit demo`.

    .venv/bin/python scripts/inference_table.py [--demo demo_out] [--prompts 128] [--out docs] [--only-interpolate]
        [--only METHOD ...] [--only rsd] [--redraw]

Uses the demo's pretrained review model (``demo_out/world/pretrain/final``; `alignkit demo` is run first
if it is missing) and its held-out prompts (`reviews.prompts(n, seed=2)`, the demo's evaluation prompts).
For N in 1, 2, 4, 8, 16 it runs ``bon`` (n=N), ``soft_bon`` (n=N, τ=0.2), ``calibrated_bon`` (n=N,
t=4), ``args`` (top-k=N candidates sampled ∝ exp(score), w=2) and ``cd`` (B=N continuations per
8-token block, reward value; and ``value=rollout``, Transfer Q*: the value of a block is the gold reward
of the base model's greedy rollout from it), all guided by the gold reward (`alignkit.worlds.reviews.reward`), and
reports each method's mean gold reward with its mean KL estimate to the base model (`InferenceOutput.kl`,
nats per response: see docs/inference.md for each estimator) and its cost in model calls and tokens.
The DPO rows are the demo's own (β sweep; KL k1 of samples under the trained policy vs the reference).
``interpolate`` (model interpolation, DeRa) needs no reward: it mixes the base model with the demo's DPO
β = 0.1 policy (``demo_out/dpo_beta0.1/final``) at weights w in `WEIGHTS`, one sample per prompt.
``rsd`` (reward-guided speculative decoding) drafts with the weak pretrained model and falls back on that DPO
policy (the target) where a drafted step's gold reward is below δ, for δ in `THRESHOLDS` (steps of `RSD_STEP`
tokens); ``--only rsd`` reruns just those rows.
Writes ``docs/inference_results.md`` and ``docs/inference_frontier.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from alignkit.inference import InferenceSettings, run_method
from alignkit.models.load import load_model, load_tokenizer
from alignkit.worlds import reviews

NS = (1, 2, 4, 8, 16)
METHODS = {  # table label -> (method, options for a given N)
    "bon": ("bon", lambda n: {"n": n}),
    "soft_bon": ("soft_bon", lambda n: {"n": n, "tau": 0.2}),
    "calibrated_bon": ("calibrated_bon", lambda n: {"n": n, "t": 4.0}),
    "args": ("args", lambda n: {"topk": n, "w": 2.0, "greedy": False}),
    "cd": ("cd", lambda n: {"b": n, "block": 8, "value": "reward"}),
    "cd value=rollout (Transfer Q*)": ("cd", lambda n: {"b": n, "block": 8, "value": "rollout"}),
}


WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)  # interpolate: weight of the tuned (DPO β = 0.1) model
TUNED = "dpo_beta0.1/final"
THRESHOLDS = (-math.inf, 0.0, 0.5, 1.0, math.inf)  # rsd: δ; -inf is the draft alone, +inf the target alone
RSD_STEP = 4  # rsd: tokens per step


def gold(prompts, completions, rows):
    return [reviews.reward(c) for c in completions]


def summary(outs, t0: float, **key) -> dict:
    """One table row: mean gold reward, mean KL estimate, mean cost per prompt, seconds since ``t0``."""
    gold_r = [reviews.reward(o.text) for o in outs]
    kls = [o.kl for o in outs if o.kl is not None]
    row = {**key, "reward": sum(gold_r) / len(gold_r), "kl": sum(kls) / len(kls) if kls else float("nan"),
           "calls": sum(o.calls for o in outs) / len(outs), "tokens": sum(o.tokens for o in outs) / len(outs),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


def run_all(model_path: str, prompts: list[str], max_new_tokens: int, seed: int, only: list[str] | None = None
            ) -> list[dict]:
    tok, model = load_tokenizer(model_path), load_model(model_path)
    rows = []
    for label, (name, options) in METHODS.items():
        if only and label not in only:
            continue
        for n in NS:
            t0 = time.perf_counter()
            outs = run_method(name, model, tok, prompts, settings=InferenceSettings(max_new_tokens=max_new_tokens,
                              seed=seed, batch_size=16), options=options(n), reward_fn=gold)
            rows.append(summary(outs, t0, method=label, n=n))
    return rows


def run_interpolate(model_path: str, tuned_path: str, prompts: list[str], max_new_tokens: int,
                    seed: int) -> list[dict]:
    """``interpolate`` between the base model and the tuned one at every weight in `WEIGHTS`."""
    tok, model, tuned = load_tokenizer(model_path), load_model(model_path), load_model(tuned_path)
    rows = []
    for w in WEIGHTS:
        t0 = time.perf_counter()
        outs = run_method("interpolate", model, tok, prompts, settings=InferenceSettings(
            max_new_tokens=max_new_tokens, seed=seed, batch_size=16), options={"w": w}, helper=tuned)
        rows.append(summary(outs, t0, method="interpolate", w=w))
    return rows


def run_rsd(draft_path: str, target_path: str, prompts: list[str], max_new_tokens: int, seed: int) -> list[dict]:
    """``rsd`` with the base model drafting and the tuned one as target, guided by the gold reward, per δ."""
    tok, draft, target = load_tokenizer(draft_path), load_model(draft_path), load_model(target_path)
    rows = []
    for threshold in THRESHOLDS:
        t0 = time.perf_counter()
        outs = run_method("rsd", target, tok, prompts, settings=InferenceSettings(
            max_new_tokens=max_new_tokens, seed=seed), options={"threshold": threshold, "step": RSD_STEP},
            reward_fn=gold, helper=draft)
        n = len(outs)
        rows.append({**summary(outs, t0, method="rsd", threshold=threshold),
                     "acceptance": sum(o.extra["acceptance"] for o in outs) / n,
                     "target_calls": sum(o.extra["target_calls"] for o in outs) / n})
    return rows


def rsd_markdown(rsd: list[dict]) -> list[str]:
    """The rsd section: one row per threshold δ (none before the first ``--only rsd`` run)."""
    if not rsd:
        return []
    lines = ["", "Reward-guided speculative decoding (`rsd`, alias `rps`; Liao et al. 2025): the pretrained model "
             f"drafts each {RSD_STEP}-token step (`--helper`), the gold reward scores the partial text, and a step "
             "scoring below δ is rewritten by the target, the demo's DPO β = 0.1 policy (`--model`). δ = −inf is "
             "the draft alone, +inf the target alone. acceptance: the share of drafted steps kept; target calls: "
             "the target's forward passes per prompt (prefill, its own tokens, one pass per kept step; δ = −inf never "
             "runs it, +inf never runs the draft). No KL column: the method has no KL estimate "
             "(docs/inference.md), so these rows are not in the plot. Seconds are wall time on a 2-core CPU "
             "shared with other jobs while these rows ran: pessimistic and noisy; the calls and tokens columns "
             "are the cost to compare.", "",
             "| δ | gold reward | acceptance | target calls / prompt | model calls / prompt | tokens / prompt | "
             "seconds |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rsd:
        d = r["threshold"]
        shown = "−inf" if d == -math.inf else "+inf" if d == math.inf else f"{d:g}"
        lines.append(f"| {shown} | {r['reward']:.3f} | {r['acceptance']:.2f} | {r['target_calls']:.1f} | "
                     f"{r['calls']:.1f} | {r['tokens']:.0f} | {r['seconds']:.1f} |")
    finite = [r for r in rsd if math.isfinite(r["threshold"])]
    alone = [r for r in rsd if r["threshold"] == math.inf]
    if finite and alone:
        best = max(finite, key=lambda r: r["reward"])
        lines += ["", f"At δ = {best['threshold']:g} rsd reaches gold reward {best['reward']:.3f} with "
                  f"{best['target_calls']:.1f} target passes per prompt, against {alone[0]['reward']:.3f} and "
                  f"{alone[0]['target_calls']:.1f} for the target alone: the guiding reward (here the gold one, the "
                  "best case) keeps the draft's good steps, each costing the target one parallel pass, and hands "
                  "the rest to the target, so the mixture can beat the target itself, as the paper reports."]
    return lines


def dpo_rows(demo: Path) -> list[dict]:
    results = json.loads((demo / "results.json").read_text())
    ref = results["reference_row"]
    out = [{"method": "reference", "beta": None, "reward": ref["reward"], "kl": 0.0}]
    out += [{"method": "dpo", "beta": r["beta"], "reward": r["reward"], "kl": r["k1"]} for r in results["rows"]]
    return out


def markdown(rows: list[dict], dpo: list[dict], interp: list[dict], n_prompts: int, seconds: float,
             interp_seconds: float, rsd: list[dict]) -> str:
    lines = ["# Inference-time alignment on the demo world: the reward–KL frontier", "",
             "Generated by `scripts/inference_table.py` (do not edit by hand). Base model: the demo's pretrained "
             f"review model; {n_prompts} held-out prompts, one output per prompt and method, guided by the gold "
             "reward. KL: each method's own estimate of KL(output ‖ base), nats per response (docs/inference.md). "
             f"Total {seconds:.0f} s on this machine's CPU.", "",
             "| method | N | gold reward | KL (nats) | model calls / prompt | tokens / prompt | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['n']} | {r['reward']:.3f} | {r['kl']:.2f} | {r['calls']:.0f} | "
                     f"{r['tokens']:.0f} | {r['seconds']:.1f} |")
    lines += ["", "For comparison, the demo's DPO policies (trained weights; KL k1 of their samples to the reference):",
              "", "| policy | β | gold reward | KL k1 (nats) |", "|---|---:|---:|---:|"]
    for r in dpo:
        lines.append(f"| {r['method']} | {'' if r['beta'] is None else r['beta']} | {r['reward']:.3f} | {r['kl']:.2f} |")
    lines += ["", "Model interpolation (`interpolate`, DeRa): the base model mixed with the demo's DPO β = 0.1 policy "
              "(`--helper`), q ∝ π_base^(1−w)·π_dpo^w, one sample per prompt, no reward used; KL is the method's "
              f"Σ_t KL(q_t ‖ π_t) estimate. These rows took {interp_seconds:.0f} s (wall time on the machine that "
              "ran them, which may differ from the table above's; w > 1 is left out of the plot):", "",
              "| w | gold reward | KL (nats) | model calls / prompt | tokens / prompt | seconds |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in interp:
        lines.append(f"| {r['w']:g} | {r['reward']:.3f} | {round(r['kl'], 2) + 0.0:.2f} | {r['calls']:.0f} | {r['tokens']:.0f} | "
                     f"{r['seconds']:.1f} |")
    lines += rsd_markdown(rsd)
    lines += ["", "bon's bound log N − (N−1)/N: " + ", ".join(f"N={n}: {math.log(n) - (n - 1) / n:.2f}" for n in NS),
              "", "![frontier](inference_frontier.png)", "",
              "Reading it: the methods are guided by the gold reward itself, the best case for inference-time "
              "alignment (with a learned reward model, over-optimisation shows up as N grows). The KL columns "
              "are estimates of different kinds: bon's is exact for its observed reward ties, soft_bon's and "
              "calibrated_bon's are upper bounds (log N − H(w)), cd's (both values) sums a per-block best-of-B bound, args' "
              "sums the per-step KL along the chosen path (near-greedy decoding of a peaked model costs many "
              "nats), and DPO's is the Monte-Carlo k1 of its samples. calibrated_bon uses a finite tilt (t=4), "
              "a softer selection than bon (t=inf is exactly bon). interpolate uses no reward: w from 0 to 1 moves "
              "from the base model to the DPO policy (at w = 1 the samples are the DPO policy's own, and the KL "
              "is its per-step KL to the base along them); w > 1 extrapolates past it. cd value=rollout is Transfer Q* "
              "as published: a block's value is the reward of the base model's greedy rollout to the end, so it "
              "judges where a prefix leads rather than the prefix text; the rollouts are its extra calls and "
              "tokens.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], dpo: list[dict], interp: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in METHODS:
        pts = [(r["kl"], r["reward"]) for r in rows if r["method"] == name and not math.isnan(r["kl"])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    pts = [(r["kl"], r["reward"]) for r in interp if not math.isnan(r["kl"]) and r["w"] <= 1]
    if pts:
        ax.plot(*zip(*pts), marker="^", linestyle=":", label="interpolate (w sweep)")
    pts = sorted((r["kl"], r["reward"]) for r in dpo)
    ax.plot(*zip(*pts), marker="s", linestyle="--", color="black", label="DPO (β sweep)")
    ax.set_xlabel("KL to the base model (nats)")
    ax.set_ylabel("gold reward")
    ax.set_title("Reward–KL frontier: inference-time methods vs DPO")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="demo_out")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs")
    p.add_argument("--only-interpolate", action="store_true",
                   help="rerun only the interpolate rows; keep the other rows (and total time) from OUT/inference_results.json")
    p.add_argument("--only", action="append", choices=[*METHODS, "rsd"], default=None,
                   help="rerun only this method's rows (repeatable; rsd: the speculative-decoding rows); keep the "
                        "others from OUT/inference_results.json")
    p.add_argument("--redraw", action="store_true",
                   help="run nothing: rewrite the markdown and the plot from OUT/inference_results.json")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    if args.redraw:
        kept = json.loads((out / "inference_results.json").read_text())
        write(out, kept["rows"], kept["dpo"], kept["interpolate"], args.prompts, kept["seconds"],
              kept["interpolate_seconds"], kept.get("rsd", []))
        return
    demo = Path(args.demo)
    if not (demo / "results.json").exists():
        from alignkit.demo import run_demo

        run_demo(demo)
    t0 = time.perf_counter()
    if args.only_interpolate:
        kept = json.loads((out / "inference_results.json").read_text())
        rows, seconds = kept["rows"], kept.get("seconds", 64.0)  # 64 s: the first run's total
    elif args.only:
        kept = json.loads((out / "inference_results.json").read_text())
        labels = [m for m in args.only if m in METHODS]
        new = run_all(str(demo / "world" / "pretrain" / "final"), reviews.prompts(args.prompts, seed=2),
                      args.max_new_tokens, args.seed, labels) if labels else []
        rows = [r for r in kept["rows"] if r["method"] not in labels] + new
        replaced = sum(r["seconds"] for r in kept["rows"] if r["method"] in args.only)
        seconds = kept.get("seconds", 64.0) - replaced + sum(r["seconds"] for r in new)  # the methods' own time
    else:
        rows = run_all(str(demo / "world" / "pretrain" / "final"), reviews.prompts(args.prompts, seed=2),
                       args.max_new_tokens, args.seed)
        seconds = time.perf_counter() - t0
    if args.only and "rsd" not in args.only:
        rsd = kept.get("rsd", [])
    else:
        rsd = run_rsd(str(demo / "world" / "pretrain" / "final"), str(demo / TUNED),
                      reviews.prompts(args.prompts, seed=2), args.max_new_tokens, args.seed)
    t1 = time.perf_counter()
    if args.only:
        interp, interp_seconds = kept["interpolate"], kept["interpolate_seconds"]
    else:
        interp = run_interpolate(str(demo / "world" / "pretrain" / "final"), str(demo / TUNED),
                                 reviews.prompts(args.prompts, seed=2), args.max_new_tokens, args.seed)
        interp_seconds = time.perf_counter() - t1
    write(out, rows, dpo_rows(demo), interp, args.prompts, seconds, interp_seconds, rsd)
    print((out / "inference_results.md").read_text())


def write(out: Path, rows: list[dict], dpo: list[dict], interp: list[dict], n_prompts: int, seconds: float,
          interp_seconds: float, rsd: list[dict]) -> None:
    """``inference_results.md``, ``inference_frontier.png`` and ``inference_results.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference_results.md").write_text(markdown(rows, dpo, interp, n_prompts, seconds, interp_seconds, rsd))
    plot(rows, dpo, interp, out / "inference_frontier.png")
    (out / "inference_results.json").write_text(json.dumps({
        "rows": rows, "dpo": dpo, "interpolate": interp, "seconds": round(seconds, 1),
        "interpolate_seconds": round(interp_seconds, 1), "rsd": rsd}, indent=1))


if __name__ == "__main__":
    main()
