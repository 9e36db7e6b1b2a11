"""Every data shape trains end to end from the command line, and the first logged loss (θ = reference,
so every log-ratio is 0) equals the objective's closed form there. Bad shapes fail before any model loads."""

import json
import math

import pytest

from alignkit import cli
from alignkit.worlds import reviews

POS, NEG = [" great.", " fun.", " good.", " superb."], [" awful.", " dull.", " bad.", " weak."]
SUBJECTS = ["The movie was", "The film was", "The plot was", "The cast was", "The music was", "The story was"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tiny_path, data, out, *items):
    argv = ["train", f"model={tiny_path}", f"data={data}", f"output_dir={out}", "progress=false", "max_steps=2",
            "batch_size=4", "lr=1e-3", *items]
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def listed(n=8, k=4, key="ranks"):
    rows = []
    for i in range(n):
        responses = [POS[i % 4], POS[(i + 1) % 4], NEG[i % 4], NEG[(i + 1) % 4]][:k]
        labels = list(range(k)) if key == "ranks" else [float(k - j) for j in range(k)]
        rows.append({"prompt": SUBJECTS[i % 6], "responses": responses, key: labels})
    return rows


def test_unpaired_labels_train_with_kto_and_bco(tiny_path, tmp_path):
    rows = [{"prompt": SUBJECTS[i % 6], "completion": (POS if i % 2 else NEG)[i % 4], "label": bool(i % 2)}
            for i in range(12)]
    data = write(tmp_path / "unpaired.jsonl", rows)
    # kto at θ = ref: z0 = 0 and ρ = 0, so each example costs λ/2
    assert run(tiny_path, data, tmp_path / "kto", "objective=kto")[0] == pytest.approx(0.5, abs=1e-6)
    assert run(tiny_path, data, tmp_path / "kto_w", "objective=kto",
               "hparams={desirable_weight: 2.0}")[0] == pytest.approx(0.5 * (2 * 2 + 2) / 4, abs=1e-2)
    assert run(tiny_path, data, tmp_path / "bco", "objective=bco")[0] == pytest.approx(math.log(2), abs=1e-6)
    assert math.isfinite(run(tiny_path, data, tmp_path / "ul", "objective=unlikelihood")[0])


def test_pairs_split_into_labels_train_kto(tiny_path, pairs_path, tmp_path):
    losses = run(tiny_path, pairs_path, tmp_path / "kto", "objective=kto", "transforms=[{name: to_unpaired}]")
    assert losses[0] == pytest.approx(0.5, abs=1e-6)


def test_negatives_only_train_d2o_with_cached_self_samples(tiny_path, tmp_path, caplog):
    rows = [{"prompt": SUBJECTS[i % 6], "completion": NEG[i % 4], "label": False} for i in range(8)]
    data = write(tmp_path / "negatives.jsonl", rows)
    spec = "transforms=[{name: self_samples, k: 2, max_new_tokens: 4, cache_dir: %s}]" % (tmp_path / "samples")
    first = run(tiny_path, data, tmp_path / "a", "objective=d2o", spec)
    assert first[0] == pytest.approx(math.log(2), abs=1e-6)
    assert len(list((tmp_path / "samples").glob("samples-*.jsonl"))) == 1
    with caplog.at_level("INFO", logger="alignkit"):
        again = run(tiny_path, data, tmp_path / "b", "objective=d2o", spec)
    assert "samples from cache" in caplog.text and again == first


@pytest.mark.parametrize("name,expected", [
    ("plackett_luce", math.log(24)),  # K = 4 distinct ranks, all h equal: log 4 + log 3 + log 2
    ("listnet", math.log(4)),  # cross-entropy against a uniform policy softmax
    ("all_pairs", math.log(2)),
    ("lipo", None),
])
def test_ranked_lists_train_listwise(tiny_path, tmp_path, name, expected):
    data = write(tmp_path / "ranked.jsonl", listed(key="scores" if name == "listnet" else "ranks"))
    loss = run(tiny_path, data, tmp_path / name, f"objective={name}")[0]
    assert math.isfinite(loss) if expected is None else loss == pytest.approx(expected, abs=1e-5)


def test_preference_trees_train_tpo(tiny_path, tmp_path):
    rows = [{"prompt": SUBJECTS[i % 6], "responses": [" step one. good.", " step one. bad.", " other."],
             "ranks": [0, 1, 2]} for i in range(8)]
    data = write(tmp_path / "tree.jsonl", rows)
    assert run(tiny_path, data, tmp_path / "tpo", "objective=tpo")[0] == pytest.approx(math.log(6), abs=1e-5)


def test_vector_scores_train_modpo_and_weighted_dpo(tiny_path, tmp_path):
    rows = [{"prompt": SUBJECTS[i % 6], "responses": [POS[i % 4], NEG[i % 4]], "scores": [[1.0, 0.2], [0.0, 0.6]]}
            for i in range(8)]
    data = write(tmp_path / "vector.jsonl", rows)
    # at θ = ref, Δ = 0: loss = softplus((w_1 / w_0) · (r_1(l) − r_1(w))) with objective 0 deciding w
    expected = math.log1p(math.exp((0.5 / 0.5) * (0.2 - 0.6)))
    losses = run(tiny_path, data, tmp_path / "modpo", "objective=modpo", "hparams={weights: [0.5, 0.5]}")
    assert losses[0] == pytest.approx(expected, abs=1e-5)
    losses = run(tiny_path, data, tmp_path / "dpo", "objective=dpo",
                 "transforms=[{name: weight_scores, weights: [0.5, 0.5]}]")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("rows,objective,message", [
    ([{"prompt": "a", "responses": [" b."], "ranks": [0]}] * 8, "plackett_luce", "at least 2 responses"),
    ([{"prompt": "a", "completion": " b.", "label": True}] * 8, "dpo", "labelled with ranks or scores"),
    ([{"prompt": "a", "responses": [" b.", " c."], "scores": [[1, 0], [0, 1]]}] * 8, "dpo", "weight_scores"),
    ([{"prompt": "a", "responses": [" b.", " c."], "scores": [1, 0]}] * 8, "modpo", "score vectors"),
])
def test_bad_shapes_fail_before_any_model_loads(tiny_path, tmp_path, capsys, monkeypatch, rows, objective, message):
    import alignkit.engine.startup as startup

    monkeypatch.setattr(startup, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(startup.rm, "load_reward_model", lambda *a, **k: pytest.fail("a reward model was loaded"))
    data = write(tmp_path / "bad.jsonl", rows)
    argv = ["train", f"model={tiny_path}", f"data={data}", f"objective={objective}", f"output_dir={tmp_path}"]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_world_generates_every_shape():
    prompts = ["Review: The plot was", "Review: The cast was"]
    texts = [[" great.", " dull.", " great and fun."], [" fine.", " fine."]]
    scored, dropped = reviews.labelled_records(prompts, texts, "scored")
    assert scored[0]["scores"] == [1.0, -1.0, 1.0] and scored[1]["scores"] == [0.0, 0.0] and dropped == 0
    ranked, dropped = reviews.labelled_records(prompts, texts, "ranked")
    assert ranked == [{"prompt": prompts[0], "responses": texts[0], "ranks": [0, 1, 0]}] and dropped == 1
    pairs, _ = reviews.labelled_records(prompts, texts, "pairs")
    assert pairs[0]["responses"] == [" great.", " dull."]
    unpaired, dropped = reviews.labelled_records(prompts, texts, "unpaired")
    assert [r["labels"] for r in unpaired] == [[True], [False], [True]] and dropped == 2
    vector, _ = reviews.labelled_records(prompts, texts, "vector")
    assert vector[0]["scores"][0] == [1.0, reviews.brevity(" great.")]
