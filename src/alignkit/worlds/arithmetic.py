"""A verifiable-reward world: one-digit additions, answered right only part of the time.

Problems are ``"Q: 3+4= A:"`` (operands 0..4 by default: 25 problems); an answer is a completion like ``" 7."``. The pretraining corpus
(`corpus`) answers each problem correctly with probability ``p_correct`` (0.4 by default) and
otherwise with a wrong sum nearby, so the pretrained model (`build_world`) samples the right answer
about ``p_correct`` of the time: it *knows* the answer but does not prefer it. A rule reward
(`reward`: 1 for the exact answer, else 0, read from the first number of the completion) lets RL
(GRPO, RLOO, ...) sharpen it; held-out accuracy is measured on problems sampled with another seed
(every problem appears in pretraining — what RL changes is which answer the model prefers).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from alignkit.worlds.common import PretrainSettings, pretrained_world

_NUMBER = re.compile(r"-?\d+")


MAX_OPERAND = 4  # operands 0..4: 25 problems, answers 0..8


def problem(rng: random.Random, max_operand: int = MAX_OPERAND) -> tuple[str, int]:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return f"Q: {a}+{b}= A:", a + b


def problems(n: int, seed: int = 0, max_operand: int = MAX_OPERAND) -> tuple[list[str], list[int]]:
    """``n`` prompts and their answers; deterministic in ``seed``."""
    rng = random.Random(seed)
    pairs = [problem(rng, max_operand) for _ in range(n)]
    return [p for p, _ in pairs], [a for _, a in pairs]


def extract_answer(completion: str) -> int | None:
    """The first integer in the completion, or None."""
    m = _NUMBER.search(completion)
    return int(m.group()) if m else None


def reward(completion: str, answer: int) -> float:
    """1.0 when the completion's first number is the answer, else 0.0."""
    return 1.0 if extract_answer(completion) == int(answer) else 0.0


def corpus(n: int, seed: int = 0, p_correct: float = 0.4, max_operand: int = MAX_OPERAND) -> list[str]:
    """Full lines ``"Q: a+b= A: c."`` with c right with probability ``p_correct``, else off by 1-3."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, answer = problem(rng, max_operand)
        if rng.random() >= p_correct:
            answer = max(0, answer + rng.choice([-3, -2, -1, 1, 2, 3]))
            if answer == sum(int(x) for x in prompt[3:6].split("+")):
                answer += 4
        out.append(f"{prompt} {answer}.")
    return out


@dataclass
class ArithmeticConfig(PretrainSettings):
    """Sizes of the arithmetic world (defaults: ~1 minute on one core)."""

    n_corpus: int = 4000
    p_correct: float = 0.4
    max_operand: int = MAX_OPERAND
    vocab_size: int = 256
    hidden_size: int = 64


def build_world(out_dir: str | Path, config: ArithmeticConfig | None = None, reuse: bool = True,
                **overrides) -> Path:
    """Tokenizer + tiny model pretrained on the noisy corpus; returns the checkpoint folder."""
    config = replace(config or ArithmeticConfig(), **overrides)
    lines = corpus(config.n_corpus, seed=config.seed, p_correct=config.p_correct, max_operand=config.max_operand)
    records = [{"prompt": line[: line.index("A:") + 2], "responses": [line[line.index("A:") + 2:]], "ranks": [0]}
               for line in lines]
    settings = {"world": "arithmetic", **{k: v for k, v in asdict(config).items() if k != "progress"}}
    return pretrained_world(out_dir, settings, lines, records, reuse=reuse, max_length=32, progress=config.progress)
