"""URIAL in-context alignment (``urial``, `alignkit.inference.urial`): exact rendered text of the shipped and
of a hand-written template, a user's template used by ``template=PATH``, generation stopped at the marker
(known answer: the greedy continuation without a stop, cut before its first marker), and the KL estimate
zero for a template that adds no context."""

from __future__ import annotations

import pytest

from alignkit.generation import generate
from alignkit.inference import InferenceSettings, run_method
from alignkit.inference.urial import load_template, parse_template, query_text

SMALL = "stop: # Q\nstrip: ```\n---\nBe kind.\n\n# Q\n```\nHi\n```\n# A\n```\nHello!\n```\n\n# Q\n```\n{query}\n```\n# A\n```\n"


@pytest.fixture(scope="module")
def world(review_world):
    from alignkit.models.load import load_model, load_tokenizer

    return load_model(review_world), load_tokenizer(review_world)


def test_rendered_text_is_exact():
    tpl = parse_template(SMALL)
    assert tpl.stop == ("# Q",) and tpl.strip == ("```",)
    assert tpl.render("What is {x}?") == (
        "Be kind.\n\n# Q\n```\nHi\n```\n# A\n```\nHello!\n```\n\n# Q\n```\nWhat is {x}?\n```\n# A\n```\n")
    assert tpl.clean("Four.\n```\n\n") == "Four."  # trailing whitespace, the closing fence, whitespace


def test_shipped_template_renders_the_query_last():
    tpl = load_template()
    text = tpl.render("Name a colour.")
    assert tpl.stop == ("# Query:",) and tpl.strip == ("```",)
    assert text.startswith("# Instruction\n\nBelow is a list of conversations between a human and an AI assistant")
    assert text.endswith("\n\n# Query:\n```\nName a colour.\n```\n\n# Answer:\n```\n")
    assert text.count("\n# Query:\n") == 3 and text.count("\n# Answer:\n") == 3  # two examples, then the query


def test_user_template_is_used_and_generation_stops_at_the_marker(world, tmp_path):
    model, tok = world
    path = tmp_path / "mine.md"
    path.write_text("stop: ,\nstop: !\n---\nReview: {query}", encoding="utf-8")
    queries = ["The plot was", "The music felt", "The cast"]
    s = InferenceSettings(max_new_tokens=24, temperature=0)
    outs = run_method("urial", model, tok, queries, settings=s, options={"template": str(path)})
    raw = generate(model, tok, [f"Review: {q}" for q in queries], temperature=0, max_new_tokens=24).texts
    stopped = 0
    for o, (r,) in zip(outs, raw):
        cut = min([i for i in (r.find(","), r.find("!")) if i >= 0], default=None)
        if cut is None:  # no marker within max_new_tokens: the same text, unfinished or ended by EOS
            assert o.text == r.rstrip() and o.extra["stopped_at"] is None
        else:
            assert o.text == r[:cut].rstrip() and o.finished and o.extra["stopped_at"] == r[cut]
            stopped += 1
    assert stopped >= 1  # the marker branch was exercised


def test_kl_estimate_is_zero_for_a_template_that_adds_nothing(world, tmp_path):
    model, tok = world
    path = tmp_path / "plain.md"
    path.write_text("stop: !\n---\n{query}", encoding="utf-8")
    outs = run_method("urial", model, tok, ["Review: The plot was", "Review: The acting"],
                      settings=InferenceSettings(max_new_tokens=16, seed=3), options={"template": str(path)},
                      reward_fn=lambda p, c, r: [float(len(x)) for x in c])
    assert [o.kl for o in outs] == [0.0, 0.0]  # log π(y | x) − log π(y | x)
    assert [o.reward for o in outs] == [float(len(o.text)) for o in outs]


@pytest.mark.parametrize("text,match", [
    ("Be kind. {query}", "line '---'"),
    ("strip: x\n---\n{query}", "at least one 'stop"),
    ("stop: #\n---\nno slot", "exactly once"),
    ("stop: #\n---\n{query} {query}", "exactly once"),
    ("halt: #\n---\n{query}", "header line 1"),
])
def test_bad_templates_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_template(text)


def test_prompts_must_be_text_or_one_user_message(tmp_path):
    assert query_text([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ValueError, match="one user message"):
        query_text([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="is not a file"):
        load_template(str(tmp_path / "missing.md"))
