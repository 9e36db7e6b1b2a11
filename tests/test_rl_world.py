"""Online RL learns the verifiable arithmetic world: GRPO and RLOO raise held-out accuracy clearly."""

import json

import pytest

from alignkit.config import TrainConfig
from alignkit.training import train
from alignkit.worlds import arithmetic


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return str(arithmetic.build_world(tmp_path_factory.mktemp("arith") / "world"))


def test_world_rewards_and_corpus_noise():
    assert arithmetic.reward(" 7.", 7) == 1.0 and arithmetic.reward(" 17.", 7) == 0.0
    assert arithmetic.extract_answer(" no") is None
    lines = arithmetic.corpus(4000, seed=0, p_correct=0.4)
    def is_right(line: str) -> bool:
        a, b = line[3:line.index("=")].split("+")
        return int(a) + int(b) == int(line.split("A:")[1].strip(" ."))

    right = sum(map(is_right, lines))
    assert 0.37 < right / len(lines) < 0.43  # the noise level the world promises


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_policy_gradient_raises_held_out_accuracy(world, tmp_path, objective):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from rl_table import accuracy

    prompts, answers = arithmetic.problems(512, seed=11)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in zip(prompts, answers)))
    held_prompts, held_answers = arithmetic.problems(100, seed=99)
    before = accuracy(world, held_prompts, held_answers)["sampled"]
    result = train(TrainConfig(model=world, objective=objective, prompts=str(data), reward="rule:exact_answer",
                               num_samples=8, max_new_tokens=4, unfinished_penalty=0.0, batch_size=16,
                               max_steps=120, lr=1e-3, output_dir=str(tmp_path / objective), progress=False))
    after = accuracy(str(result.final_dir), held_prompts, held_answers)["sampled"]
    assert after > before + 0.2, (before, after)
