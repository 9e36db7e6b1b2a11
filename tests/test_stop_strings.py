"""Stop strings in `alignkit.generation.generate` and the rollout (`sample_experience`, `stop` config key,
``alignkit generate --stop``)."""

import json

import pytest

from alignkit.generation import generate

PROMPTS = ["Hello world", "The movie was really very", "I think the plot is"]
GEN = dict(k=4, max_new_tokens=12, seed=0)


def first_hit(tok, ids: list[int], stop: list[str]) -> int | None:
    """Reference: the fewest leading tokens whose decoded text contains a stop string."""
    for t in range(1, len(ids) + 1):
        if any(s in tok.decode(ids[:t], skip_special_tokens=True) for s in stop):
            return t
    return None


@pytest.fixture(scope="module")
def base(tiny):
    model, tok = tiny
    return generate(model, tok, PROMPTS, **GEN)


def check_against_base(tok, base, gen, stop: list[str]) -> set[int]:
    """Every sample is the base sample cut where a stop string completed, or the base sample unchanged.
    Returns the cut lengths seen."""
    cuts = set()
    for b in range(len(PROMPTS)):
        for j in range(GEN["k"]):
            ids, text = base.token_ids[b][j], base.texts[b][j]
            t = first_hit(tok, ids, stop)
            if t is None:
                assert gen.token_ids[b][j] == ids and gen.texts[b][j] == text
                assert gen.finished[b][j] == base.finished[b][j] and gen.stop_ids[b][j] == base.stop_ids[b][j]
                assert gen.stop_strings[b][j] is None
                continue
            cuts.add(t)
            start, hit = min((text.find(s), s) for s in stop if s in text)
            assert gen.token_ids[b][j] == ids[:t]  # the token that completed the stop string is kept
            assert gen.texts[b][j] == text[:start]  # the text stops before the stop string
            assert gen.finished[b][j] and gen.stop_ids[b][j] is None and gen.stop_strings[b][j] == hit
    return cuts


def test_batched_samples_are_cut_at_their_own_stop_and_others_unchanged(tiny, base):
    model, tok = tiny
    stop = [" number"]
    gen = generate(model, tok, PROMPTS, stop=stop, **GEN)
    cuts = check_against_base(tok, base, gen, stop)
    hit = sum(s is not None for row in gen.stop_strings for s in row)
    assert 2 <= hit < len(PROMPTS) * GEN["k"]  # some samples stop, others run on
    assert len(cuts) >= 2  # ... at different steps of the same batch


def test_stop_string_ending_inside_a_token(tiny, base):
    model, tok = tiny
    stop = ["umb"]  # completed by the token " number": the token is kept, the text ends with " n"
    gen = generate(model, tok, PROMPTS, stop=stop, **GEN)
    check_against_base(tok, base, gen, stop)
    cut = [(b, j) for b, row in enumerate(gen.stop_strings) for j, s in enumerate(row) if s == "umb"]
    assert cut
    for b, j in cut:
        assert gen.texts[b][j].endswith(" n") and "umb" not in gen.texts[b][j]
        assert tok.decode(gen.token_ids[b][j][-1:]).startswith(" numb")


def test_earliest_of_several_stop_strings_wins_across_prompt_batches(tiny):
    model, tok = tiny
    stop = [" number", "ing", "\n\n"]
    base = generate(model, tok, PROMPTS, batch_size=2, **GEN)  # two generate calls of different widths
    gen = generate(model, tok, PROMPTS, stop=stop, batch_size=2, **GEN)
    check_against_base(tok, base, gen, stop)
    assert {s for row in gen.stop_strings for s in row} >= {" number", "ing"}


def test_greedy_with_stop_repeats_the_cut_sample(tiny):
    model, tok = tiny
    plain = generate(model, tok, PROMPTS, k=1, max_new_tokens=10, temperature=0)
    text = plain.texts[0][0]
    stop = [text[3:5]]  # a string the greedy sample of prompt 0 contains
    gen = generate(model, tok, PROMPTS, k=2, max_new_tokens=10, temperature=0, stop=stop)
    assert gen.texts[0] == [text[: text.find(stop[0])]] * 2
    assert gen.token_ids[0][0] == plain.token_ids[0][0][: first_hit(tok, plain.token_ids[0][0], stop)]
    assert gen.finished[0] == [True, True] and gen.ended_with_eos[0] == [False, False]


def test_bad_stop_values_are_refused(tiny):
    model, tok = tiny
    for bad in ("\n\n", [""], [3]):
        with pytest.raises(ValueError, match="stop must be a list of non-empty strings"):
            generate(model, tok, PROMPTS, stop=bad)


def test_experience_trains_on_the_sampled_ids_and_rewards_the_cut_text(tiny, base):
    from alignkit.rollout import sample_experience

    model, tok = tiny
    seen = []

    def reward(prompts, texts, rows):
        seen.extend(texts)
        return [float(len(t)) for t in texts]

    stop = [" number"]
    exp = sample_experience(model, tok, PROMPTS, [{}] * 3, reward, k=GEN["k"], seed=0, max_new_tokens=12, stop=stop)
    gen = generate(model, tok, PROMPTS, stop=stop, **GEN)
    assert seen == [t for row in gen.texts for t in row] and all(" number" not in t for t in seen)
    for b, item in enumerate(exp.data.items):
        for j in range(GEN["k"]):
            eos = [gen.stop_ids[b][j]] if gen.stop_ids[b][j] is not None else []
            assert item.segments[j] == gen.token_ids[b][j] + eos
            if gen.stop_strings[b][j]:
                assert tok.decode(item.segments[j]).endswith(tok.decode(item.segments[j][-1:]))
                assert " number" in tok.decode(item.segments[j])
    assert exp.finished == gen.finished and any(s for row in gen.stop_strings for s in row)


def test_config_key_reaches_the_rollout(monkeypatch):
    from alignkit.algorithms import online
    from alignkit.config import ConfigError, TrainConfig, load_config
    from alignkit.rewards import GroupReward

    assert TrainConfig().stop == []
    c = load_config(TrainConfig, overrides=['stop=["\\n\\n", "Question:"]'])
    assert c.stop == ["\n\n", "Question:"]
    with pytest.raises(ConfigError, match="'stop' must be a list of non-empty strings"):
        load_config(TrainConfig, overrides=['stop=["", "x"]'])
    calls = []
    monkeypatch.setattr(online, "sample_experience", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(online, "unwrap", lambda m: m)
    trainer = online.OnlineTrainer.__new__(online.OnlineTrainer)
    trainer.config, trainer.policy, trainer.tokenizer, trainer.reward = c, None, None, GroupReward()
    trainer.rollout([{"prompt": "p"}], 0, 2, 1.0)
    assert calls == [{"stop": ["\n\n", "Question:"], "chat_template_kwargs": {}, "models": None}]


def test_generate_cli_stop_flag(tiny_path, tmp_path):
    from alignkit import cli
    from alignkit.models.load import load_model, load_tokenizer

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["generate", "--model", tiny_path, "--prompts", str(prompts), "--k", "4", "--max-new-tokens",
                     "12", "--stop", " number", "--stop", "\\n\\n", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gen = generate(load_model(tiny_path), load_tokenizer(tiny_path), PROMPTS, stop=[" number", "\n\n"], **GEN)
    for row, texts in zip(rows, gen.texts):
        assert row["completions"] == [t for t in texts if t.strip()]
    assert not any(" number" in t for row in rows for t in row["completions"])
