"""alignkit GRPO vs TRL's GRPOTrainer: step time, rollout tokens/s, train time and peak memory, same model.

    python3 bench/grpo_vs_trl.py [--steps 5] [--warmup 2] [--rounds 2] [--threads N]   (see --help)

Uses the bench environment of `dpo_vs_trl.py` (``bench/.venv-trl``, created on first run; TRL lives
there only). It builds, in a work folder (``bench/.work/grpo_vs_trl``), alignkit's arithmetic world (a
tiny Qwen2-style model pretrained on ``"Q: a+b= A: c."`` lines that answer right ~40% of the time:
`alignkit.worlds.arithmetic.build_world`) and a prompt file of arithmetic problems with their answers.
It then runs TRL's GRPOTrainer and alignkit's GRPO (`OnlineTrainer`), each in a fresh process, ``--rounds``
times interleaved: same model, prompts (alignkit's batch order), reward (alignkit's ``rule:exact_answer``),
B prompts x K completions per step in one generate call, max new tokens, temperature 1, lr, beta, one
policy update per rollout, fp32, no eval, no checkpoints. Only the steps after ``--warmup`` are timed;
the table shows each variant's fastest round and every round's s/step. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from dpo_vs_trl import BENCH, REPO, fmt, run_worker, setup_env

VARIANTS = {  # name -> (label, worker script)
    "trl": ("TRL GRPOTrainer", "_trl_grpo_worker.py"),
    "alignkit": ("alignkit grpo", "_alignkit_grpo_worker.py"),
    # opt-in (--only trl,alignkit,alignkit-vllm): runs in the vLLM environment (make test-vllm; VLLM_PYTHON overrides),
    # on a model with a head size vLLM's CPU attention accepts, which then every variant uses
    "alignkit-vllm": ("alignkit grpo+vLLM", "_alignkit_grpo_worker.py"),
}
EXTRA_ARGS = {"alignkit-vllm": ["--rollout-backend", "vllm"]}
COLUMNS = [  # (header, result key, format)
    ("s/step", "seconds_per_step", ".3f"), ("min", "min_seconds_per_step", ".3f"),
    ("gen s/step", "generation_seconds_per_step", ".3f"), ("train s/step", "train_seconds_per_step", ".3f"),
    ("rollout tok/s", "rollout_tokens_per_second", ".0f"), ("HF gen s/step", "hf_generate_seconds_per_step", ".3f"), ("gen tok/step", "generated_tokens_per_step", ".0f"),
    ("CPU s/step", "cpu_seconds_per_step", ".3f"), ("peak MB", "peak_memory_mb", ".0f"),
    ("setup s", "setup_seconds", ".1f"), ("other", "other_cores", ".2f"),
]
RATIOS = [  # (label, key, higher is better)
    ("s/step", "seconds_per_step", False), ("CPU s/step (less load-sensitive)", "cpu_seconds_per_step", False),
    ("generation s/step", "generation_seconds_per_step", False),
    ("train s/step (excl. generation)", "train_seconds_per_step", False),
    ("rollout tokens/s", "rollout_tokens_per_second", True),
    ("HF generate s/step (sampling only)", "hf_generate_seconds_per_step", False), ("peak RSS", "peak_memory_mb", False),
]


def prepare(work: Path, rows: int, seed: int, world: str, vllm: bool = False) -> dict:
    """The model (the arithmetic world's pretrained one, or ``world="random"``: `build_tiny`'s random
    weights, which rarely sample EOS) and ``rows`` problems; runs inside the bench venv. ``vllm``: the same
    with a head size vLLM's CPU attention accepts (`alignkit.worlds.common.vllm_shape`)."""
    from alignkit.models.tiny import build_tiny
    from alignkit.worlds import arithmetic
    from alignkit.worlds.common import vllm_shape

    if world == "random":
        shape = vllm_shape(64) if vllm else {}
        model = build_tiny(work / ("random-vllm" if vllm else "random"), chat_template=False, seed=seed, **shape)
    else:
        shape = vllm_shape(arithmetic.ArithmeticConfig().hidden_size) if vllm else {}
        model = arithmetic.build_world(work / ("world-vllm" if vllm else "world"), **shape)
    prompts, answers = arithmetic.problems(rows, seed=seed + 1)
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    info = {"model": str(model), "data": str(data), "rows": rows, "world": world, "vocab": cfg.vocab_size,
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads}
    (work / "prepared.json").write_text(json.dumps(info, indent=1))
    return info


def print_report(results: dict, info: dict, args) -> None:
    ok = {k: r for k, r in results.items() if "error" not in r}
    first = next(iter(ok.values()), {})
    print(f"\n== GRPO step time: {args.steps} timed steps after {args.warmup} warm-up; {args.batch} prompts x "
          f"{args.k} completions per step, max_new_tokens {args.max_new_tokens}, temperature 1, lr {args.lr}, "
          f"beta {args.beta}, fp32, device {first.get('device', '?')} ({first.get('torch_threads', '?')} torch "
          f"threads) ==")
    print(f"trl {ok.get('trl', {}).get('trl_version', '-')}, transformers {first.get('transformers_version', '?')}, "
          f"torch {first.get('torch_version', '?')}; model: {info['world']} world, Qwen2-style, vocab {info['vocab']}, "
          f"{info['layers']} layers, hidden {info['hidden']}, {info.get('heads', '?')} heads")
    head = f"{'variant':<18}" + "".join(f"{h:>{max(len(h) + 2, 8)}}" for h, _, _ in COLUMNS)
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        label = VARIANTS[name][0]
        if "error" in r:
            print(f"{label:<18}FAILED: {r['error'][:200]}")
            continue
        print(f"{label:<18}" + "".join(f"{fmt(r.get(k), spec):>{max(len(h) + 2, 8)}}" for h, k, spec in COLUMNS))
    print("gen: generation only (the generate call); train = step - gen (rewards, old/reference log-probs,\n"
          "backward, optimizer); rollout tok/s = generated completion tokens (EOS included) / gen seconds;\n"
          "HF gen: seconds inside transformers' generate alone (TRL's timed call starts from token ids and\n"
          "returns token ids; alignkit's gen also tokenizes the prompts and decodes the samples);\n"
          "other: cores used by other processes during the run (of the machine's; ideally ~0)")
    if args.rounds > 1:
        print("s/step of each round (the table shows the fastest): " + "; ".join(
            f"{VARIANTS[n][0]} " + ", ".join(fmt(x, ".3f") for x in r["rounds_seconds_per_step"])
            for n, r in results.items()))
    for name in ("alignkit", "alignkit-vllm"):
        if name in ok and "trl" in ok:
            compare(ok[name], ok["trl"], VARIANTS[name][0])


def compare(a: dict, t: dict, label_a: str) -> None:
    """Ratios of one alignkit variant to TRL, and both runs' reward and length per step."""
    print(f"\n{label_a} / TRL (same run):")
    for label, key, higher in RATIOS:
        if a.get(key) is None or not t.get(key):  # e.g. no transformers generate call under vLLM
            continue
        ratio = a[key] / t[key]
        better = "alignkit faster" if (ratio > 1) == higher else "TRL faster"
        if key == "peak_memory_mb":
            better = "alignkit smaller" if ratio < 1 else "TRL smaller"
        print(f"  {label:<34} {ratio:6.2f}  ({better})")
    same = a["step_prompts"] == t["step_prompts"][: len(a["step_prompts"])]
    print(f"same prompts at every step: {same}")
    print(f"{'step':<6}{'alignkit reward':>16}{'TRL reward':>12}{'alignkit len':>14}{'TRL len':>10}")
    for s, (ha, ht) in enumerate(zip(a["history"], t["history"])):
        print(f"{s + 1:<6}{fmt(ha.get('reward/mean'), '.3f'):>16}{fmt(ht.get('reward'), '.3f'):>12}"
              f"{fmt(ha.get('response_length'), '.2f'):>14}{fmt(ht.get('completions/mean_length'), '.2f'):>10}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps (one rollout + one policy update each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--k", type=int, default=8, help="completions per prompt (TRL's num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (> 0: both run a reference model)")
    p.add_argument("--rounds", type=int, default=2, help="run the variants this many times, interleaved")
    p.add_argument("--rows", type=int, default=64, help="prompts in the prompt file (>= batch x steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: torch's default)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each worker, wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--only", default="trl,alignkit", help=f"comma-separated subset of {','.join(VARIANTS)} "
                   "(alignkit-vllm is opt-in: it needs the vLLM environment)")
    p.add_argument("--world", choices=["arithmetic", "random"], default="arithmetic",
                   help="arithmetic: the pretrained arithmetic world (answers in ~4 tokens, reward ~0.3); random: "
                        "random weights (completions run to --max-new-tokens; reward ~0.05)")
    p.add_argument("--work", type=Path, default=BENCH / ".work" / "grpo_vs_trl")
    p.add_argument("--prepare-only", dest="prepare_only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--vllm-shape", dest="vllm_shape", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = args.work.resolve()
    if args.prepare_only:  # internal: runs inside the bench venv
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(prepare(work, args.rows, args.seed, args.world, args.vllm_shape)))
        return
    if args.rows < args.batch * (args.steps + args.warmup):
        p.error(f"--rows {args.rows} < batch x steps: the run would start a second epoch (reshuffled)")

    t_all = time.perf_counter()
    python = setup_env()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    pythons = {n: python for n in names}
    if "alignkit-vllm" in names:
        pythons["alignkit-vllm"] = Path(os.environ.get("VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
        if not pythons["alignkit-vllm"].exists():
            p.error(f"alignkit-vllm runs in the vLLM environment, but {pythons['alignkit-vllm']} does not exist: "
                    "build it with `make test-vllm` or point VLLM_PYTHON at one")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[bench] building the {args.world} model and the prompts in {work}", flush=True)
    subprocess.run([str(python), __file__, "--prepare-only", "--work", str(work), "--rows", str(args.rows),
                    "--seed", str(args.seed), "--world", args.world,
                    *(["--vllm-shape"] if "alignkit-vllm" in names else [])], check=True, stdout=subprocess.DEVNULL)
    info = json.loads((work / "prepared.json").read_text())
    common = ["--model", info["model"], "--data", info["data"], "--batch", str(args.batch), "--k", str(args.k),
              "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--beta", str(args.beta),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
              "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(1, args.rounds + 1):  # interleaved: A B A B
        for name in names:
            cmd = [str(pythons[name]), str(BENCH / VARIANTS[name][1]), *common, *EXTRA_ARGS.get(name, [])]
            runs[name].append(run_worker(cmd, work, f"{name}-r{rnd}", VARIANTS[name][0], args.wait_quiet))
    results = {}
    for name, rs in runs.items():  # the round with the lowest mean s/step (other load only adds time)
        good = [r for r in rs if "error" not in r]
        results[name] = dict(min(good, key=lambda r: r["seconds_per_step"]) if good else rs[-1])
        results[name]["rounds_seconds_per_step"] = [r.get("seconds_per_step") for r in rs]
    print_report(results, info, args)
    (work / "results.json").write_text(json.dumps({"info": info, "args": {k: str(v) for k, v in vars(args).items()},
                                                   "results": results, "rounds": runs}, indent=1))
    print(f"\nresults: {work / 'results.json'}; whole bench {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
