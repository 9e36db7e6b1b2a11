"""The review world: exact rewards, grammar, determinism, pretraining records."""

import pytest

from alignkit.worlds import reviews
from alignkit.worlds.reviews import is_grammatical, reward, sentiment_counts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Review: The plot was superb, but the ending was great!", 1.0),  # P=2, N=0
        ("Review: The cast seemed dull.", -1.0),  # P=0, N=1
        ("Review: The plot was superb and the cast was dull.", 0.0),  # P=1, N=1
        ("great, dull, boring", -1 / 3),  # (1 - 2) / 3
        ("Brilliant! BRILLIANT. clumsy", 1 / 3),  # case-insensitive: (2 - 1) / 3
        ("Review: The acting was", 0.0),  # no lexicon word
        ("funny greatness dullard", 0.0),  # whole words only
        ("", 0.0),
    ],
)
def test_reward_exact(text, expected):
    assert reward(text) == pytest.approx(expected, abs=1e-12)


def test_sentiment_counts():
    assert sentiment_counts("The music felt very moving; the pacing was tedious, Overall, it was fun.") == (2, 1)


def test_lexicons_are_disjoint_from_the_rest_of_the_grammar():
    lexicon = set(reviews.POSITIVE) | set(reviews.NEGATIVE)
    assert not set(reviews.POSITIVE) & set(reviews.NEGATIVE)
    other = set(reviews.SUBJECTS) | set(reviews.VERBS) | set(reviews.INTENSIFIERS) | {"review", "the", "overall", "it"}
    assert not lexicon & other


def test_corpus_and_prompts_are_deterministic_in_the_seed():
    assert reviews.corpus(50, seed=3) == reviews.corpus(50, seed=3)
    assert reviews.corpus(50, seed=3) != reviews.corpus(50, seed=4)
    assert reviews.prompts(50, seed=3) == reviews.prompts(50, seed=3)
    assert reviews.prompts(50, seed=3) != reviews.prompts(50, seed=4)


def test_corpus_is_grammatical_and_has_a_mix_of_sentiments():
    lines = reviews.corpus(4000, seed=0)
    assert all(line.startswith("Review: The ") and is_grammatical(line) for line in lines)
    rewards = [reward(line) for line in lines]
    mean = sum(rewards) / len(rewards)
    assert abs(mean) < 0.05  # moods are 50/50
    share_pos = sum(r == 1.0 for r in rewards) / len(rewards)
    share_neg = sum(r == -1.0 for r in rewards) / len(rewards)
    share_mixed = sum(-1.0 < r < 1.0 for r in rewards) / len(rewards)
    # one clause (30%) is pure; more clauses are pure with probability 0.8^n + 0.2^n per mood
    assert 0.3 < share_pos < 0.42 and 0.3 < share_neg < 0.42 and 0.2 < share_mixed < 0.35


def test_prompts_have_no_sentiment_and_open_grammatical_reviews():
    ps = reviews.prompts(500, seed=1)
    assert all(sentiment_counts(p) == (0, 0) for p in ps)
    assert all(is_grammatical(p + " great.") for p in ps)
    assert len(set(ps)) > 150  # 336 possible openings


def test_is_grammatical_rejects_broken_reviews():
    assert is_grammatical("Review: The plot was great.")
    assert is_grammatical("Review: The plot was very great, but the cast felt dull! Overall, it was fun.")
    assert not is_grammatical("Review: The plot was great")  # no end
    assert not is_grammatical("Review: The plot was great great.")
    assert not is_grammatical("Review: The plot was.")
    assert not is_grammatical("Review: The plot was great and the cast was dull and the music was fun and the end was bad.")


def test_sft_records():
    recs = reviews.sft_records(["Review: The plot was great."])
    assert recs == [{"prompt": "Review:", "responses": [" The plot was great."], "ranks": [0]}]
    with pytest.raises(ValueError, match="must start with"):
        reviews.sft_records(["The plot was great."])


def test_build_world_rejects_unknown_settings(tmp_path):
    with pytest.raises(TypeError, match="hidden_sise"):
        reviews.build_world(tmp_path, hidden_sise=64)
