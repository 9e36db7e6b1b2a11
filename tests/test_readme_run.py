"""README.md's shell blocks run as written, in order, after the demo (`make demo` in the README).

The slow test builds the quick demo (`alignkit demo --quick`, in place of `make demo`) in a temporary folder
that links `configs/` and `tests/` of this checkout, then runs every command of every ```bash block, in
README order, through bash (one command at a time, continuation lines joined), with `alignkit` calling this
checkout. Blocks preceded by ``<!-- readme-run: skip (reason) -->`` are not run; the fast test pins which
ones, so a new block is run unless it says why not.

What the test changes, and only that (`QUICK`): the demo's size. The quick demo trains β 0.1 and 10 only,
so ``dpo_beta{0.1,0.3,1,3,10}`` reads ``dpo_beta{0.1,10}``; step counts, prompt counts and the arithmetic
world are made smaller where a command would take minutes. Nothing reaches the network (HF_HUB_OFFLINE=1).
"""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!-- readme-run: skip \((.+?)\) -->\n$")
# (README text, quick-demo text): sizes only
QUICK = [
    ("dpo_beta{0.1,0.3,1,3,10}", "dpo_beta{0.1,10}"),  # the betas the quick demo trains
    ("max_steps=200", "max_steps=4"),  # GRPO: 200 steps take ~4 minutes on 2 cores
    ("a.build_world('runs/arith')", "a.build_world('runs/arith', n_corpus=400, pretrain_epochs=1.0)"),
    ("--n-prompts 64", "--n-prompts 16"),
    ("epochs=2 ", "epochs=1 "),
    ("{name: condition_weights, samples: 4}", "{name: condition_weights, samples: 1}"),  # 4x the records: 110 s
]


def readme_blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, section, block text, skip reason or None) of every ```bash block, in order."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```bash\n(.*?)```", text, re.S):
        before = text[: m.start()]
        section = (re.findall(r"^## .*$", before, re.M) or ["# alignkit"])[-1]
        skip = SKIP.search(before)
        out.append((before.count("\n") + 1, section, m.group(1), skip.group(1) if skip else None))
    return out


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment lines and trailing comments dropped."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def test_skipped_blocks_are_the_ones_that_cannot_run_here_and_say_why():
    skipped = [(section, commands(block)[0].split()[0:2], why) for _, section, block, why in readme_blocks() if why]
    assert [(section, first) for section, first, _ in skipped] == [
        ("# alignkit", ["make", "demo"]),
        ("## Install", ["python3", "-m"]),
        ("## Your own model and data", ["alignkit", "doctor"]),
        ("## Multi-GPU and multi-node training", ["accelerate", "launch"]),
    ]
    assert all(len(why) > 20 for _, _, why in skipped)
    run = [b for b in readme_blocks() if not b[3]]
    assert len(run) == 12 and sum(len(commands(b[2])) for b in run) == 38
    text = "\n".join(b[2] for b in run)
    for old, _ in QUICK:  # every substitution still matches the README
        assert old in text, old


@pytest.mark.slow
def test_readme_commands_run_in_order_after_the_quick_demo(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "alignkit"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m alignkit.cli "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "tests"):
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    timings = []

    def run(cmd: str, where: str) -> None:
        t0 = time.perf_counter()
        done = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        timings.append((time.perf_counter() - t0, cmd[:70]))
        assert done.returncode == 0, f"{where}: `{cmd}` exited {done.returncode}:\n{done.stderr[-3000:]}"

    run("alignkit demo --quick --out demo_out", "make demo (quick)")
    for line, section, block, why in readme_blocks():
        if why:
            continue
        for cmd in commands(block):
            for old, new in QUICK:
                cmd = cmd.replace(old, new)
            run(cmd, f"README.md line {line} ({section})")
    # a few outputs the README names
    for path in ("runs/dpo/final", "runs/dpo_refcache/final", "demo_out/eval/report/report.html", "runs/ens/member-2",
                 "runs/chain/dpo/final", "bon16.jsonl", "runs/iter/rounds.jsonl", "runs/dpo_torchrun/final",
                 "hh_prefs.rejects.jsonl"):  # fmt: skip
        assert (work / path).exists(), path
    print("\n".join(f"{s:6.1f} s  {c}" for s, c in timings))
