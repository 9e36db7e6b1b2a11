"""Reward and KL after the same training budget for several objectives on the demo world.

    .venv/bin/python scripts/objective_table.py [--out demo_out/objectives] [--steps 64] [--quick] [--only LABEL ...]

Builds (or reuses) the demo's review world and reference model, samples K = 4 reviews per training prompt
from the reference and labels them with the known reward (``scored.jsonl``), then trains, from the same
reference, with the same batch size, learning rate and number of steps:

* ``dpo``, ``ipo``, ``simpo`` on best-vs-worst pairs (transform ``pairs``),
* LN-DPO (``dpo`` with ``length_normalize``) and ``soft_dpo`` on the same pairs, soft_dpo's target
  ``p = σ(score gap / 0.5)`` from the gap the ``pairs`` transform writes (``target: scores``),
* ``kto`` on the same pairs split into desirable / undesirable labels (``pairs`` then ``to_unpaired``),
* ``plackett_luce`` on the full K = 4 scored lists,
* ``dpo`` and ``lcpo`` on the best-vs-worst pairs with a known share of labels flipped (``--flip-rate``,
  default 0.3, seeded; ``noisy_pairs.jsonl``): lcpo's estimate of that rate is reported next to its row,
* ``distill`` (forward KL over the top 32 tokens) from the ``dpo_noisy`` policy into the reference, on the
  responses of the noisy pairs, and ``adpa`` and ``aligndistil`` from the same teacher (weighed against the
  reference, or for AlignDistil's contrastive teacher against ``dpo_noisy_reverse``, dpo on the swapped labels),
* ``bco`` with and without the ``udm`` transform on unpaired labels whose prompt distributions differ
  (``shifted_unpaired.jsonl``: thumbs-up kept mostly for six of the twelve subjects, thumbs-down mostly for
  the other six), the case BCO's distribution matching is for,

and evaluates each policy on held-out prompts (mean reward with 95% CI, KL(π‖π_ref) k1/k3, share of
grammatical samples). Writes ``results.json`` and ``table.md`` in ``--out`` and prints the table; the
table in docs/objectives_results.md was produced by this script (command and machine noted there).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from alignkit import train
from alignkit.config import TrainConfig
from alignkit.console import setup_console_logging
from alignkit.demo import FULL, QUICK, evaluate_policy
from alignkit.generation import generate
from alignkit.models.load import load_model, load_tokenizer
from alignkit.worlds import reviews

PAIRS = [{"name": "pairs", "strategy": "best_vs_worst"}]
NOISY = "noisy_pairs.jsonl"  # best-vs-worst pairs, a share of them with the label flipped
NOISY_REVERSED = "noisy_pairs_reversed.jsonl"  # the same pairs with every label swapped (a reverse-DPO model)
SHIFTED = "shifted_unpaired.jsonl"  # unpaired labels, desirable and undesirable prompts drawn differently
RUNS = [  # (label, objective, hyper-parameters, transforms[, data file in --out or None: scored.jsonl[, more keys]])
    ("dpo", "dpo", {"beta": 0.1}, PAIRS),
    ("ipo", "ipo", {"beta": 0.1}, PAIRS),
    ("simpo", "simpo", {"beta": 2.0, "gamma": 1.0}, PAIRS),
    ("ln_dpo", "dpo", {"beta": 1.0, "length_normalize": True}, PAIRS),
    ("soft_dpo", "soft_dpo", {"beta": 0.1, "target": "scores", "temperature": 0.5}, PAIRS),
    ("kto", "kto", {"beta": 0.1}, PAIRS + [{"name": "to_unpaired"}]),
    ("plackett_luce K=4", "plackett_luce", {"beta": 0.1}, []),
    ("dpo_noisy", "dpo", {"beta": 0.1}, [], NOISY),
    ("lcpo_noisy", "lcpo", {"beta": 0.1, "flip_rate": 0.1}, [], NOISY),
    ("dpo_noisy_b1", "dpo", {"beta": 1.0}, [], NOISY),
    ("lcpo_noisy_b1", "lcpo", {"beta": 1.0, "flip_rate": 0.1}, [], NOISY),
    ("bco_shifted", "bco", {"beta": 0.1}, [], SHIFTED),
    ("bco_udm_shifted", "bco", {"beta": 0.1}, [{"name": "udm"}], SHIFTED),
    # distillation into the reference from the dpo_noisy policy (train that row first, same --out)
    ("distill_from_dpo_noisy", "distill", {"direction": "forward"}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_top_k": 32}),
    # AlignDistil's contrastive teacher needs a reverse-DPO model: dpo on the same pairs with the labels swapped
    ("dpo_noisy_reverse", "dpo", {"beta": 0.1}, [], NOISY_REVERSED),
    # the same teacher weighed against the reference (teacher_ref defaults to the run's reference)
    ("adpa_from_dpo_noisy", "adpa", {"beta": 0.1, "kd": 1.0}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_top_k": 32}),
    ("aligndistil_mixture", "aligndistil", {"beta": 0.1, "target": "mixture"}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_top_k": 32}),
    ("aligndistil_contrast", "aligndistil", {"beta": 0.1, "target": "extrapolate"}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_ref": "{out}/dpo_noisy_reverse/final", "teacher_top_k": 32}),
    # the adaptive weight's slope: the authors' 10 suits models far closer to their reference than this world's
    ("aligndistil_mixture_s1", "aligndistil", {"beta": 0.1, "target": "mixture", "scale": 1.0}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_top_k": 32}),
    ("aligndistil_contrast_s1", "aligndistil", {"beta": 0.1, "target": "extrapolate", "scale": 1.0}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_ref": "{out}/dpo_noisy_reverse/final", "teacher_top_k": 32}),
    # ADPA alone (no DCKD term) on the dispreferred responses
    ("adpa_rejected", "adpa", {"beta": 0.1, "responses": "rejected"}, [], NOISY,
     {"teacher": "{out}/dpo_noisy/final", "teacher_top_k": 32}),
]
TEACHER_METRICS = ("kl", "teacher_mass", "advantage", "teacher_advantage", "weight", "teacher_l1")


def noisy_pairs(records: list[dict], flip_rate: float, seed: int) -> tuple[list[dict], int]:
    """Best-vs-worst pairs of scored records (all-tied lists dropped), each label flipped with probability
    ``flip_rate``; returns the pairs and how many were flipped."""
    rng, out, flipped = random.Random(seed), [], 0
    for r in records:
        s = r["scores"]
        best, worst = max(range(len(s)), key=s.__getitem__), min(range(len(s)), key=s.__getitem__)
        if s[best] == s[worst]:
            continue
        flip = rng.random() < flip_rate
        flipped += flip
        out.append({"prompt": r["prompt"], "responses": [r["responses"][best], r["responses"][worst]],
                    "ranks": [1, 0] if flip else [0, 1]})
    return out, flipped


def shifted_unpaired(records: list[dict], keep: float, seed: int) -> list[dict]:
    """One ``labels`` record per non-neutral response of the scored records (desirable when its reward > 0).
    A desirable one is kept with probability ``keep`` when its prompt's subject is among the first six
    subjects and ``1 − keep`` otherwise; an undesirable one the other way round. With keep = 0.8 the ratio
    of desirable to undesirable prompt densities is about 4 on one half of the subjects and ¼ on the other."""
    rng, first, out = random.Random(seed), reviews.SUBJECTS[:6], []
    for r in records:
        group = r["prompt"].split()[2] in first  # "Review: The <subject> ..."
        for text, score in zip(r["responses"], r["scores"]):
            if score != 0 and rng.random() < (keep if (score > 0) == group else 1 - keep):
                out.append({"prompt": r["prompt"], "responses": [text], "labels": [score > 0]})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out/objectives")
    p.add_argument("--world", default="demo_out/world", help="the demo's world folder (reused when it exists)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--flip-rate", type=float, default=0.3, help="share of flipped labels in noisy_pairs.jsonl")
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                   help="train only these rows (labels of RUNS, e.g. ln_dpo soft_dpo); the reference row always runs")
    args = p.parse_args(argv)
    runs = [r for r in RUNS if args.only is None or r[0] in args.only]
    if args.only and len(runs) != len(set(args.only)):
        p.error(f"--only takes labels from {[r[0] for r in RUNS]}")
    setup_console_logging()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (see the demo)
    s = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref_path = reviews.build_world(args.world, seed=args.seed, n_corpus=s.n_corpus, pretrain_epochs=s.pretrain_epochs,
                                   hidden_size=s.hidden_size)
    tokenizer, reference = load_tokenizer(str(ref_path)), load_model(str(ref_path))
    prompts = reviews.prompts(s.n_train_prompts, seed=args.seed + 1)
    gen = generate(reference, tokenizer, prompts, k=s.k, max_new_tokens=s.max_new_tokens, seed=args.seed + 1)
    records, dropped = reviews.labelled_records(prompts, gen.texts, "scored")
    data = out / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    noisy, flipped = noisy_pairs(records, args.flip_rate, args.seed + 3)
    (out / NOISY).write_text("".join(json.dumps(r) + "\n" for r in noisy), encoding="utf-8")
    reversed_pairs = [{**r, "ranks": r["ranks"][::-1]} for r in noisy]
    (out / NOISY_REVERSED).write_text("".join(json.dumps(r) + "\n" for r in reversed_pairs), encoding="utf-8")
    shifted = shifted_unpaired(records, 0.8, args.seed + 4)
    (out / SHIFTED).write_text("".join(json.dumps(r) + "\n" for r in shifted), encoding="utf-8")
    eval_prompts = reviews.prompts(s.n_eval_prompts, seed=args.seed + 2)
    ev = dict(prompts=eval_prompts, samples=s.eval_samples, max_new_tokens=s.max_new_tokens, seed=args.seed + 2)
    rows = [{"objective": "reference", **evaluate_policy(reference, reference, tokenizer, **ev)}]
    for label, objective, hp, transforms, *more in runs:
        file, keys = (more[0] if more else None), (more[1] if len(more) > 1 else {})
        keys = {k: v.format(out=out) if isinstance(v, str) else v for k, v in keys.items()}
        result = train(TrainConfig(
            model=str(ref_path), objective=objective, hparams=hp, data=str(out / file) if file else str(data),
            transforms=transforms, **keys,
            output_dir=str(out / label.split()[0]), batch_size=args.batch_size, max_steps=args.steps, lr=s.dpo_lr,
            warmup=0.1, scheduler="linear", seed=args.seed, max_length=128, progress=False, log_every=8,
        ))
        policy = load_model(str(result.final_dir))
        steps = [h for h in result.history if "loss" in h]
        first, last = steps[0], steps[-1]
        teacher = {f"{when}_{k}": h[k] for k in TEACHER_METRICS if k in last for when, h in (("first", first),
                                                                                              ("final", last))}
        rows.append({"objective": label, "hparams": hp, **evaluate_policy(policy, reference, tokenizer, **ev),
                     "final_loss": last["loss"], **({"flip_rate": last["flip_rate"]} if "flip_rate" in last else {}),
                     **teacher})
    table = format_table(rows, args.steps, args.batch_size)
    print(table)
    results = {"rows": rows, "steps": args.steps, "batch_size": args.batch_size, "lr": s.dpo_lr,
               "train_prompts": len(prompts), "scored_records": len(records), "dropped": dropped,
               "noisy_pairs": len(noisy), "flipped": flipped, "shifted_unpaired": len(shifted),
               "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    return results


def format_table(rows: list[dict], steps: int, batch_size: int) -> str:
    lines = ["| objective | hyper-parameters | mean reward ± 95% CI | KL k1 ± 95% CI | KL k3 | grammatical |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        hp = ", ".join(f"{k}={str(v).lower() if isinstance(v, (bool, str)) else format(v, 'g')}"
                       for k, v in r.get("hparams", {}).items()) or "—"
        lines.append(f"| {r['objective']} | {hp} | {r['reward']:.3f} ± {r['reward_ci']:.3f} | "
                     f"{r['k1']:.2f} ± {r['k1_ci']:.2f} | {r['k3']:.2f} | {r['grammatical']:.0%} |")
    lines.append(f"\n{steps} steps of batch {batch_size} records each, same learning rate and reference for all.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
