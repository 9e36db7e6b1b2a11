"""Reward models from the command line: train (also an ensemble and LoRA), load with plain transformers,
`alignkit score` (scores feed the pairs transform and DPO), `alignkit eval-rm` reports."""

import json
import math

import pytest
import torch

from alignkit import cli


def train_rm(tiny_path, data, out, *items):
    argv = ["train", f"model={tiny_path}", f"data={data}", "objective=bt", f"output_dir={out}", "progress=false",
            "max_steps=12", "batch_size=8", "lr=3e-3", *items]
    assert cli.main(argv) == 0
    return out


def test_bt_reward_model_loads_with_plain_transformers_and_scores_like_alignkit(tiny_path, pairs_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.data import read_records
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.rewards.rm_scores import model_scores

    out = train_rm(tiny_path, pairs_path, tmp_path / "rm")
    final = out / "final"
    info = json.loads((final / "alignkit_reward.json").read_text())
    assert info["objective"] == "bt" and info["num_outputs"] == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a fresh head scores ~0
    hf = AutoModelForSequenceClassification.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    records = read_records(pairs_path).records[:4]
    ours = model_scores(load_reward_model(str(final)), tok, records, progress=False)
    for r, s in zip(records, ours):
        for text, value in zip(r.responses, s):  # plain transformers: prompt + response + EOS, last token
            ids = tok(r.prompt + text + tok.eos_token, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                assert float(hf(**ids).logits) == pytest.approx(value, abs=1e-4)


def test_score_then_pairs_then_dpo_chain(tiny_path, pairs_path, tmp_path):
    rm = train_rm(tiny_path, pairs_path, tmp_path / "rm") / "final"
    lists = tmp_path / "lists.jsonl"
    src = [json.loads(x) for x in open(pairs_path)]
    lists.write_text("".join(json.dumps({"prompt": r["prompt"], "completions": [r["rejected"], r["chosen"], " ok."],
                                         "ranks": [0, 0, 0]}) + "\n" for r in src))
    scored = tmp_path / "scored.jsonl"
    assert cli.main(["score", "--reward-model", str(rm), "--data", str(lists), "--out", str(scored)]) == 0
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    assert len(rows) == len(src) and all(len(r["scores"]) == 3 for r in rows)
    assert rows[0]["meta"]["original_ranks"] == [0, 0, 0]
    argv = ["train", f"model={tiny_path}", f"data={scored}", "objective=dpo", f"output_dir={tmp_path / 'dpo'}",
            "progress=false", "max_steps=2", "batch_size=4", "transforms=[{name: pairs, strategy: best_vs_worst}]"]
    assert cli.main(argv) == 0


def test_ensemble_members_are_combined_with_uncertainty(tiny_path, pairs_path, tmp_path):
    out = train_rm(tiny_path, pairs_path, tmp_path / "ens", "ensemble=2", "ensemble_by=fold")
    members = json.loads((out / "ensemble.json").read_text())["members"]
    assert len(members) == 2 and all((tmp_path / "ens" / f"member-{i}" / "final").is_dir() for i in range(2))
    scored = tmp_path / "scored.jsonl"
    for mode in ("mean", "min", "mean_minus_std"):
        assert cli.main(["score", "--reward-model", str(out), "--data", pairs_path, "--out", str(scored),
                         "--aggregate", mode]) == 0
        rows = [json.loads(x) for x in scored.read_text().splitlines()]
        assert all(len(r["meta"]["score_std"]) == 2 for r in rows)
    a, b = (tmp_path / "m.jsonl", tmp_path / "n.jsonl")
    for path, member in ((a, members[0]), (b, members[1])):
        assert cli.main(["score", "--reward-model", member, "--data", pairs_path, "--out", str(path)]) == 0
    ra, rb = ([json.loads(x)["scores"] for x in p.read_text().splitlines()] for p in (a, b))
    last = [json.loads(x) for x in scored.read_text().splitlines()]  # mean_minus_std with lam 1
    mean = (ra[0][0] + rb[0][0]) / 2
    std = abs(ra[0][0] - rb[0][0]) / 2
    assert last[0]["scores"][0] == pytest.approx(mean - std, abs=1e-5)
    assert last[0]["meta"]["score_std"][0] == pytest.approx(std, abs=1e-5)


def test_eval_rm_writes_a_report_with_subsets(tiny_path, pairs_path, tmp_path, capsys):
    rm = train_rm(tiny_path, pairs_path, tmp_path / "rm") / "final"
    data = tmp_path / "bench.jsonl"
    src = [json.loads(x) for x in open(pairs_path)]
    same = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"], "subset": "same"} for r in src[:6]]
    data.write_text("".join(json.dumps({**r, "subset": "easy" if i % 2 else "hard"}) + "\n"
                            for i, r in enumerate(src)) + "".join(json.dumps(r) + "\n" for r in same))
    assert cli.main(["eval-rm", "--reward-model", str(rm), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == len(src) + 6 and set(report["subsets"]) == {"easy", "hard", "same"}
    assert 0 <= report["accuracy"] <= 1 and "ece" in report["calibration"]
    # identical responses: ties whatever the float noise of two forward passes, so exactly ½
    assert report["subsets"]["same"] == {**report["subsets"]["same"], "correct": 0, "wrong": 0, "ties": 6,
                                         "accuracy": 0.5}
    assert report["tie_rule"]["identical_pairs"] == 6 and report["tie_rule"]["rtol"] == 1e-5
    assert report["correct"] + report["wrong"] + report["ties"] == report["n"]
    assert report["sections"]["scheme"] == "subsets"
    assert f"{report['correct']} correct, {report['wrong']} wrong, {report['ties']} ties at rtol 1e-05" in (
        capsys.readouterr().out)
    assert (tmp_path / "ev" / "report.md").read_text().startswith("#")


def test_lora_reward_model_trains_head_and_saves_merged(tiny_path, pairs_path, tmp_path):
    out = train_rm(tiny_path, pairs_path, tmp_path / "lora", "lora=true", "lr=1e-2")
    from alignkit.executor.reward_model import load_reward_model

    model = load_reward_model(str(out / "final"))
    assert model.config.num_labels == 1 and (out / "adapter").is_dir()
