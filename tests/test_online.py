"""Online training: reward functions, exact sampled experience, the online loop for policy-gradient and
offline objectives, and exact resume (rollouts are seeded by step)."""

import json
import math

import pytest

from alignkit import cli
from alignkit.rollout import build_reward, extract_answer, penalize_unfinished, sample_experience


def test_rule_rewards_and_combinations():
    rows = [{"answer": 7}, {"answer": "12"}, {"answer": 3}]
    comps = [" 7.", " the sum is #### 12", " 4"]
    assert build_reward("rule:exact_answer")(["q"] * 3, comps, rows) == [1.0, 1.0, 0.0]
    assert extract_answer("x 3 then #### -2.5") == "-2.5" and extract_answer("none") is None
    assert extract_answer("so #### 1,000") == "1000"  # thousands separators
    assert build_reward(r"rule:regex:^ \d+\.$")(["q"] * 3, comps, rows) == [1.0, 0.0, 0.0]
    assert build_reward("rule:length:2")(["q"], ["a b c d"], [{}]) == [-1.0]
    combo = build_reward([{"reward": "rule:exact_answer", "weight": 2.0}, {"reward": r"rule:regex:\.$", "weight": 0.5}])
    assert combo(["q"] * 3, comps, rows) == [2.5, 2.0, 0.0]
    assert build_reward("alignkit.worlds.reviews:reward")(["q"], [" great"], [{}]) == [1.0]
    assert penalize_unfinished([1.0, 0.5], [True, False], -1.0) == [1.0, -1.0]
    with pytest.raises(ValueError, match="needs an 'answer' field"):
        build_reward("rule:exact_answer")(["q"], ["1"], [{}])
    with pytest.raises(ValueError, match="unknown rule"):
        build_reward("rule:nope")


def test_experience_holds_exactly_the_sampled_tokens(tiny):
    model, tok = tiny
    prompts = ["The movie was", "The plot was"]
    exp = sample_experience(model, tok, prompts, [{}, {}], lambda p, c, r: [float(len(x)) for x in c], k=3, seed=5,
                            max_new_tokens=5)
    from alignkit.generation import generate

    gen = generate(model, tok, prompts, k=3, max_new_tokens=5, seed=5)
    for b, tr in enumerate(exp.data.items):
        for j in range(3):
            eos = [tok.eos_token_id] if gen.finished[b][j] else []
            assert tr.completion_ids(j) == (gen.token_ids[b][j] + eos or [tok.eos_token_id])
    assert exp.rewards.shape == (2, 3)
    assert exp.rewards[0].tolist() == [float(len(t)) for t in gen.texts[0]]
    assert exp.data.records[1].scores == exp.rewards[1].tolist()


def prompts_file(tmp_path, n=24):
    path = tmp_path / "prompts.jsonl"
    subjects = ["The movie was", "The film was", "The plot was", "The cast was"]
    path.write_text("".join(json.dumps({"prompt": f"{subjects[i % 4]} number {i}", "answer": i}) + "\n"
                            for i in range(n)))
    return str(path)


def run(tiny_path, prompts, out, *items):
    argv = ["train", f"model={tiny_path}", f"prompts={prompts}", f"output_dir={out}", "progress=false",
            "batch_size=4", "num_samples=4", "max_new_tokens=4", "lr=1e-3", "reward=alignkit.worlds.reviews:reward",
            *items]
    assert cli.main(argv) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["grpo", "rloo", "remax", "reinforce_pp"])
def test_policy_gradient_objectives_run_online(tiny_path, tmp_path, objective):
    rows = run(tiny_path, prompts_file(tmp_path), tmp_path / objective, f"objective={objective}", "max_steps=2",
               "log_samples_every=1")
    assert len([r for r in rows if "loss" in r]) == 2
    assert all(math.isfinite(r["loss"]) and "reward/mean" in r for r in rows if "loss" in r)
    for r in (r for r in rows if "loss" in r):  # the advantages' level is logged; ReMax's baseline too
        if objective == "remax":
            assert r["advantage/mean"] == pytest.approx(r["reward/mean"] - r["reward/greedy"], abs=1e-5)
        elif objective in ("grpo", "rloo"):  # group-centred, and not all zero
            assert r["advantage/mean"] == pytest.approx(0.0, abs=1e-5) and r["advantage/abs_mean"] > 0
    samples = [json.loads(x) for x in (tmp_path / objective / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and len(samples[0]["completions"]) == 4


def test_offline_objectives_train_on_fresh_samples(tiny_path, tmp_path):
    prompts = prompts_file(tmp_path)
    rows = run(tiny_path, prompts, tmp_path / "dpo", "objective=dpo", "num_samples=2", "max_steps=2")
    assert math.isfinite(rows[0]["loss"])
    rows = run(tiny_path, prompts, tmp_path / "raft", "objective=sft", "max_steps=2")  # RAFT: best-of-K SFT
    assert math.isfinite(rows[0]["loss"])
    # a pair objective needs K = 2 samples: refused before any model loads
    assert cli.main(["train", f"model={tiny_path}", f"prompts={prompts}", "objective=dpo", "num_samples=3",
                     "reward=alignkit.worlds.reviews:reward", f"output_dir={tmp_path / 'x'}"]) == 2


def test_online_resume_reproduces_the_uninterrupted_run(tiny_path, tmp_path):
    from alignkit.algorithms.online import OnlineTrainer
    from alignkit.config import TrainConfig

    def cfg(out, **kw):
        return TrainConfig(model=tiny_path, prompts=prompts_file(tmp_path), objective="grpo", max_steps=4,
                           updates_per_batch=2, batch_size=4, num_samples=4, max_new_tokens=4, lr=1e-3,
                           reward="alignkit.worlds.reviews:reward", output_dir=str(tmp_path / out), progress=False,
                           **kw)

    straight = OnlineTrainer(cfg("a")).train().history
    first = OnlineTrainer(cfg("b"))
    for _ in range(2):
        first.step()
    first.save()
    del first
    resumed = OnlineTrainer(cfg("b", resume_from="latest")).train().history
    keys = ("loss", "reward/mean", "grad_norm")
    assert [[h[k] for k in keys] for h in resumed] == [[h[k] for k in keys] for h in straight[2:]]


def test_eval_every_logs_generation_metrics(tiny_path, pairs_path, tmp_path):
    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("The movie was\nThe plot was\nThe cast was\n")
    argv = ["train", f"model={tiny_path}", f"data={pairs_path}", "objective=dpo", f"output_dir={tmp_path / 'r'}",
            "progress=false", "max_steps=2", "batch_size=4", "eval_every=2", f"eval_prompts={prompts}",
            "eval_judge=rule:alignkit.worlds.reviews:reward", "max_new_tokens=4"]
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for key in ("eval/gen/reward", "eval/gen/win_rate", "eval/gen/kl_k1", "eval/gen/kl_k3"):
        assert key in last and math.isfinite(last[key])
    assert 0.0 <= last["eval/gen/win_rate"] <= 1.0
