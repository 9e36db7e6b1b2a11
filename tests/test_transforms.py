"""Record transforms: exact outputs and report counts on hand-made records, errors, the registry."""

import copy
import math
import random
import re

import pytest
import yaml

from alignkit.data import PreferenceRecord
from alignkit.data.transforms import (
    TRANSFORMS,
    TransformError,
    apply_transforms,
    condition_weights,
    conditioned_prompt,
    curriculum,
    curriculum_order,
    format_report,
    margin_weights,
    negatives_only,
    options_of,
    pairs,
    rejection_sample,
    reward_condition,
    rso,
    score_conditioned_prompt,
    to_unpaired,
    weight_scores,
)
from alignkit.data.transforms_pairs import acceptance_probs


def R(responses, **kw):
    kw.setdefault("prompt", "p")
    return PreferenceRecord(responses=responses, **kw)


def u(text):
    return {"role": "user", "content": text}


def dicts(records):
    return [r.to_dict() for r in records]


# ---------------------------------------------------------------------------------------- pairs
def test_pairs_best_vs_worst_exact_records_and_counts():
    recs = [
        R(["a", "b", "c"], scores=[1.0, 3.0, 2.0], id="s", system="sys", group="g1", weight=0.5, meta={"src": "x"}),
        R(["a", "b", "c"], ranks=[1, 0, 0], id="r"),  # best = first of the two rank-0 responses
        R(["a", "b"], scores=[2.0, 2.0], id="tie"),
        R(["a"], ranks=[0], id="one"),
    ]
    out, rep = pairs(recs)
    assert dicts(out) == [
        {"prompt": "p", "responses": ["b", "a"], "ranks": [0.0, 1.0], "system": "sys", "id": "s:1-0",
         "group": "g1", "weight": 0.5,
         "meta": {"src": "x", "margin": 2.0, "source_responses": [1, 0], "score_chosen": 3.0, "score_rejected": 1.0}},
        {"prompt": "p", "responses": ["b", "a"], "ranks": [0.0, 1.0], "id": "r:1-0",
         "meta": {"margin": 1.0, "source_responses": [1, 0]}},  # rank gap for ranked lists
    ]  # fmt: skip
    assert rep == {"transform": "pairs", "records_in": 4, "records_out": 2,
                   "dropped": {"tied": 1, "too_few_responses": 1}, "records_without_pairs": 2}  # fmt: skip
    assert recs[0].meta == {"src": "x"}  # inputs are not mutated


def test_pairs_all_pairs_counts_tied_and_small_margins():
    rec = R(["a", "b", "c", "d"], scores=[4.0, 1.0, 1.0, 3.5], id="q")
    out, rep = pairs([rec], strategy="all_pairs", min_margin=1.0)
    # candidates (i<j): 0>1 (3), 0>2 (3), 0>3 (0.5 < 1: dropped), 1=2 (tie), 3>1 (2.5), 3>2 (2.5)
    assert [(r.id, r.responses, r.meta["margin"]) for r in out] == [
        ("q:0-1", ["a", "b"], 3.0), ("q:0-2", ["a", "c"], 3.0), ("q:3-1", ["d", "b"], 2.5), ("q:3-2", ["d", "c"], 2.5),
    ]  # fmt: skip
    assert rep["dropped"] == {"below_min_margin": 1, "tied": 1} and rep["records_without_pairs"] == 0


def test_pairs_best_vs_random_picks_strictly_worse_with_the_seed():
    recs = [R(["a", "b", "c", "d"], scores=[5.0, 5.0, 1.0, 2.0], id=str(i)) for i in range(40)]
    out, rep = pairs(recs, strategy="best_vs_random", seed=3)
    assert rep["records_out"] == 40 and rep["dropped"] == {}
    assert {r.responses[0] for r in out} == {"a"}  # the first best; its tie "b" is never the rejected one
    assert {r.responses[1] for r in out} == {"c", "d"}
    again, _ = pairs(recs, strategy="best_vs_random", seed=3)
    other, _ = pairs(recs, strategy="best_vs_random", seed=4)
    assert dicts(again) == dicts(out) and dicts(other) != dicts(out)


def test_pairs_errors_name_the_record_and_the_fix():
    with pytest.raises(TransformError, match=r"pairs needs ranked or scored lists; record 1 \(id=u\) has labels"):
        pairs([R(["a", "b"], ranks=[0, 1]), R(["a"], labels=[True], id="u")])
    with pytest.raises(TransformError, match="record 0 has vector scores.*weight_scores"):
        pairs([R(["a", "b"], scores=[[1.0, 0.0], [0.0, 1.0]])])
    with pytest.raises(TransformError, match="min_margin must be >= 0"):
        pairs([], min_margin=-1)


# ---------------------------------------------------------------------------------- weight_scores
def test_weight_scores_simplex_and_direction():
    rec = R(["a", "b"], scores=[[2.0, 4.0], [8.0, 0.0]], id="m")
    out, rep = weight_scores([rec], weights=[1, 3])  # normalised to [0.25, 0.75]
    assert out[0].scores == [3.5, 2.0] and out[0].meta == {"score_vectors": [[2.0, 4.0], [8.0, 0.0]]}
    assert rep == {"transform": "weight_scores", "records_in": 1, "records_out": 1, "dropped": {}}
    out, _ = weight_scores([rec], direction=[3, -4])  # unit vector [0.6, -0.8]
    assert out[0].scores == pytest.approx([2.0 * 0.6 - 4.0 * 0.8, 8.0 * 0.6])


def test_weight_scores_errors():
    rec = R(["a", "b"], scores=[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], id="m3")
    with pytest.raises(TransformError, match=r"record 0 \(id=m3\) has score vectors of length 3 but weights has 2"):
        weight_scores([rec], weights=[0.5, 0.5])
    with pytest.raises(TransformError, match="exactly one of weights"):
        weight_scores([rec])
    with pytest.raises(TransformError, match=r"weights\[1\] must be >= 0"):
        weight_scores([rec], weights=[1, -1, 0])
    with pytest.raises(TransformError, match="needs multi-objective records.*record 0 has scalar scores"):
        weight_scores([R(["a", "b"], scores=[1.0, 2.0])], weights=[1])


# --------------------------------------------------------------------------------- margin_weights
def test_margin_weights_linear_tanh_and_fallbacks():
    recs = [
        R(["a", "b"], ranks=[0, 1], weight=2.0, meta={"margin": 1.5}),
        R(["a", "b"], ranks=[0, 1], meta={"score_chosen": 7, "score_rejected": 5}),  # paired layout
        R(["a", "b", "c"], scores=[1.0, 4.0, 2.0]),  # max - min = 3
        R(["a", "b"], ranks=[0, 1], meta={"margin": 0.0}),
    ]
    out, rep = margin_weights(recs, scale=2.0)
    assert [r.weight for r in out] == [6.0, 4.0, 6.0, 0.0]
    assert rep["zero_weight"] == 1 and rep["records_out"] == 4
    out, _ = margin_weights(recs, mode="tanh")
    assert [r.weight for r in out] == pytest.approx([2 * math.tanh(1.5), math.tanh(2.0), math.tanh(3.0), 0.0])
    out, _ = margin_weights([R(["a", "b"], ranks=[0, 1], meta={"gap": 0.5})], field="gap")
    assert out[0].weight == 0.5


def test_margin_weights_errors():
    with pytest.raises(TransformError, match=r"needs a score gap; record 0 \(id=z\) has no numeric meta\['margin'\]"):
        margin_weights([R(["a", "b"], ranks=[0, 1], id="z")])
    with pytest.raises(TransformError, match="negative gap -1"):
        margin_weights([R(["a", "b"], ranks=[0, 1], meta={"margin": -1})])
    with pytest.raises(TransformError, match=r"mode='weights' is not one of weight, tanh. Did you mean 'weight'\?"):
        margin_weights([], mode="weights")


# ------------------------------------------------------------------------------------- curriculum
def test_curriculum_stages_easy_first_and_order():
    gaps = [1.0, 5.0, 3.0, 2.0, 6.0, 4.0, 0.5]
    recs = [R(["a", "b"], ranks=[0, 1], id=f"r{i}", meta={"margin": g}) for i, g in enumerate(gaps)]
    out, rep = curriculum(recs, stages=3, seed=0)
    assert rep["stage_sizes"] == [3, 2, 2]  # 7 = 3 + 2 + 2, the first stage takes the extra one
    by_stage = [{r.id for r in out if r.meta["stage"] == s} for s in range(3)]
    assert by_stage == [{"r4", "r1", "r5"}, {"r2", "r3"}, {"r0", "r6"}]  # gaps {6,5,4}, {3,2}, {1,0.5}
    assert [r.meta["stage"] for r in out] == [0, 0, 0, 1, 1, 2, 2]
    assert [r.meta["curriculum_order"] for r in out] == list(range(7))
    assert dicts(curriculum(recs, stages=3, seed=0)[0]) == dicts(out)  # deterministic given the seed
    shuffled = out[:]
    random.Random(1).shuffle(shuffled)
    assert [shuffled[i].id for i in curriculum_order(shuffled)] == [r.id for r in out]


def test_curriculum_order_needs_the_transform():
    with pytest.raises(TransformError, match=r"record 0 \(id=x\) has no integer meta\['curriculum_order'\]"):
        curriculum_order([R(["a", "b"], ranks=[0, 1], id="x")])


# ------------------------------------------------------------------------------- reward_condition
def test_reward_condition_both_targets_text_and_chat():
    recs = [
        R(["good", "bad"], scores=[8.0, 3.0], id="t"),
        R(["bad", "good"], ranks=[1, 0], prompt=[{"role": "system", "content": "s"}, u("hi")], id="c",
          meta={"score_chosen": 0.75, "score_rejected": 0.25}),  # ranked pair, chosen second
        R(["x", "y"], scores=[1.0, 1.0], id="tie"),
        R(["x", "y"], ranks=[0, 1], meta={"score_chosen": 1, "score_rejected": 2}),
    ]
    out, rep = reward_condition(recs, target="both")
    assert dicts(out[:2]) == [
        {"prompt": "<score>8.0</score> p", "responses": ["good", "bad"], "ranks": [0.0, 1.0], "id": "t:cond_best",
         "meta": {"target_score": 8.0, "score_chosen": 8.0, "score_rejected": 3.0, "margin": 5.0}},
        {"prompt": "<score>3.0</score> p", "responses": ["bad", "good"], "ranks": [0.0, 1.0], "id": "t:cond_worst",
         "meta": {"target_score": 3.0, "score_chosen": 3.0, "score_rejected": 8.0, "margin": 5.0}},
    ]  # fmt: skip
    assert out[2].prompt == [{"role": "system", "content": "s"}, u("<score>0.8</score> hi")]
    assert out[2].responses == ["good", "bad"] and out[3].responses == ["bad", "good"]
    assert out[3].prompt[1] == u("<score>0.2</score> hi")
    assert recs[1].prompt[1] == u("hi")  # the input chat is not modified
    assert rep["dropped"] == {"scores_disagree_with_ranks": 1, "tied": 1} and rep["records_out"] == 4
    best, _ = reward_condition(recs[:1])
    assert dicts(best) == dicts(out[:1])
    assert score_conditioned_prompt("p", 8.0) == out[0].prompt


def test_reward_condition_errors():
    with pytest.raises(TransformError, match=r"record 0 \(id=n\) has ranks but no meta score_chosen"):
        reward_condition([R(["a", "b"], ranks=[0, 1], id="n")])
    with pytest.raises(TransformError, match="record 0: the chat prompt has no user message"):
        reward_condition([R(["a", "b"], scores=[1.0, 0.0], prompt=[{"role": "system", "content": "s"}])])
    with pytest.raises(TransformError, match="template must be a string containing '{score}'"):
        reward_condition([], template="<{w}>")
    with pytest.raises(TransformError, match="cannot be formatted"):
        reward_condition([], template="{score} {other}")


# ------------------------------------------------------------------------------ condition_weights
def test_condition_weights_given_vectors_exact():
    rec = R(["a", "b"], scores=[[1.0, 0.0], [0.0, 1.0]], id="m")
    out, rep = condition_weights([rec], weights=[[1, 0], [1, 3]])
    assert dicts(out) == [
        {"prompt": "<weights>1.00, 0.00</weights> p", "responses": ["a", "b"], "scores": [1.0, 0.0], "id": "m:w0",
         "meta": {"condition_weights": [1.0, 0.0], "score_vectors": [[1.0, 0.0], [0.0, 1.0]]}},
        {"prompt": "<weights>0.25, 0.75</weights> p", "responses": ["a", "b"], "scores": [0.25, 0.75], "id": "m:w1",
         "meta": {"condition_weights": [0.25, 0.75], "score_vectors": [[1.0, 0.0], [0.0, 1.0]]}},
    ]  # fmt: skip
    assert rep["conditioned"] == 2
    with pytest.raises(TransformError, match=r"record 0 \(id=m\) has score vectors of length 2 but weights\[0\] has 3"):
        condition_weights([rec], weights=[[1, 1, 1]])


def test_condition_weights_samples_round_trip_through_conditioned_prompt():
    recs = [R(["a", "b", "c"], scores=[[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 2.0, 2.0]], id=str(i),
              prompt=[u(f"q{i}")]) for i in range(5)]  # fmt: skip
    out, rep = condition_weights(recs, samples=3, seed=7)
    assert rep["records_out"] == 15 and [r.id for r in out[:4]] == ["0:w0", "0:w1", "0:w2", "1:w0"]
    for r in out:
        w = r.meta["condition_weights"]
        assert abs(sum(w) - 1) <= 0.015 and min(w) >= 0  # on the simplex up to 2-decimal rounding
        src = recs[int(r.id.split(":")[0])]
        assert r.prompt == conditioned_prompt(src.prompt, w)  # inference formats exactly like training
        shown = re.match(r"<weights>(.*)</weights> ", r.prompt[0]["content"]).group(1)
        assert [float(x) for x in shown.split(", ")] == w
        assert r.scores == pytest.approx([sum(a * b for a, b in zip(w, s)) for s in src.scores])
    assert len({tuple(r.meta["condition_weights"]) for r in out}) == 15  # fresh draws per record
    assert dicts(condition_weights(recs, samples=3, seed=7)[0]) == dicts(out)
    assert conditioned_prompt("p", [0.5, 0.5], template="[{w}]\n", digits=1) == "[0.5, 0.5]\np"


# -------------------------------------------------------------------------------------------- rso
def test_acceptance_probs_and_limits():
    assert acceptance_probs([0.0, 1.0, 2.0], 1.0) == pytest.approx([math.exp(-2), math.exp(-1), 1.0])
    rewards = [0.3, 2.0, -1.0, 1.5]
    for seed in range(20):  # β -> 0: only the best remaining candidate is ever accepted
        accepted, _ = rejection_sample(rewards, 1e-9, 2, random.Random(seed))
        assert accepted == [1, 3]
    accepted, proposals = rejection_sample(rewards, 1e9, 4, random.Random(0))
    assert sorted(accepted) == [0, 1, 2, 3] and proposals == 4  # huge β: every proposal accepted


def test_rejection_sample_draws_softmax():
    rng, counts, proposals = random.Random(0), [0, 0, 0], 0
    for _ in range(20000):
        (j,), n = rejection_sample([0.0, 1.0, 2.0], 1.0, 1, rng)
        counts[j] += 1
        proposals += n
    z = 1 + math.e + math.e**2
    assert [c / 20000 for c in counts] == pytest.approx([1 / z, math.e / z, math.e**2 / z], abs=0.01)
    # acceptance rate of a proposal = mean of exp(r - 2) = (e^-2 + e^-1 + 1)/3
    assert 20000 / proposals == pytest.approx((math.exp(-2) + math.exp(-1) + 1) / 3, abs=0.01)


def test_rso_pairs_and_counts():
    recs = [
        R(["a", "b", "c", "d"], scores=[0.3, 2.0, -1.0, 1.5], id="k4"),
        R(["a", "b", "c"], scores=[1.0, 0.0, 0.5], id="k3"),  # K < 2·num_pairs: one pair only
        R(["a", "b"], scores=[1.0, 1.0], id="tie"),
        R(["a"], scores=[1.0]),
    ]
    out, rep = rso(recs, beta=1e-9, num_pairs=2)
    # β -> 0 draws in reward order: k4 -> b, d, a, c; k3 -> a, c, b (b unpaired); tie -> a, b in some order
    assert [(r.id, r.responses, r.meta["margin"]) for r in out] == [
        ("k4:rso0", ["b", "d"], 0.5), ("k4:rso1", ["a", "c"], 1.3), ("k3:rso0", ["a", "c"], 0.5),
    ]  # fmt: skip
    assert out[0].meta["score_chosen"] == 2.0 and out[0].ranks == [0, 1]
    assert rep["dropped"] == {"tied": 1, "too_few_responses": 1}
    assert rep["accepted"] == 4 + 3 + 2 and rep["short_records"] == 2
    _, uni = rso(recs, num_pairs=2, strategy="uniform")
    assert uni["proposals"] == uni["accepted"] == 9
    with pytest.raises(TransformError, match="rso needs scalar rewards.*record 0 has ranks"):
        rso([R(["a", "b"], ranks=[0, 1])])
    with pytest.raises(TransformError, match="beta must be > 0"):
        rso([], beta=0)


# ---------------------------------------------------------------------- to_unpaired, negatives_only
def test_to_unpaired_splits_pairs():
    recs = [R(["w", "l"], ranks=[0, 1], id="p", weight=0.5), R(["l", "w"], scores=[0.0, 1.0]),
            R(["a", "b"], ranks=[0, 0], id="tie")]  # fmt: skip
    out, rep = to_unpaired(recs)
    assert dicts(out) == [
        {"prompt": "p", "responses": ["w"], "labels": [True], "id": "p:chosen", "weight": 0.5,
         "meta": {"pair_role": "chosen"}},
        {"prompt": "p", "responses": ["l"], "labels": [False], "id": "p:rejected", "weight": 0.5,
         "meta": {"pair_role": "rejected"}},
        {"prompt": "p", "responses": ["w"], "labels": [True], "meta": {"pair_role": "chosen"}},
        {"prompt": "p", "responses": ["l"], "labels": [False], "meta": {"pair_role": "rejected"}},
    ]  # fmt: skip
    assert rep == {"transform": "to_unpaired", "records_in": 3, "records_out": 4, "dropped": {"tied": 1},
                   "desirable": 2, "undesirable": 2}  # fmt: skip
    flipped, _ = to_unpaired(recs[:1], chosen_label=False)
    assert [r.labels for r in flipped] == [[False], [True]]


def test_negatives_only_keeps_undesirable():
    recs = [R(["g", "b1", "b2"], labels=[True, False, False], id="x"), R(["g"], labels=[True], id="y"),
            R(["b"], labels=[False])]  # fmt: skip
    out, rep = negatives_only(recs)
    assert dicts(out) == [{"prompt": "p", "responses": ["b1", "b2"], "labels": [False, False], "id": "x"},
                          {"prompt": "p", "responses": ["b"], "labels": [False]}]  # fmt: skip
    assert rep == {"transform": "negatives_only", "records_in": 3, "records_out": 2,
                   "dropped": {"desirable_responses": 2, "records_without_negatives": 1}, "negatives": 3}  # fmt: skip
    with pytest.raises(TransformError, match="has ranks .*to_unpaired before"):
        negatives_only([R(["a", "b"], ranks=[0, 1])])


# -------------------------------------------------------------------------------------- registry
def test_apply_transforms_from_yaml_chain():
    specs = yaml.safe_load("""
    - {name: weight_scores, weights: [1, 1]}
    - {name: pairs, strategy: best_vs_worst, min_margin: 0.5}
    - to_unpaired
    """)
    recs = [R(["a", "b", "c"], scores=[[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]], id="m"),
            R(["a", "b"], scores=[[1.0, 0.0], [0.0, 0.8]], id="n")]  # gap 0.1 < 0.5  # fmt: skip
    before = copy.deepcopy(dicts(recs))
    out, reports = apply_transforms(recs, specs, seed=0)
    assert [(r.id, r.responses, r.labels) for r in out] == [("m:0-1:chosen", ["a"], [True]),
                                                            ("m:0-1:rejected", ["b"], [False])]  # fmt: skip
    assert [r["records_out"] for r in reports] == [2, 1, 2]
    assert format_report(reports[1]) == ("pairs: 2 records in -> 1 out; dropped: below_min_margin 1; "
                                         "records_without_pairs 1")  # fmt: skip
    assert dicts(recs) == before


def test_apply_transforms_spec_errors_suggest_names():
    recs = [R(["a", "b"], ranks=[0, 1])]
    with pytest.raises(TransformError, match=r"transforms\[1\]: unknown transform 'pair'. Did you mean 'pairs'\?"):
        apply_transforms(recs, [{"name": "to_unpaired"}, {"name": "pair"}])
    with pytest.raises(TransformError, match=r"\(pairs\): unknown option 'min_marign'. Did you mean 'min_margin'\?"):
        apply_transforms(recs, [{"name": "pairs", "min_marign": 1}])
    with pytest.raises(TransformError, match="the seed comes from apply_transforms"):
        apply_transforms(recs, [{"name": "rso", "seed": 1}])
    with pytest.raises(TransformError, match="mapping with a 'name' key"):
        apply_transforms(recs, [{"strategy": "all_pairs"}])
    with pytest.raises(TransformError, match="must be a list"):
        apply_transforms(recs, {"name": "pairs"})
    with pytest.raises(TransformError, match=r"transforms\[0\]: curriculum needs a score gap"):
        apply_transforms(recs, ["curriculum"])


def test_registry_lists_every_transform_with_options():
    assert sorted(TRANSFORMS) == sorted(["pairs", "weight_scores", "curriculum", "margin_weights", "reward_condition",
                                         "condition_weights", "rso", "to_unpaired", "negatives_only", "fold", "users", "udm"])  # fmt: skip
    assert options_of("pairs") == {"strategy": "best_vs_worst", "min_margin": 0.0}
    assert options_of("negatives_only") == {}


def test_fold_splits_by_prompt_and_the_folds_partition_the_data():
    recs = [PreferenceRecord(prompt=f"p{i % 30}", responses=["a", "b"], ranks=[0, 1]) for i in range(90)]
    only = [apply_transforms(recs, [{"name": "fold", "k": 3, "index": i, "keep": "only"}])[0] for i in range(3)]
    assert sum(len(o) for o in only) == 90  # every record in exactly one fold
    for i in range(3):
        others, (rep,) = apply_transforms(recs, [{"name": "fold", "k": 3, "index": i}])
        assert len(others) + len(only[i]) == 90 and rep["dropped"] == {"other_fold": len(only[i])}
        assert {r.prompt for r in others}.isdisjoint({r.prompt for r in only[i]})  # no prompt in both
    with pytest.raises(ValueError, match="index=3 must be < k=3"):
        apply_transforms(recs, [{"name": "fold", "k": 3, "index": 3}])
