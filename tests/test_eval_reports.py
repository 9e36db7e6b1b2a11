"""`alignkit eval` / `alignkit report` end to end: outputs files, models, judges, and self-contained reports."""

import base64
import json
import re

import pytest

from alignkit.cli import main
from alignkit.eval.evaluate import evaluate, pareto
from alignkit.eval.training_metrics import generation_metrics
from alignkit.rewards.judges import Judge

RULE = "rule:alignkit.worlds.reviews:reward"
PROMPTS = [f"Review: The {s} was" for s in ("plot", "cast", "music", "ending", "acting", "script")]


def write_outputs(path, answers, subsets=True, reverse=False):
    rows = [{"prompt": p, "completions": a, **({"subset": "A" if i % 2 else "B"} if subsets else {})}
            for i, (p, a) in enumerate(zip(PROMPTS, answers))]
    path.write_text("".join(json.dumps(r) + "\n" for r in (rows[::-1] if reverse else rows)))
    return str(path)


@pytest.fixture
def outputs(tmp_path):
    good = write_outputs(tmp_path / "good.jsonl", [[" great!", " superb."]] * 6)
    bad = write_outputs(tmp_path / "bad.jsonl", [[" dull.", " boring."]] * 6, reverse=True)  # another order
    mixed = write_outputs(tmp_path / "mixed.jsonl", [[" great!", " dull and boring and bland."]] * 6)
    return good, bad, mixed


def assert_self_contained(html: str, n_images: int):
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == n_images and len(re.findall(r"<img ", html)) == n_images
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


def test_eval_of_outputs_files_with_a_rule_judge(outputs, tmp_path):
    good, bad, mixed = outputs
    res = evaluate([good, bad, mixed], judge=RULE, baseline="bad", out_dir=tmp_path / "ev", n_boot=200,
                   rating_boot=50)
    wins = {w["name"]: w["win_rate"] for w in res["win_rates"]}
    assert set(wins) == {"good", "mixed"} and res["baseline"] == "bad"
    assert wins["good"]["win_rate"] == 1.0 and wins["good"]["n"] == 12  # aligned by prompt despite the order
    # mixed: first answers (+1) beat, second answers (−1) tie with bad's −1
    assert wins["mixed"]["win_rate"] == 0.75 and wins["mixed"]["ties"] == 6
    assert wins["mixed"]["subsets"]["A"]["win_rate"] == 0.75 and wins["mixed"]["subsets"]["B"]["n"] == 6
    assert wins["good"]["clusters"] == 6
    t = res["tournament"]
    assert t["format"] == "round-robin" and t["matches"] == 3 and t["comparisons"] == 36
    assert [r["system"] for r in t["ratings"]["leaderboard"]] == ["good", "mixed", "bad"]
    assert res["frontier"] is None and res["judge"]["calls"] == 36 and res["length_unit"] == "characters"
    reward = {s["name"]: s["reward"]["mean"] for s in res["systems"]}
    assert reward == {"good": 1.0, "bad": -1.0, "mixed": 0.0}
    out = tmp_path / "ev"
    saved = json.loads((out / "results.json").read_text())  # strict JSON (no NaN)
    assert saved["win_rates"][0]["win_rate"]["win_rate"] == 1.0
    html = (out / "report.html").read_text()
    assert_self_contained(html, n_images=4)  # win rates, leaderboard, scores, lengths
    assert "Win rates over bad" in html and "Per subset" in html
    again = evaluate([str(out / "outputs" / "good.jsonl"), bad], judge=RULE, baseline="bad", n_boot=50)
    assert again["win_rates"][0]["win_rate"]["win_rate"] == 1.0  # written outputs read back as a system


class AlwaysFirst(Judge):
    """A simulated pairwise judge that always prefers the answer shown first."""

    pointwise = False

    def prefer_first(self, prompts, firsts, seconds):
        self.calls += len(prompts)
        return [0.9] * len(prompts)


def test_eval_with_a_position_biased_pairwise_judge(outputs, tmp_path):
    good, bad, _ = outputs
    res = evaluate([good, bad], judge=AlwaysFirst(), baseline="bad", n_boot=50, out_dir=tmp_path / "ev")
    assert res["position_bias"]["consistency"] == 0.0
    assert res["position_bias"]["first_position_win_rate"] == 1.0
    assert res["win_rates"][0]["win_rate"]["win_rate"] == 0.5  # corrected by order averaging
    assert res["judge"] == {"name": "judge", "kind": "pairwise", "calls": 24, "portia": False}
    assert "Position bias" in (tmp_path / "ev" / "report.html").read_text()


def test_eval_of_a_model_against_itself_has_zero_kl_and_ties(tiny_path, pairs_path, tmp_path):
    res = evaluate([tiny_path], names=["policy"], reference=tiny_path, prompts=PROMPTS[:4], judge=RULE, samples=2,
                   max_new_tokens=8, preferences=pairs_path, n_boot=50, out_dir=tmp_path / "ev")
    by_name = {s["name"]: s for s in res["systems"]}
    assert set(by_name) == {"reference", "policy"}
    kl = by_name["policy"]["kl"]
    assert kl["k1"] == 0.0 and kl["k3"] == 0.0 and kl["n"] == 8  # same weights: every log-ratio is exactly 0
    wr = res["win_rates"][0]["win_rate"]
    assert wr["win_rate"] == 0.5 and wr["ties"] == 8  # the same seed gives the same samples: all ties
    assert by_name["policy"]["preference_accuracy"]["implicit_reward"]["accuracy"] == 0.5
    assert by_name["reference"]["preference_accuracy"]["implicit_reward"] is None
    assert [r["name"] for r in res["frontier"]] == ["reference", "policy"] and res["length_unit"] == "tokens"
    html = (tmp_path / "ev" / "report.html").read_text()
    assert_self_contained(html, n_images=4)  # win rates, frontier, scores, lengths (two systems: no tournament)
    assert "Reward–KL frontier" in html and "Preference and ranking accuracy" in html
    assert (tmp_path / "ev" / "frontier.png").is_file()


def test_generation_metrics_for_training(tiny):
    model, tok = tiny
    m = generation_metrics(model, model, tok, PROMPTS[:3], RULE, samples=2, seed=0, max_new_tokens=6)
    assert m["kl_k1"] == 0.0 and m["kl_k3"] == 0.0
    assert m["win_rate"] == 0.5 and m["reward"] == m["ref_reward"]
    assert m["win_rate_low"] < 0.5 < m["win_rate_high"]
    assert set(m) >= {"reward", "reward_ci", "mean_tokens", "unfinished", "kl_k1_ci", "kl_k3_ci"}
    assert all(isinstance(v, float) for v in m.values())
    alone = generation_metrics(model, None, tok, PROMPTS[:3], None, samples=1, seed=0, max_new_tokens=4)
    assert set(alone) == {"mean_tokens", "unfinished"}


def test_pareto_front():
    assert pareto([(0.0, 0.1), (1.0, 0.9), (0.5, 0.8), (1.2, 0.85), (0.6, 0.8)]) == [True, True, True, False, False]


def write_run(path, beta, loss0):
    path.mkdir()
    (path / "config.yaml").write_text(f"objective: dpo\nbeta: {beta}\nmodel: m\n")
    lines = [{"step": s, "epoch": 0, "loss": loss0 / s, "rewards/margin": 0.1 * s, "rewards/accuracy": 0.5 + 0.05 * s,
              "lr": 1e-3, "grad_norm": 1.0, "tokens_per_second": 100.0} for s in range(1, 6)]
    lines.insert(3, {"eval/loss": 0.5, "eval/rewards/accuracy": 0.8, "step": 3})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_report_of_training_runs(tmp_path, capsys):
    a, b = write_run(tmp_path / "dpo_a", 0.1, 1.0), write_run(tmp_path / "dpo_b", 1.0, 2.0)
    assert main(["report", a, b, "--out", str(tmp_path / "rep")]) == 0
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert res["keys"] == ["loss", "rewards/margin", "rewards/accuracy", "eval/loss", "eval/rewards/accuracy", "lr",
                           "grad_norm"]
    run = res["runs"][1]
    assert (run["name"], run["objective"], run["beta"], run["steps"]) == ("dpo_b", "dpo", 1.0, 5)
    assert run["last"]["loss"] == pytest.approx(0.4) and run["last"]["eval/loss"] == 0.5
    assert res["series"]["dpo_a"]["eval/loss"] == [[3, 0.5]]
    assert_self_contained((tmp_path / "rep" / "report.html").read_text(), n_images=3)
    assert "dpo_b: 5 steps, last loss=0.4" in capsys.readouterr().out


def test_eval_cli(outputs, tmp_path, capsys):
    good, bad, _ = outputs
    out = tmp_path / "cli"
    assert main(["eval", "--models", good, bad, "--names", "G", "B", "--baseline", "B", "--judge", RULE,
                 "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"G\s+\|\s+1\.000 ± 0\.000\s+\|.*1\.000 \[0\.", printed)
    assert json.loads((out / "results.json").read_text())["command"].startswith("alignkit ")


def test_eval_cli_errors_name_what_to_fix(tiny_path, tmp_path, capsys):
    assert main(["eval", "--models", tiny_path, "--out", str(tmp_path / "x")]) == 2
    assert "give --prompts" in capsys.readouterr().err
    assert main(["eval", "--models", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a model folder nor an outputs file" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
