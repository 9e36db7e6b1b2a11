"""scripts/gpu_throughput.py, the prepared GPU benchmark, smoke-tested on CPU with ``--tiny`` (slow: fresh
worker processes): its data has the token counts its FLOP count assumes, every alignkit variant trains, and
the JSON and markdown tables are written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_run_writes_the_tables(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_throughput

    from alignkit.data.schema import PreferenceRecord
    from alignkit.data.tokenize import TokenizeConfig, tokenize_records
    from alignkit.models.load import load_tokenizer

    info = gpu_throughput.build_world(tmp_path / "world", "tiny", 4, 0)
    tok = load_tokenizer(info["model"])
    rows = [json.loads(line) for line in open(info["data"])]
    items, _ = tokenize_records([PreferenceRecord(prompt=r["prompt"], responses=[r["chosen"], r["rejected"]],
                                                  ranks=[0, 1]) for r in rows], tok, TokenizeConfig())
    assert [[len(t.prompt_ids), len(t.segments[0]), len(t.segments[1])] for t in items] == info["row_tokens"]

    out = tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_throughput.py"), "--tiny", "--batches", "2",
                    "--only", "sdpa,flex,padded", "--budget", "3600", "--out", str(out), "--work", str(tmp_path / "work")], check=True,
                   env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    result = json.loads((out / "gpu_throughput_tiny.json").read_text())
    runs = {r["variant"]: r for r in result["results"]}
    assert set(runs) == {"sdpa", "flex", "padded"}
    for r in runs.values():
        assert "error" not in r, r.get("error")
        assert r["tokens_per_second"] > 0 and r["achieved_tflops"] > 0
    assert runs["flex"]["attn_implementation"] == "flex_attention" and runs["padded"]["layout"] == "padded"
    # the first step is the same DPO loss (ln 2: policy = reference) whatever the attention path
    losses = [r["history"][0]["loss"] for r in runs.values()]
    assert max(losses) - min(losses) < 1e-5
    head = {r["kind"]: r for r in result["lm_head"]}
    assert head["alignkit"]["logp_error"] < 1e-4 and head["alignkit"]["grad_w_error"] < 1e-4
    table = (out / "gpu_throughput_tiny.md").read_text()
    assert table.count("| 2 | alignkit") == 3 and "LM-head log-probs" in table
