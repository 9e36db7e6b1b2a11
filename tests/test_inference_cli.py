"""``alignkit generate --method NAME``: in-process CLI runs on the review world (gold reward known)."""

import json
import math

import pytest

from alignkit import cli
from alignkit.inference.bon import bon_kl, bon_kl_bound
from alignkit.worlds import reviews

REWARD = "alignkit.worlds.reviews:reward"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(reviews.prompts(6, seed=21)) + "\n")
    return str(path)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_generate_bon_writes_rows_and_a_summary(review_world, prompts_file, tmp_path, capsys):
    out = tmp_path / "bon.jsonl"
    rc = cli.main(["generate", "--model", review_world, "--prompts", prompts_file, "--method", "bon", "--n", "4",
                   "--reward", REWARD, "--max-new-tokens", "24", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert [r["prompt"] for r in rows] == reviews.prompts(6, seed=21)
    for r in rows:
        assert len(r["candidates"]) == 4 and r["rewards"] == [reviews.reward(c) for c in r["candidates"]]
        assert r["reward"] == max(r["rewards"]) and r["completion"] == r["candidates"][r["rewards"].index(r["reward"])]
        assert r["kl"] == pytest.approx(bon_kl(r["rewards"])) and r["kl"] <= bon_kl_bound(4)
        assert r["calls"] >= 1 + 4 and r["tokens"] > 0
    mean = sum(r["reward"] for r in rows) / len(rows)
    captured = capsys.readouterr()
    assert f"bon: 6 prompts, mean reward {mean:.4f}, calls/prompt" in captured.out + captured.err


def test_generate_method_options_from_set(review_world, prompts_file, tmp_path):
    out = tmp_path / "soft.jsonl"
    rc = cli.main(["generate", "--model", review_world, "--prompts", prompts_file, "--method", "soft_bon",
                   "--set", "n=3", "tau=1e9", "--reward", REWARD, "--max-new-tokens", "16", "--out", str(out)])
    assert rc == 0
    for r in _rows(out):
        assert r["probs"] == pytest.approx([1 / 3] * 3) and len(r["candidates"]) == 3
        assert r["kl"] == pytest.approx(0.0, abs=1e-8) and math.isfinite(r["reward"])


def test_generate_without_method_keeps_the_sampling_format(review_world, prompts_file, tmp_path):
    out = tmp_path / "plain.jsonl"
    assert cli.main(["generate", "--model", review_world, "--prompts", prompts_file, "--k", "2",
                     "--max-new-tokens", "12", "--out", str(out)]) == 0
    for r in _rows(out):
        assert set(r) == {"prompt", "completions", "ranks", "meta"}
        assert r["ranks"] == [0] * len(r["completions"]) and len(r["meta"]["finished"]) == len(r["completions"])


@pytest.mark.parametrize("extra,message", [
    (["--method", "bestofn", "--reward", REWARD], "unknown inference method 'bestofn'; known: "),
    (["--method", "bon", "--reward", REWARD, "--set", "nn=4"], "unknown key 'nn'. Did you mean 'n'?"),
    (["--method", "bon"], "--method bon needs --reward SPEC"),
    (["--method", "rejection", "--reward", REWARD, "--n", "4"], "--n: method rejection has no option n"),
    (["--method", "bon", "--reward", REWARD, "--k", "4"], "--k is for plain sampling"),
    (["--method", "bon", "--reward", REWARD, "--stop", "!"], "--stop is for plain sampling"),
    (["--reward", REWARD], "go with --method NAME"),
])
def test_generate_bad_flags_are_named(tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Review: The plot was\n")
    rc = cli.main(["generate", "--model", str(tmp_path / "no_model"), "--prompts", str(prompts),
                   "--out", str(tmp_path / "o.jsonl"), *extra])
    assert rc == 2 and message in capsys.readouterr().err


def test_generate_nudging_accepts_gamma_above_one(review_world, prompts_file, tmp_path):
    """`--set gamma=1.5` (the helper supplies every token) is a method option, not PPO's discount in [0, 1]."""
    out = tmp_path / "nudge.jsonl"
    rc = cli.main(["generate", "--model", review_world, "--prompts", prompts_file, "--method", "nudging",
                   "--helper", review_world, "--set", "gamma=1.5", "--temperature", "0", "--max-new-tokens", "8",
                   "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 6 and all(r["nudged"] == 1.0 and r["kl"] is None for r in rows)
