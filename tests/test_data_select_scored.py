"""`alignkit data select --method deita|mig` (`alignkit.data.tools.selection_scored`): Deita's digit-expectation
score, its diversity filter and MIG's greedy information gain against hand-computed answers; both through the CLI."""

import json

import pytest
import torch

from alignkit import cli
from alignkit.data.io import read_records
from alignkit.data.schema import PreferenceRecord, pair
from alignkit.data.tools.selection import select
from alignkit.data.tools.selection_scored import (
    COMPLEXITY_PROMPT,
    digit_expectation,
    diverse_order,
    llm_scores,
    mig_order,
    propagation,
)
from alignkit.errors import ConfigError, DataError

INF = float("inf")


def test_digit_expectation_by_hand():
    assert float(digit_expectation(torch.zeros(6))) == pytest.approx(3.5)  # uniform over 1..6
    assert float(digit_expectation(torch.tensor([0.0, 0.0, -INF, -INF, -INF, -INF]))) == pytest.approx(1.5)
    assert float(digit_expectation(torch.tensor([-INF] * 5 + [0.0]))) == pytest.approx(6.0)
    # p ∝ (1, 2, 1, 0, 0, 0) → (1 + 4 + 3) / 4 = 2
    logits = torch.log(torch.tensor([1.0, 2.0, 1.0, 0.0, 0.0, 0.0]))
    assert float(digit_expectation(logits)) == pytest.approx(2.0)


def test_llm_scores_are_the_expected_digit_of_the_next_token(tiny):
    model, tok = tiny
    text = COMPLEXITY_PROMPT.format(instruction="The movie was")
    [score] = llm_scores(model, tok, [text])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok(text).input_ids])).logits[0, -1]
    ids = [tok.convert_tokens_to_ids(d) for d in "123456"]
    p = torch.softmax(logits[ids].double(), 0)
    assert score == pytest.approx(float((p * torch.arange(1, 7)).sum()))
    assert 1 <= score <= 6


def test_diverse_order_skips_near_duplicates_of_kept_records():
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    scores = [3.0, 2.5, 1.0, 0.5]
    # record 1 is cos 0.99 from record 0 (skipped at 0.9), record 3 is cos 0.71 from both kept
    assert diverse_order(scores, emb, 0.9, keep=3) == [0, 2, 3, 1]
    assert diverse_order(scores, emb, 1.0, keep=3) == [0, 1, 2, 3]  # no filter: by score
    assert diverse_order(scores, emb, 0.9, keep=2) == [0, 2, 1, 3]  # budget reached: the rest by score


def _tagged(tags_and_quality):
    return [PreferenceRecord(prompt=f"p{i}", responses=["a", "b"], ranks=[0, 1], meta={"tags": t, "q": q})
            for i, (t, q) in enumerate(tags_and_quality)]


def test_mig_prefers_new_labels_by_hand():
    b, a = 0.8, 1e-6
    # A [x], B [x], C [y]: A first (three equal gains ≈ 1, the earliest wins), then C (≈ 1) before B (2^0.8 − 1)
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    order, gains = mig_order(v, torch.eye(2), keep=2)
    assert order == [0, 2, 1]
    assert gains[1] == pytest.approx((2 + a) ** b - (1 + a) ** b)
    assert gains[0] == pytest.approx((1 + a) ** b - a ** b)
    # quality: D [x] q = 3 first (3^0.8 = 2.41), then C [y] (1) beats A [x] (4^0.8 − 3^0.8 = 0.62)
    recs = _tagged([(["x"], 1), (["x"], 3), (["y"], 1)])
    sel = select(recs, method="mig", n=2, quality_key="q")
    assert [r.prompt for r in sel.kept] == ["p1", "p2"] and sel.ranking == [1, 2, 0]
    assert sel.scores[0] == pytest.approx((4 + a) ** b - (3 + a) ** b, rel=1e-6)
    # a record spread over two labels gains 2 · 0.5^0.8 = 1.149 > 1 from an empty selection (Φ is concave)
    order, gains = mig_order(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.eye(2), keep=1)
    assert order[0] == 1 and gains[1] == pytest.approx(2 * (0.5 + a) ** b - 2 * a ** b)


def test_mig_propagation_matrix_by_hand():
    p = propagation(torch.tensor([[1.0, 0.9], [0.9, 1.0]]))
    assert p.flatten().tolist() == pytest.approx([1 / 1.9, 0.9 / 1.9, 0.9 / 1.9, 1 / 1.9])
    p = propagation(torch.tensor([[1.0, 0.9], [0.9, 1.0]]), prop_weight=0.0)
    assert p.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0])
    # with x and y joined, a second record on y gains less than on an unrelated label
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    w = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert mig_order(v, propagation(w), keep=2)[0][:2] == [0, 2]


def test_mig_needs_tags():
    recs = _tagged([(["x"], 1)]) + [pair("p", "a", "b")]
    recs[1].origin = "data.jsonl line 2"
    with pytest.raises(DataError, match="data.jsonl line 2: meta field 'tags' must be a non-empty list"):
        select(recs, method="mig", n=1)


def test_deita_from_meta_scores_and_from_a_scorer_model(tiny_path, tiny):
    recs = [PreferenceRecord(prompt=f"p{i}", responses=["a", "b"], ranks=[0, 1], meta={"complexity": c, "quality": q})
            for i, (c, q) in enumerate([(2.0, 3.0), (5.0, 1.0), (1.5, 5.0), (4.0, 2.0)])]
    sel = select(recs, method="deita", n=2, diversity_threshold=1.0)  # c·q = 6, 5, 7.5, 8
    assert sel.scores == [6.0, 5.0, 7.5, 8.0] and sel.ranking == [3, 2, 0, 1]
    assert [r.prompt for r in sel.kept] == ["p2", "p3"]
    with pytest.raises(ConfigError, match="--scorer"):
        select([pair("p", "a", "b")], method="deita", n=1)
    # a scorer model: complexity of the prompt, quality of the chosen response, written into meta
    model, tok = tiny
    recs = [pair("The movie was", " great.", " bad."), pair("The plot was", " dull.", " fun.")]
    sel = select(recs, method="deita", n=1, scorer=(model, tok), diversity_threshold=1.0)
    c = llm_scores(model, tok, [COMPLEXITY_PROMPT.format(instruction="The movie was")])[0]
    assert recs[0].meta["complexity"] == pytest.approx(c, abs=1e-6)
    assert sel.scores[0] == pytest.approx(recs[0].meta["complexity"] * recs[0].meta["quality"], rel=1e-5)


def test_cli_select_mig_and_deita(tiny_path, tmp_path, capsys):
    data = tmp_path / "tagged.jsonl"
    rows = [{"prompt": f"question {i}", "chosen": "yes", "rejected": "no", "tags": t}
            for i, t in enumerate([["math"], ["math"], ["math", "code"], ["poetry"]])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mig.jsonl"
    assert cli.main(["data", "select", str(data), "--method", "mig", "--n", "2", "--out", str(out)]) == 0
    # math+code (two labels: 1.149) first, then poetry (a new label) over a second math
    assert [r.prompt for r in read_records(out).records] == ["question 2", "question 3"]
    scores = [json.loads(x) for x in (tmp_path / "mig.scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in scores] == [2, 3, 0, 1]
    out = tmp_path / "deita.jsonl"
    assert cli.main(["data", "select", str(data), "--method", "deita", "--n", "2", "--scorer", tiny_path,
                     "--out", str(out)]) == 0
    kept = read_records(out).records
    assert len(kept) == 2 and all(1 <= r.meta["complexity"] <= 6 and 1 <= r.meta["quality"] <= 6 for r in kept)
    assert "select (deita): 4 records in -> 2 kept" in capsys.readouterr().out
