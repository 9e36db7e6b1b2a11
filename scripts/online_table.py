"""Every online method on the demo review world: held-out gold reward and KL to the pretrained model.

    .venv/bin/python scripts/online_table.py [--out runs/online_table] [--steps 16] [--full] [--seed 0]
        [--doc docs/online_results.md] [--repeats runs/online_table_seed1]

Builds (or reuses) the review world (`alignkit.worlds.reviews`, the demo's QUICK sizes, or FULL with
``--full``), then trains each method from the pretrained model with the same budget — ``--batch`` prompts
x ``--k`` samples per step for ``--steps`` steps, one optimizer update per step, the same lr — and
evaluates every policy on held-out prompts with `alignkit.demo.evaluate_policy` (mean gold reward with a
95% CI, sequence KL(π ‖ π_ref) k1 with a 95% CI, share of grammatical samples). Writes ``results.json``
and ``table.md`` under ``--out`` and, with ``--doc``, the results page.

Where a method cannot take the shared shape: online DPO samples 2 per prompt, so it takes 2x the prompts
per step (same samples per step); iterative DPO (``rounds=2``) samples all of a prompt file once per round
and trains on its best-vs-worst pairs for one epoch, so it gets a file of ``steps x batch / 2`` prompts
(same samples and the same number of optimizer steps in all); ReMax also samples one greedy completion
per prompt (its baseline); Nash-MD also samples one opponent per sample from the policy/reference mixture.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from alignkit import train
from alignkit.config import TrainConfig
from alignkit.console import setup_console_logging
from alignkit.demo import FULL, QUICK, evaluate_policy
from alignkit.models.load import load_model, load_tokenizer
from alignkit.worlds import reviews

REWARD = "alignkit.worlds.reviews:reward"
BT = "bt:" + REWARD  # Bradley–Terry preference over the gold reward, P(a ≻ b) = σ(r(a) − r(b))

# name -> (what it is, TrainConfig settings beyond the shared ones)
METHODS = {
    "grpo": ("group-normalised advantages, clipped ratio", dict(objective="grpo")),
    "rloo": ("leave-one-out baseline", dict(objective="rloo")),
    "remax": ("greedy sample's reward as baseline", dict(objective="remax")),
    "reinforce_pp": ("REINFORCE++, batch-normalised advantages", dict(objective="reinforce_pp")),
    "ppo": ("value model, GAE, KL in the reward", dict(objective="ppo")),
    "ppo_max": ("ppo + PPO-max: running reward normalisation, reward and advantage clipping at 3",
                dict(objective="ppo", reward_normalize=True, reward_clip=3.0, advantage_clip=3.0)),
    "online_dpo": ("DPO on best-vs-worst of 2 fresh samples", dict(objective="dpo", num_samples=2)),
    "raft": ("best-of-K SFT (`objective=sft`)", dict(objective="sft")),
    "sppo": ("self-play, win rates among the K samples", dict(objective="sppo", reward="winrate:" + BT)),
    "nash_md": ("Nash-MD, opponent from the π/π_ref mixture",
                dict(objective="nash_md", beta=0.1, mixture_alpha=0.5, reward="mixture:" + BT)),
    "online_ipo": ("online IPO: soft-label IPO on all pairs of the K samples", dict(objective="online_ipo",
                                                                                  reward="winrate:" + BT)),
    "ipo_md": ("online IPO on samples of the π/π_ref mixture", dict(objective="ipo_md", mixture_alpha=0.5,
                                                                   reward="winrate:" + BT)),
    "egpo": ("online IPO by extragradient (2 steps per iteration)", dict(objective="egpo", reward="winrate:" + BT)),
    "fdpg": ("f-DPG, Jensen–Shannon to p ∝ π_ref·exp(r/β), β = 0.1", dict(objective="fdpg", beta=0.1)),
    "iterative_dpo": ("2 rounds: sample, pair best vs worst, DPO", dict(objective="dpo", beta=0.1, rounds=2, epochs=1)),
}


def method_config(name: str, args, world: str, prompts: Path, half: Path, out: Path) -> TrainConfig:
    extra = dict(METHODS[name][1])
    shared = dict(model=world, prompts=str(prompts), reward=REWARD, num_samples=args.k, batch_size=args.batch,
                  max_steps=args.steps, lr=args.lr, max_new_tokens=args.max_new_tokens, seed=args.seed,
                  output_dir=str(out / name), progress=False, log_every=max(1, args.steps // 4))
    if name == "online_dpo":  # 2 samples per prompt: twice the prompts, the same samples per step
        extra["batch_size"] = args.batch * args.k // 2
    if name == "iterative_dpo":  # rounds x (prompts x k) samples, rounds x prompts / batch optimizer steps
        shared.update(prompts=str(half), max_steps=-1, max_length=128)
    return TrainConfig(**{**shared, **extra})


def write_doc(path: Path, results: dict, repeats: list[dict] = ()) -> None:
    a, s = results["args"], results["world_settings"]
    rows, ref = results["rows"], results["rows"][0]
    lines = ["| method | what it is | held-out reward ± 95% CI | gain | KL k1 ± 95% CI (nats) | grammatical "
             "| training time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        what = METHODS[r["method"]][0] if r["method"] in METHODS else "π_ref, the starting point"
        secs = f"{r['seconds']:.0f} s" if "seconds" in r else "—"
        lines.append(f"| {r['method']} | {what} | {r['reward']:.3f} ± {r['reward_ci']:.3f} | "
                     f"{r['reward'] - ref['reward']:+.3f} | {r['k1']:.2f} ± {r['k1_ci']:.2f} | "
                     f"{r['grammatical']:.0%} | {secs} |")
    table = "\n".join(lines)
    busy = (f", while other jobs shared the CPU (load average {results['load_before']:.0f} at the start), so the "
            "times are pessimistic" if results["load_before"] > 1.5 else "")
    text = f"""# Online training on the demo review world

Made by `scripts/online_table.py` (`{results['command']}`) on the 2-core CPU development machine, one torch
thread{busy}; the whole script took {results['seconds_total']:.0f} s (world build and evaluation included).

World (`alignkit.worlds.reviews`, the demo's {'FULL' if a['full'] else 'QUICK'} sizes: a {s['n_corpus']}-review corpus,
hidden size {s['hidden_size']}, {s['pretrain_epochs']:g} pretraining epochs, seed 0): the pretrained tiny model
π_ref writes as many scathing reviews as glowing ones; the gold reward `alignkit.worlds.reviews:reward` is
the lexicon sentiment in [−1, 1]. Every method starts from π_ref and gets the same budget: {a['batch']} prompts x
{a['k']} samples = {a['batch'] * a['k']} samples per step (drawn from {a['n_train_prompts']} training prompts),
{a['steps']} steps of one optimizer update, lr {a['lr']:g}, {a['max_new_tokens']} new tokens at temperature 1,
seed {a['seed']}, the objectives' default hyper-parameters otherwise. Exceptions, forced by the method: online
DPO samples 2 per prompt and takes {a['batch'] * a['k'] // 2} prompts per step; iterative DPO (`rounds=2`, β = 0.1)
samples {a['k']} per prompt on {a['steps'] * a['batch'] // 2} prompts per round and trains one epoch on the
best-vs-worst pairs (the same samples and at most the same optimizer steps; prompts whose samples all tie
drop out); SPPO's, Nash-MD's, online IPO's, IPO-MD's and EGPO's rewards are Bradley–Terry preferences over
the gold reward (`winrate:bt:...`, `mixture:bt:...` with β = 0.1, α = 0.5); ReMax also decodes one greedy
completion per prompt, Nash-MD one opponent per sample; IPO-MD samples from the π/π_ref mixture (α = 0.5)
instead of π; EGPO's {a['steps']} steps are {a['steps'] // 2} extragradient iterations. Held-out: {a['eval_prompts']} prompts of another seed x
{a['eval_samples']} samples at temperature 1 ({a['max_new_tokens']} new tokens), scored with the gold reward;
KL(π ‖ π_ref) is the sampled sequence-level k1 estimate (`alignkit.demo.evaluate_policy`,
`alignkit.eval.kl`). Training time is the wall time of `train()` (rollouts included, evaluation not).

{table}

{repeat_text(results, repeats)}Reading it: one short run per method, so differences of about the CI width are noise, and the seed
matters as much as the method at this budget (see the repeat); the point is that every method learns the
reward from its own samples, and at what KL and grammaticality. Results JSON: `{a['out']}/results.json`.

ReMax's collapse at seed 1 (KL 48, half the samples ungrammatical: "was was was ...") is its baseline, not a
bug: the greedy review scores the maximum reward, 1.0, at every step (logged as `reward/greedy`), so every
sampled review gets a negative advantage (`advantage/mean` about −0.7) and, with the paper's summed
per-sequence loss at this lr, the policy pushes probability off everything it samples. The baseline is
unbiased, just far from the samples' mean here; RLOO's leave-one-out mean and GRPO's group mean sit at the
samples' level by construction.
At seed 1, ReMax with `loss_agg=token` still reached KL 10, and lr 1e-4 learned nothing in 16 steps.
{new_methods_text(results, repeats)}"""
    path.write_text(text, encoding="utf-8")


def ppo_max_logged(metrics: Path) -> str:
    """What PPO-max's options did in the seed's run, from its logged steps (``metrics.jsonl``)."""
    if not metrics.exists():
        return ""
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "reward/running_std" in r]
    std = [r["reward/running_std"] for r in rows]
    return (f"At the logged steps the running reward std was {min(std):.2f} to {max(std):.2f} (the gold reward lies "
            f"in [−1, 1]), so normalising mostly centres the reward and weighs it about {1 / (sum(std) / len(std)):.1f} "
            "times more against the KL penalty; the reward clip bound on "
            f"{max(r['reward/clip_fraction'] for r in rows):.0%} of samples at most and the advantage clip on "
            f"{max(r['advantages/clip_fraction'] for r in rows):.1%} of tokens at most (logged `reward/clip_fraction`, "
            "`advantages/clip_fraction`): on a bounded reward the clips are insurance, not a change.")


def new_methods_text(results: dict, repeats: list[dict]) -> str:
    """What the rows of the Nash methods, f-DPG and PPO-max show, with their figures (both seeds)."""
    runs = [{row["method"]: row for row in r["rows"]} for r in [results, *repeats]]

    def fig(name: str, key: str, fmt: str) -> str:
        return " / ".join(format(b[name][key], fmt) if name in b else "—" for b in runs)

    have, steps = set(runs[0]), results["args"]["steps"]
    out = []
    if {"online_ipo", "ipo_md", "egpo"} <= have:
        out.append(
            "Online IPO, IPO-MD and EGPO (`objectives/nash.py`, `algorithms/nash.py`) share one loss, the soft-label "
            "IPO loss on every pair of a prompt's samples, and differ in the sampler (IPO-MD: the π/π_ref mixture) and "
            f"the step (EGPO: extragradient, so its {steps} steps are {steps // 2} iterations). Held-out reward (seed "
            + " / ".join(str(r["args"]["seed"]) for r in [results, *repeats]) + f"): online IPO "
            f"{fig('online_ipo', 'reward', '.3f')}, IPO-MD {fig('ipo_md', 'reward', '.3f')}, EGPO "
            f"{fig('egpo', 'reward', '.3f')}, at KL {fig('online_ipo', 'k1', '.2f')}, {fig('ipo_md', 'k1', '.2f')} and "
            f"{fig('egpo', 'k1', '.2f')}; EGPO moves least, as expected of half as many effective steps (each full "
            "step starts again from θ_t). The Bradley–Terry preference here is transitive, so this is their behaviour "
            "as RL methods with a KL-regularised target (β = 0.1); what they are for — reaching the equilibrium of an "
            "intransitive preference where plain self-play circles it — is shown on a cyclic game in "
            "`tests/test_nash.py` (a tabular policy within 0.03 of uniform for EGPO and IPO-MD, 0.2 away for online "
            "IPO's plain step and for SPPO).")
    if "fdpg" in have:
        out.append(
            "f-DPG (`objectives/fdpg.py`, Jensen–Shannon, β = 0.1) moves the policy toward p ∝ π_ref·exp(r/β): reward "
            f"{fig('fdpg', 'reward', '.3f')}, KL {fig('fdpg', 'k1', '.2f')}; that its f-divergence to the target "
            "falls to near zero for forward KL, reverse KL, TV and JS is `tests/test_fdpg.py` on a six-outcome model.")
    if {"ppo", "ppo_max"} <= have:
        out.append(
            "PPO-max's stabilisers (`reward_normalize=true reward_clip=3 advantage_clip=3`, Zheng et al. 2023) against "
            f"plain PPO at the same budget: reward {fig('ppo_max', 'reward', '.3f')} vs {fig('ppo', 'reward', '.3f')}, "
            f"KL {fig('ppo_max', 'k1', '.2f')} vs {fig('ppo', 'k1', '.2f')}, grammatical "
            f"{fig('ppo_max', 'grammatical', '.0%')} vs {fig('ppo', 'grammatical', '.0%')}: no difference beyond noise "
            "at this budget. " + ppo_max_logged(Path(results["args"]["out"]) / "ppo_max" / "metrics.jsonl"))
    return "\n" + "\n\n".join(out) + "\n" if out else ""


def repeat_text(results: dict, repeats: list[dict]) -> str:
    """The same table's reward and KL from runs with other seeds (``--repeats DIR``), side by side."""
    if not repeats:
        return ""
    seeds = [results["args"]["seed"]] + [r["args"]["seed"] for r in repeats]
    by = [{row["method"]: row for row in r["rows"]} for r in [results, *repeats]]
    head = "| method | " + " | ".join(f"reward, seed {s}" for s in seeds) + " | " + \
        " | ".join(f"KL k1, seed {s}" for s in seeds) + " | " + " | ".join(f"grammatical, seed {s}" for s in seeds) + " |"
    lines = [head, "|---" * (1 + 3 * len(seeds)) + "|"]
    for row in results["rows"]:
        m = row["method"]
        cells = [f"{b[m]['reward']:.3f}" if m in b else "—" for b in by]
        cells += [f"{b[m]['k1']:.2f}" if m in b else "—" for b in by]
        cells += [f"{b[m]['grammatical']:.0%}" if m in b else "—" for b in by]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    cmds = "; ".join(f"`{r['command']}`" for r in repeats)
    return (f"Repeat with other seeds (training sampling and initialisation of the value head; the world, the "
            f"prompts and the held-out set are the same; {cmds}):\n\n" + "\n".join(lines) + "\n\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/online_table")
    p.add_argument("--doc", default=None, help="also write the results page here (docs/online_results.md)")
    p.add_argument("--full", action="store_true", help="the demo's FULL world sizes (default: QUICK)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=16, help="prompts per step")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-train-prompts", type=int, default=256)
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", nargs="*", default=[],
                   help="output folders of earlier runs with other seeds, shown side by side in --doc")
    args = p.parse_args(argv)
    setup_console_logging()
    torch.set_num_threads(1)
    import os

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = FULL if args.full else QUICK
    world_settings = dict(n_corpus=s.n_corpus, pretrain_epochs=s.pretrain_epochs, hidden_size=s.hidden_size)
    world = str(reviews.build_world(out / "world", seed=0, **world_settings))
    train_prompts = reviews.prompts(args.n_train_prompts, seed=1)
    prompts, half = out / "prompts.jsonl", out / "prompts_iterative.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in train_prompts))
    half.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in train_prompts[:args.steps * args.batch // 2]))
    tok, reference = load_tokenizer(world), load_model(world)
    ev = dict(prompts=reviews.prompts(args.eval_prompts, seed=2), samples=args.eval_samples,
              max_new_tokens=args.max_new_tokens, seed=2)
    rows = [{"method": "pretrained", **evaluate_policy(reference, reference, tok, **ev)}]
    for name in args.methods:
        shutil.rmtree(out / name, ignore_errors=True)  # a fresh run (finished rounds would be skipped)
        t0 = time.perf_counter()
        result = train(method_config(name, args, world, prompts, half, out))
        seconds = time.perf_counter() - t0
        row = {"method": name, "seconds": round(seconds, 1),
               **evaluate_policy(load_model(str(result.final_dir)), reference, tok, **ev),
               "checkpoint": str(result.final_dir)}
        rows.append(row)
        print(f"{name}: reward {row['reward']:.3f} ± {row['reward_ci']:.3f}, KL k1 {row['k1']:.2f}, {seconds:.0f} s",
              flush=True)
    cmd = ".venv/bin/python scripts/online_table.py" + (f" {' '.join(argv)}" if argv else "")
    results = {"args": {**vars(args), "full": args.full}, "world_settings": asdict(s) | world_settings,
               "world": world, "rows": rows, "command": cmd, "load_before": load_before,
               "machine": platform.platform(), "seconds_total": round(time.perf_counter() - t_all, 1)}
    lines = ["| method | held-out reward ± 95% CI | KL k1 ± 95% CI | grammatical | training time |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['reward']:.3f} ± {r['reward_ci']:.3f} | {r['k1']:.2f} ± {r['k1_ci']:.2f} | "
              f"{r['grammatical']:.0%} | {r.get('seconds', '—')} s |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if args.doc:
        write_doc(Path(args.doc), results, [json.loads((Path(d) / "results.json").read_text()) for d in args.repeats])
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
