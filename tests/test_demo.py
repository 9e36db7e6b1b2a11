"""The built-in demo: pair construction, and a quick end-to-end run (world -> pairs -> DPO -> reward/KL)."""

import json
from pathlib import Path

import pytest

from alignkit.data.schema import PreferenceRecord
from alignkit.demo import QUICK, best_vs_worst, format_table, run_demo
from alignkit.worlds import reviews
from alignkit.worlds.reviews import brevity, reward


def test_best_vs_worst_drops_and_counts_ties():
    records, ties = best_vs_worst(
        ["p1", "p2", "p3"],
        [[" a", " b", " c"], [" d", " e"], [" f", " g", " h"]],
        [[0.0, 1.0, -1.0], [0.5, 0.5], [0.2, -0.2, 0.2]],
    )
    assert ties == 1
    assert [(r.prompt, r.responses, r.ranks) for r in records] == [
        ("p1", [" b", " c"], [0.0, 1.0]),
        ("p3", [" f", " g"], [0.0, 1.0]),  # first of the tied best
    ]
    assert records[0].meta == {"reward_chosen": 1.0, "reward_rejected": -1.0}


def test_format_table():
    row = {"reward": 0.5, "reward_ci": 0.05, "k1": 1.25, "k1_ci": 0.1, "k3": 1.0, "k3_ci": 0.2, "gain": 0.25,
           "gain_spread": 0.3, "grammatical": 0.9}
    table = format_table([{**row, "beta": None}, {**row, "beta": 0.1}])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2].split("|")[0].strip() == "ref" and lines[3].split("|")[0].strip() == "0.1"
    assert "0.500 ± 0.050" in lines[3] and "1.25 ± 0.10" in lines[3] and "+0.250 (+0.30 sd)" in lines[3]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "demo"
    return out, run_demo(out, quick=True, seed=0)


def test_quick_demo_raises_the_reward(quick_demo):
    out, results = quick_demo

    betas = results["settings"]["betas"]
    assert [r["beta"] for r in results["rows"]] == betas == [0.1, 10.0]
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == len(betas)
    assert (out / "reward_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # pairs.jsonl: valid records, chosen strictly better under the known reward
    lines = (out / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == results["pairs"] > 100
    for line in lines:
        rec = PreferenceRecord(**json.loads(line))
        assert rec.ranks == [0.0, 1.0]
        assert reward(rec.responses[0]) > reward(rec.responses[1])

    # the same samples in every shape the README trains on, in the layouts users write; held-out pairs
    def rows(name):
        return [json.loads(x) for x in (out / name).read_text().splitlines()]

    lists, multi, feedback = rows("lists.jsonl"), rows("multi.jsonl"), rows("feedback.jsonl")
    assert len(lists) == len(multi) == QUICK.n_train_prompts  # every prompt, ties included (scores, not ranks)
    assert all(r["scores"] == [reward(c) for c in r["completions"]] for r in lists)
    assert all(r["scores"] == [[reward(c), brevity(c)] for c in r["completions"]] for r in multi)
    assert all(set(r) == {"prompt", "completion", "label"} and r["label"] == (reward(r["completion"]) > 0)
               for r in feedback)  # fmt: skip
    assert rows("negatives.jsonl") == [r for r in feedback if not r["label"]]
    held = rows("eval/heldout_pairs.jsonl")
    assert 100 < len(held) <= 128 and all(reward(r["responses"][0]) > reward(r["responses"][1]) for r in held)

    ref = results["reference_row"]
    smallest = min(results["rows"], key=lambda r: r["beta"])
    # DPO at the smallest beta beats the reference by more than both confidence intervals together
    assert smallest["reward"] - ref["reward"] > smallest["reward_ci"] + ref["reward_ci"]
    assert smallest["gain"] == pytest.approx(smallest["reward"] - ref["reward"])
    for r in results["rows"]:
        assert r["k3"] >= 0 and r["k1_ci"] > 0
    # less regularisation, further from the reference
    assert smallest["k1"] > max(results["rows"], key=lambda r: r["beta"])["k1"]

    # the pretrained world is reused, not rebuilt, when the settings match
    s = QUICK
    again = reviews.build_world(out / "world", seed=0, n_corpus=s.n_corpus, pretrain_epochs=s.pretrain_epochs,
                                hidden_size=s.hidden_size)
    assert again == Path(results["reference"])


@pytest.mark.slow
def test_full_demo_reward_kl_trade_off(tmp_path):
    results = run_demo(tmp_path / "demo", seed=0)
    rows = sorted(results["rows"], key=lambda r: r["beta"])
    ref = results["reference_row"]
    assert len(rows) == 5
    assert all(r["gain_spread"] > 0.4 for r in rows)  # every beta raises the reward clearly ...
    assert all(r["gain_spread"] > 0.9 for r in rows if r["beta"] <= 1)  # ... and beta <= 1 by ~ a ref std
    assert rows[0]["k1"] > rows[-1]["k1"]  # smallest beta drifts furthest
    assert rows[-1]["grammatical"] > rows[0]["grammatical"] - 0.01
    assert ref["grammatical"] > 0.9
    assert results["seconds"]["total"] < 300


@pytest.mark.slow
def test_reward_model_chain_raises_the_gold_reward(quick_demo, tmp_path):
    """README chain: RM from the demo's pairs -> generate -> score -> pairs -> DPO; gold reward rises."""
    from alignkit import cli
    from alignkit.demo import evaluate_checkpoints

    out, results = quick_demo
    ref, runs = results["reference"], tmp_path
    assert cli.main(["train", "objective=bt", f"model={ref}", f"data={out / 'pairs.jsonl'}", f"output_dir={runs / 'rm'}",
                     "batch_size=32", "lr=1e-3", "epochs=5", "progress=false"]) == 0
    assert cli.main(["generate", "--model", ref, "--prompts", str(out / "train_prompts.txt"), "--k", "4",
                     "--max-new-tokens", "48", "--out", str(runs / "samples.jsonl")]) == 0
    assert cli.main(["score", "--reward-model", str(runs / "rm" / "final"), "--data", str(runs / "samples.jsonl"),
                     "--out", str(runs / "scored.jsonl")]) == 0
    assert cli.main(["train", "objective=dpo", f"model={ref}", f"data={runs / 'scored.jsonl'}",
                     "transforms=[{name: pairs, strategy: best_vs_worst}]", f"output_dir={runs / 'dpo'}",
                     "batch_size=32", "epochs=5", "lr=1e-3", "beta=0.1", "progress=false"]) == 0
    rows = evaluate_checkpoints([str(runs / "dpo" / "final")], out_dir=out, quick=True)
    assert rows[1]["reward"] - rows[0]["reward"] > rows[1]["reward_ci"] + rows[0]["reward_ci"]
