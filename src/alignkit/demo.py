"""The built-in demo: align a tiny model to a known reward with DPO and show the reward–KL trade-off.

``run_demo()`` runs the whole loop on CPU in a few minutes, downloading nothing:

1. **World** — build the movie-review language (`alignkit.worlds.reviews`), a tokenizer and a tiny
   model, and pretrain it (SFT) on the corpus. This model is the reference π_ref; it writes a mix of
   positive, negative and mixed reviews.
2. **Preference data** — sample K = 4 reviews per training prompt from π_ref, score each with the
   known reward, and keep the best-vs-worst pair (prompts whose K rewards all tie are dropped and
   counted) in ``pairs.jsonl``. The same samples in the other shapes the README trains on (`write_shapes`):
   ``lists.jsonl`` (K scored responses), ``multi.jsonl`` (score vectors [reward, brevity]),
   ``feedback.jsonl`` (thumbs up/down rows) and ``negatives.jsonl`` (the thumbs-down rows alone); and
   held-out pairs (new samples, prompts drawn with another seed), ``eval/heldout_pairs.jsonl`` (for ``alignkit eval --preferences``
   and ``eval-rm``).
3. **DPO** — train one policy per β with the alignkit trainer, starting from π_ref.
4. **Evaluation** on held-out prompts (another seed): sample from every policy and from π_ref; report
   the mean reward with a 95% CI, the sampled sequence-level KL(π ‖ π_ref) (k3 and k1 with 95% CIs,
   `alignkit.eval.kl`), the reward gain over π_ref, and the share of samples the grammar accepts.
   The table is printed; ``reward_vs_kl.png`` and ``results.json`` are written to ``out_dir``.

Small β lets the policy move far from π_ref (higher reward, higher KL, and — the reward being a word
count — more reward hacking: samples that stop being grammatical); large β keeps it close. Under Adam,
DPO's gradient scale ``β·σ(−βΔ)`` is normalised away while ``βΔ`` is small, so for a fixed number of
steps every small β follows nearly the same path; β starts to bind once ``βΔ`` reaches O(1). The
default βs (0.1 … 10) span that range for this budget (reviews are short: a few nats of log-ratio is
already a large change).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit import train
from alignkit.config import TrainConfig
from alignkit.console import setup_console_logging
from alignkit.data.schema import pair
from alignkit.engine.score import score_logps
from alignkit.errors import RunDirError
from alignkit.eval.kl import kl_estimates, mean_ci
from alignkit.generation import generate, sample
from alignkit.io_atomic import atomic_path, atomic_write, atomic_write_text
from alignkit.models.load import load_model, load_tokenizer
from alignkit.worlds import reviews

log = logging.getLogger("alignkit")


@dataclass
class DemoSettings:
    """Sizes of one demo run. `FULL` is the default demo; `QUICK` a < 60 s version for tests."""

    n_corpus: int = 6000
    pretrain_epochs: float = 3.0
    hidden_size: int = 96
    n_train_prompts: int = 1024
    k: int = 4
    n_eval_prompts: int = 256
    eval_samples: int = 2  # samples per held-out prompt
    max_new_tokens: int = 48
    dpo_epochs: float = 2.0
    dpo_batch_size: int = 32
    dpo_lr: float = 5e-4
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)


FULL = DemoSettings()
QUICK = DemoSettings(n_corpus=3000, pretrain_epochs=3.0, hidden_size=64, n_train_prompts=256, n_eval_prompts=128,
                     dpo_epochs=3.0, dpo_lr=1e-3, betas=(0.1, 10.0))


def best_vs_worst(prompts: list[str], completions: list[list[str]], rewards: list[list[float]]):
    """One pair per prompt: highest- vs lowest-reward completion (first one on ties within best/worst).

    Returns (records, ties): prompts whose completions all have the same reward give no pair and
    are counted in ``ties``.
    """
    records, ties = [], 0
    for prompt, texts, scores in zip(prompts, completions, rewards):
        best = max(range(len(texts)), key=lambda j: scores[j])
        worst = min(range(len(texts)), key=lambda j: scores[j])
        if scores[best] == scores[worst]:
            ties += 1
            continue
        records.append(pair(prompt, texts[best], texts[worst],
                            meta={"reward_chosen": scores[best], "reward_rejected": scores[worst]}))
    return records, ties


def evaluate_policy(policy, reference, tokenizer, prompts: list[str], samples: int, max_new_tokens: int,
                    seed: int) -> dict[str, Any]:
    """Mean reward (95% CI), KL(π ‖ π_ref) estimates and grammaticality of samples from ``policy``."""
    gen = generate(policy, tokenizer, prompts, k=samples, max_new_tokens=max_new_tokens, seed=seed)
    flat = [(p, c) for p, row in zip(prompts, gen.texts) for c in row]
    rewards = [reviews.reward(c) for _, c in flat]
    row: dict[str, Any] = {}
    row["reward"], row["reward_ci"] = mean_ci(rewards)
    row["reward_std"] = float(torch.tensor(rewards).std())
    row["grammatical"] = sum(reviews.is_grammatical(p + c) for p, c in flat) / len(flat)
    row["unfinished"] = gen.num_unfinished
    row["mean_tokens"] = sum(len(ids) for r in gen.token_ids for ids in r) / len(flat)
    if policy is reference:
        row.update({"k1": 0.0, "k1_ci": 0.0, "k3": 0.0, "k3_ci": 0.0})
    else:
        lp = score_logps(policy, tokenizer, prompts, gen.texts, gen.finished)
        lr = score_logps(reference, tokenizer, prompts, gen.texts, gen.finished)
        kl = kl_estimates(lp, lr)
        row.update({name: kl[name] for name in ("k1", "k1_ci", "k3", "k3_ci")})
    row["examples"] = [p + c for p, c in flat[:3]]
    return row


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_shapes(out: Path, prompts: list[str], texts: list[list[str]]) -> None:
    """The demo's samples as data of every shape (README "Data of every shape"), in the layouts users write:
    ``lists.jsonl`` {prompt, completions, scores}, ``multi.jsonl`` the same with [reward, brevity] vectors,
    ``feedback.jsonl`` {prompt, completion, label} (label = reward > 0; reward-0 samples left out) and
    ``negatives.jsonl`` its rows with label false."""
    for name, shape in (("lists", "scored"), ("multi", "vector")):
        rows, _ = reviews.labelled_records(prompts, texts, shape=shape)
        _write_jsonl(out / f"{name}.jsonl", [{"prompt": r["prompt"], "completions": r["responses"],
                                              "scores": r["scores"]} for r in rows])  # fmt: skip
    unpaired, _ = reviews.labelled_records(prompts, texts, shape="unpaired")
    feedback = [{"prompt": r["prompt"], "completion": r["responses"][0], "label": r["labels"][0]} for r in unpaired]
    _write_jsonl(out / "feedback.jsonl", feedback)
    _write_jsonl(out / "negatives.jsonl", [r for r in feedback if not r["label"]])
    log.info("wrote the samples as lists.jsonl, multi.jsonl, feedback.jsonl (%d rows) and negatives.jsonl (%d)",
             len(feedback), sum(not r["label"] for r in feedback))


def write_heldout_pairs(path: Path, reference, tokenizer, seed: int = 3, n_prompts: int = 128) -> int:
    """Best-vs-worst pairs of K = 4 new reference samples on prompts drawn with another seed than the training
    prompts and the evaluation's (the prompt space is small: many texts recur, the samples do not): docs/evaluation.md
    "Held-out pairs for the demo". Returns their number."""
    prompts = reviews.prompts(n_prompts, seed=seed)
    texts = sample(reference, tokenizer, prompts, k=4, max_new_tokens=48, seed=seed)
    records, _ = reviews.labelled_records(prompts, texts, shape="pairs")
    _write_jsonl(path, records)
    log.info("wrote %d held-out pairs to %s", len(records), path)
    return len(records)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed table: one line per policy (the reference first); gain in reward units and in ref stds."""
    head = (f"{'beta':>6} | {'mean reward ± 95% CI':>20} | {'KL k1 ± 95% CI':>16} | {'KL k3 ± 95% CI':>16} | "
            f"{'reward gain vs ref':>20} | {'grammatical':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        beta = r.get("label") or ("ref" if r["beta"] is None else f"{r['beta']:g}")
        gain = f"{r['gain']:+.3f} ({r['gain_spread']:+.2f} sd)"
        lines.append(
            f"{beta:>6} | {r['reward']:>10.3f} ± {r['reward_ci']:<7.3f} | {r['k1']:>7.2f} ± {r['k1_ci']:<6.2f} | "
            f"{r['k3']:>7.2f} ± {r['k3_ci']:<6.2f} | {gain:>20} | {r['grammatical']:>11.0%}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean reward vs KL (k1, unbiased and robust far from the reference) with 95% CIs, one point per β."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ref = next(r for r in rows if r["beta"] is None)
    ax.axhline(ref["reward"], color="grey", ls="--", lw=1, label=f"reference π_ref ({ref['reward']:.2f})")
    pol = sorted((r for r in rows if r["beta"] is not None), key=lambda r: r["k1"])
    ax.errorbar([0.0] + [r["k1"] for r in pol], [ref["reward"]] + [r["reward"] for r in pol],
                xerr=[0.0] + [r["k1_ci"] for r in pol], yerr=[ref["reward_ci"]] + [r["reward_ci"] for r in pol],
                fmt="o-", capsize=3, label="DPO policies")
    for r in pol:
        ax.annotate(f"β={r['beta']:g}", (r["k1"], r["reward"]), textcoords="offset points", xytext=(6, -12))
    ax.set_xlabel("KL(π ‖ π_ref) per review, nats (k1 estimate)")
    ax.set_ylabel("mean reward (sentiment score)")
    ax.set_title("Reward vs KL on held-out prompts (DPO, several β)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def run_demo(
    out_dir: str | Path = "demo_out",
    betas: tuple[float, ...] | None = None,
    seed: int = 0,
    quick: bool = False,
    num_threads: int | None = 1,
    progress: bool = False,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns what ``results.json`` holds.

    ``betas`` default to ``(0.1, 0.3, 1.0, 3.0, 10.0)`` (``(0.1, 10.0)`` when ``quick``). ``num_threads``
    sets torch's intra-op threads for the run (restored afterwards): the models are so small that one
    thread is fastest and several threads on a busy machine are many times slower. A world already
    built in ``out_dir/world`` with the same settings is reused. ``settings`` replaces the preset
    sizes (`FULL`, or `QUICK` when ``quick``).
    """
    setup_console_logging()
    s = settings or (QUICK if quick else FULL)
    betas = tuple(betas) if betas is not None else s.betas
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        log.info("demo 1/4: building the review world and pretraining the reference model")
        ref_path = reviews.build_world(out / "world", seed=seed, n_corpus=s.n_corpus,
                                       pretrain_epochs=s.pretrain_epochs, hidden_size=s.hidden_size,
                                       progress=progress)
        timings["world"] = time.perf_counter() - t0
        tokenizer = load_tokenizer(str(ref_path))
        reference = load_model(str(ref_path))

        log.info("demo 2/4: sampling %d x %d reviews and labelling them with the known reward", s.n_train_prompts, s.k)
        train_prompts = reviews.prompts(s.n_train_prompts, seed=seed + 1)
        gen = generate(reference, tokenizer, train_prompts, k=s.k, max_new_tokens=s.max_new_tokens, seed=seed + 1)
        rewards = [[reviews.reward(c) for c in row] for row in gen.texts]
        records, ties = best_vs_worst(train_prompts, gen.texts, rewards)
        log.info("built %d best-vs-worst pairs; dropped %d prompts whose %d rewards all tie", len(records), ties, s.k)
        print(f"pairs: {len(records)} best-vs-worst pairs, {ties} prompts dropped (all {s.k} rewards tied)")
        atomic_write_text(out / "train_prompts.txt", "".join(p + "\n" for p in train_prompts))
        pairs_path = out / "pairs.jsonl"
        _write_jsonl(pairs_path, [r.to_dict() for r in records])
        write_shapes(out, train_prompts, gen.texts)
        write_heldout_pairs(out / "eval" / "heldout_pairs.jsonl", reference, tokenizer, seed=seed + 3)
        timings["pairs"] = time.perf_counter() - t0 - sum(timings.values())

        policies: dict[float, Path] = {}
        histories: dict[float, list[dict]] = {}
        for i, beta in enumerate(betas):
            log.info("demo 3/4: DPO with beta=%g (%d/%d)", beta, i + 1, len(betas))
            result = train(TrainConfig(
                model=str(ref_path), objective="dpo", beta=float(beta), data=str(pairs_path),
                output_dir=str(out / f"dpo_beta{beta:g}"), batch_size=s.dpo_batch_size, epochs=s.dpo_epochs,
                lr=s.dpo_lr, warmup=0.1, scheduler="linear", seed=seed, max_length=128, log_every=5,
                progress=progress, ref_cache_dir=str(out / "ref_cache"),  # one reference pass for all betas
                overwrite=True,  # the demo rebuilds its folder: a second `alignkit demo` replaces the first's runs
            ))
            if result.final_dir is None:
                raise RuntimeError(f"DPO with beta={beta:g} was interrupted; its checkpoint is in {result.output_dir}")
            policies[beta], histories[beta] = Path(result.final_dir), result.history
        timings["dpo"] = time.perf_counter() - t0 - sum(timings.values())

        log.info("demo 4/4: evaluating on %d held-out prompts x %d samples", s.n_eval_prompts, s.eval_samples)
        eval_prompts = reviews.prompts(s.n_eval_prompts, seed=seed + 2)
        ev = dict(prompts=eval_prompts, samples=s.eval_samples, max_new_tokens=s.max_new_tokens, seed=seed + 2)
        rows = [{"beta": None, **evaluate_policy(reference, reference, tokenizer, **ev)}]
        for beta, path in policies.items():
            policy = load_model(str(path))
            last = next((h for h in reversed(histories[beta]) if "rewards/accuracy" in h), {})
            rows.append({"beta": beta, **evaluate_policy(policy, reference, tokenizer, **ev),
                         "train_loss": last.get("loss"), "train_accuracy": last.get("rewards/accuracy"),
                         "checkpoint": str(path)})
        ref_row = rows[0]
        for r in rows:
            r["gain"] = r["reward"] - ref_row["reward"]
            r["gain_spread"] = r["gain"] / ref_row["reward_std"]
        timings["eval"] = time.perf_counter() - t0 - sum(timings.values())

        table = format_table(rows)
        print(table)
        plot(rows, out / "reward_vs_kl.png")
        timings["total"] = time.perf_counter() - t0
        results = {
            "settings": {**asdict(s), "betas": list(betas), "seed": seed, "quick": quick},
            "reference": str(ref_path), "pairs": len(records), "ties_dropped": ties,
            "reference_row": ref_row, "rows": rows[1:], "table": table,
            "seconds": {k: round(v, 1) for k, v in timings.items()},
        }
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        log.info("demo finished in %.0f s; wrote %s and %s", timings["total"], out / "results.json",
                 out / "reward_vs_kl.png")
        return results
    finally:
        torch.set_num_threads(threads)


def evaluate_checkpoints(models: list[str], out_dir: str | Path = "demo_out", seed: int = 0,
                         quick: bool = False) -> list[dict[str, Any]]:
    """Gold reward and KL to the demo's reference of any policies (e.g. trained by hand from the demo's
    data), on the demo's held-out prompts; prints the demo's table with one row per model."""
    s = QUICK if quick else FULL
    manifest = Path(out_dir) / "world" / "world.json"
    if not manifest.is_file():
        raise RunDirError(f"no demo world in {out_dir}: run `alignkit demo` (or `make demo`) first")
    ref_path = Path(out_dir) / "world" / json.loads(manifest.read_text())["checkpoint"]
    tokenizer, reference = load_tokenizer(str(ref_path)), load_model(str(ref_path))
    ev = dict(prompts=reviews.prompts(s.n_eval_prompts, seed=seed + 2), samples=s.eval_samples,
              max_new_tokens=s.max_new_tokens, seed=seed + 2)
    rows = [{"beta": None, **evaluate_policy(reference, reference, tokenizer, **ev)}]
    for i, path in enumerate(models):
        rows.append({"beta": None, "label": f"#{i + 1}", "model": path,
                     **evaluate_policy(load_model(path), reference, tokenizer, **ev)})
    for r in rows:
        r["gain"] = r["reward"] - rows[0]["reward"]
        r["gain_spread"] = r["gain"] / rows[0]["reward_std"]
    print(format_table(rows) + "\n" + "\n".join(f"#{i + 1}: {m}" for i, m in enumerate(models)))
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m alignkit.demo [--out DIR] [--quick] [--seed N] [--betas 0.1 1 10]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--quick", action="store_true", help="a much smaller run (< 1 minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--betas", type=float, nargs="+", default=None)
    args = parser.parse_args(argv)
    run_demo(args.out, betas=args.betas, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
