"""Two CPU processes (DDP over gloo, launched with torchrun) train like one process with the global batch."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignkit.config import TrainConfig
from alignkit.engine.trainer import train


def test_two_processes_match_one_process_with_the_global_batch(tiny_path, pairs_path, tmp_path):
    common = [f"model={tiny_path}", f"data={pairs_path}", "objective=dpo", "beta=0.5", "max_steps=3", "lr=1e-3",
              "progress=false", "seed=0", "eval_split=0.25"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "alignkit.cli", "train", *common,
           "batch_size=4", f"output_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(TrainConfig(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, max_steps=3, lr=1e-3,
                               progress=False, seed=0, batch_size=8, output_dir=str(tmp_path / "one"),
                               eval_split=0.25))
    a = load_file(tmp_path / "ddp" / "checkpoints" / "step-000003" / "model.safetensors")
    b = load_file(single.output_dir / "checkpoints" / "step-000003" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    # The logged loss is the mean over both processes, so it matches the single-process loss.
    import json

    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    la = [r["loss"] for r in rows if "loss" in r]
    lb = [h["loss"] for h in single.history if "loss" in h]
    assert la == pytest.approx(lb, abs=1e-5)
    # The held-out evaluation is split across both processes and merged: same numbers as one process.
    assert rows[-1]["eval/loss"] == pytest.approx(single.history[-1]["eval/loss"], abs=1e-5)
    assert rows[-1]["eval/rewards/accuracy"] == pytest.approx(single.history[-1]["eval/rewards/accuracy"])
