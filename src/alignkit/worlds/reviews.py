"""A toy language of short movie reviews whose reward is known exactly.

Reviews come from a small seeded grammar::

    review  := "Review:" clause (connective clause){0,2} end [" Overall, it was " adj "."]
    clause  := " The" | " the" subject verb [intensifier] adjective
    adj     := a POSITIVE word or a NEGATIVE word

for example ``Review: The acting was truly brilliant, but the plot felt dull.`` There is no negation,
so a word's sentiment never flips.

Each review draws a hidden *mood* (positive or negative, 50/50) and every adjective agrees with it
with probability ``coherence`` (0.8 by default). A model pretrained on this corpus therefore writes
a mix of glowing, scathing and mixed reviews, and its first adjective largely decides the rest —
preference learning has plenty of room to raise the reward, and a clear direction to do it in.

The reward (`reward`) is a sentiment lexicon score: with ``P`` positive and ``N`` negative lexicon
words in the text (whole words, case-insensitive), ``reward = (P − N) / (P + N)``, and 0 when the
text has none. It lies in [−1, 1]: 1 for an all-positive review, −1 for an all-negative one.
Prompts (`prompts`) are review openings such as ``Review: The acting was`` and never contain a
lexicon word, so the reward of ``prompt + completion`` equals that of the completion.

`build_world` trains a byte-level BPE tokenizer on the corpus, builds a tiny Qwen2-style model
with `alignkit.models.tiny.build_tiny`, and pretrains it with the alignkit trainer (``objective=sft``
on records ``{"prompt": "Review:", "responses": [" The acting was ..."], "ranks": [0]}``).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from alignkit.worlds.common import PretrainSettings, pretrained_world

log = logging.getLogger("alignkit")

PREFIX = "Review:"
SUBJECTS = ("acting", "plot", "story", "music", "dialogue", "ending", "cast", "script", "soundtrack",
            "pacing", "villain", "humor")
VERBS = ("was", "felt", "seemed", "is")
INTENSIFIERS = ("very", "really", "truly", "quite", "so", "rather")
POSITIVE = ("brilliant", "wonderful", "great", "superb", "charming", "moving", "delightful", "clever",
            "gripping", "beautiful", "fresh", "fun")
NEGATIVE = ("awful", "boring", "dull", "terrible", "clumsy", "bland", "tedious", "messy", "weak",
            "forgettable", "stale", "silly")
CONNECTIVES = (" and", " but", ", and", ", but", ", while", ";")
ENDINGS = (".", "!")
CLAUSE_WEIGHTS = (0.3, 0.45, 0.25)  # probability of 1, 2 or 3 clauses

_POS, _NEG = frozenset(POSITIVE), frozenset(NEGATIVE)
_WORD = re.compile(r"[a-z]+")


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(w) for w in words) + ")"


_ADJ = _alt(POSITIVE + NEGATIVE)
_CLAUSE = rf"the {_alt(SUBJECTS)} {_alt(VERBS)}(?: {_alt(INTENSIFIERS)})? {_ADJ}"
_GRAMMAR = re.compile(
    rf"{re.escape(PREFIX)} T{_CLAUSE[1:]}(?:{_alt(CONNECTIVES)} {_CLAUSE}){{0,2}}[.!](?: Overall, it was {_ADJ}\.)?"
)


def is_grammatical(text: str) -> bool:
    """Whether ``text`` (a full review, prompt + completion) is a sentence the grammar can produce."""
    return _GRAMMAR.fullmatch(text) is not None


def sentiment_counts(text: str) -> tuple[int, int]:
    """(P, N): how many whole words of ``text`` are in the positive / negative lexicon."""
    words = _WORD.findall(text.lower())
    return sum(w in _POS for w in words), sum(w in _NEG for w in words)


def reward(text: str) -> float:
    """The known reward: ``(P − N) / (P + N)`` over lexicon words, 0.0 when there are none; in [−1, 1].

    ``reward("The plot was superb and the cast was dull.") == 0.0``;
    ``reward("The plot was superb, but the ending was great!") == 1.0``;
    ``reward("great, dull, boring") == -1/3``.
    """
    p, n = sentiment_counts(text)
    return (p - n) / (p + n) if p + n else 0.0


def brevity(text: str) -> float:
    """A second, competing objective: ``1 − min(1, words / 24)`` — shorter reviews score higher; in [0, 1]."""
    return 1.0 - min(1.0, len(text.split()) / 24)


def reward_vector(text: str) -> list[float]:
    """``[reward, brevity]``: sentiment and conciseness, for multi-objective data."""
    return [reward(text), brevity(text)]


SHAPES = ("scored", "ranked", "pairs", "unpaired", "vector")


def labelled_records(prompts: list[str], completions: list[list[str]], shape: str = "scored") -> tuple[list[dict], int]:
    """Records (``PreferenceRecord.to_dict`` form) of sampled completions labelled with the known reward.

    ``shape``: ``scored`` (K responses, scores = reward), ``ranked`` (K responses, ranks by reward, ties
    share a rank), ``pairs`` (best vs worst, K = 2), ``unpaired`` (one record per completion, desirable
    when reward > 0, undesirable when < 0), ``vector`` (scores = ``reward_vector``). Returns the records
    and how many prompts or completions were dropped: all-tied prompts for ranked/pairs (their order is
    undefined), reward-0 completions for unpaired.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    out, dropped = [], 0
    for prompt, texts in zip(prompts, completions):
        texts = [t for t in texts if t.strip()]
        rewards = [reward(t) for t in texts]
        if shape == "unpaired":
            for t, r in zip(texts, rewards):
                if r == 0:
                    dropped += 1
                    continue
                out.append({"prompt": prompt, "responses": [t], "labels": [r > 0]})
            continue
        if len(texts) < 2 or (shape != "vector" and shape != "scored" and len(set(rewards)) == 1):
            dropped += 1
            continue
        if shape == "scored":
            out.append({"prompt": prompt, "responses": texts, "scores": rewards})
        elif shape == "vector":
            out.append({"prompt": prompt, "responses": texts, "scores": [reward_vector(t) for t in texts]})
        elif shape == "ranked":
            levels = sorted(set(rewards), reverse=True)
            out.append({"prompt": prompt, "responses": texts, "ranks": [levels.index(r) for r in rewards]})
        else:
            best = max(range(len(texts)), key=rewards.__getitem__)
            worst = min(range(len(texts)), key=rewards.__getitem__)
            out.append({"prompt": prompt, "responses": [texts[best], texts[worst]], "ranks": [0, 1]})
    return out, dropped


def review(rng: random.Random, coherence: float) -> str:
    """One full review from the grammar, drawn with ``rng`` (module docstring)."""
    mood = rng.random() < 0.5
    n_clauses = rng.choices((1, 2, 3), weights=CLAUSE_WEIGHTS)[0]
    parts = []
    for i in range(n_clauses):
        positive = mood if rng.random() < coherence else not mood
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        intens = rng.choice(INTENSIFIERS) + " " if rng.random() < 0.3 else ""
        lead = " The" if i == 0 else rng.choice(CONNECTIVES) + " the"
        parts.append(f"{lead} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {intens}{adjective}")
    text = PREFIX + "".join(parts) + rng.choice(ENDINGS)
    if rng.random() < 0.25:
        positive = mood if rng.random() < coherence else not mood
        text += f" Overall, it was {rng.choice(POSITIVE if positive else NEGATIVE)}."
    return text


def corpus(n: int, seed: int = 0, coherence: float = 0.8) -> list[str]:
    """``n`` full reviews (each starting with ``"Review:"``) for pretraining; deterministic in ``seed``."""
    rng = random.Random(seed)
    return [review(rng, coherence) for _ in range(n)]


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` review openings, ``"Review: The <subject> <verb>"``, a third of them with an intensifier.

    None contains a lexicon word. There are 12 x 4 x 7 = 336 distinct openings; draws with another
    seed play the role of held-out prompts.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        intens = " " + rng.choice(INTENSIFIERS) if rng.random() < 1 / 3 else ""
        out.append(f"{PREFIX} The {rng.choice(SUBJECTS)} {rng.choice(VERBS)}{intens}")
    return out


def sft_records(lines: list[str]) -> list[dict]:
    """Pretraining records: prompt ``"Review:"``, the rest of the review as the one (K = 1) response."""
    out = []
    for line in lines:
        if not line.startswith(PREFIX):
            raise ValueError(f"a review must start with {PREFIX!r}: {line!r}")
        out.append({"prompt": PREFIX, "responses": [line[len(PREFIX):]], "ranks": [0]})
    return out


@dataclass
class WorldConfig(PretrainSettings):
    """Sizes of the world: corpus, tokenizer, model and pretraining run (defaults: ~1 minute on one core)."""

    n_corpus: int = 6000
    coherence: float = 0.8
    vocab_size: int = 512  # the BPE merges run out at ~460: every word of the grammar is one token


def build_world(out_dir: str | Path, seed: int = 0, config: WorldConfig | None = None, reuse: bool = True,
                **overrides) -> Path:
    """Build the tokenizer + tiny model and pretrain it on the review corpus; return the checkpoint folder.

    ``out_dir/base`` holds the untrained model, ``out_dir/pretrain`` the trainer's run (its ``final``
    folder is the checkpoint: model + tokenizer, loadable with `alignkit.models.load`), and
    ``out_dir/world.json`` the settings and the checkpoint's path relative to ``out_dir``. With
    ``reuse=True`` a world already built there with the same settings is returned without retraining.
    ``seed`` is used when no ``config`` is given; ``overrides`` replace `WorldConfig` fields.
    """
    config = config or WorldConfig(seed=seed)
    unknown = sorted(set(overrides) - set(asdict(config)))
    if unknown:
        raise TypeError(f"build_world got unknown setting(s) {unknown}; WorldConfig has {list(asdict(config))}")
    config = replace(config, **overrides)
    settings = {k: v for k, v in asdict(config).items() if k != "progress"}
    lines = corpus(config.n_corpus, seed=config.seed, coherence=config.coherence)
    return pretrained_world(out_dir, settings, lines, sft_records(lines), reuse=reuse, progress=config.progress)
