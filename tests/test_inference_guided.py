"""alignkit.inference.guided: ARGS, GenARM and nudging.

Each method's degenerate settings reproduce a known decoder token for token (ARGS w = 0 is greedy on π;
GenARM β = inf is π; nudging γ = 0 is π and γ > 1 the helper); one ARGS step is checked against a
hand-computed choice and KL; the ARM loss against its closed form; and on the review world an ARM
trained briefly on gold-labelled pairs makes GenARM's samples clearly more positive than π's.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from closed_forms import T, lsig, sig

from alignkit.demo import best_vs_worst
from alignkit.generation import generate, prompt_ids
from alignkit.generation.decoding import sample_product
from alignkit.inference import InferenceSettings, run_method
from alignkit.inference.guided import ArgsChooser, ArgsOptions, NudgingOptions, arm_objective
from alignkit.objectives.registry import build_objective
from alignkit.objectives.stats import SequenceStats
from alignkit.worlds import reviews

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(review_model_pair):
    """The pretrained review model, a noisy copy of it on the same tokenizer (conftest), and the tokenizer."""
    return review_model_pair


def gold(prompts, completions, rows):
    return [reviews.reward(c) for c in completions]


PROMPTS = reviews.prompts(6, seed=3) + ["Review:"]
GREEDY = InferenceSettings(max_new_tokens=20, temperature=0.0)
SAMPLE = InferenceSettings(max_new_tokens=20, temperature=1.0, seed=4)


def ids_of(outputs):
    return [o.token_ids for o in outputs]


def first(gen):
    return [row[0] for row in gen.token_ids]


# ---------------------------------------------------------------- ARGS


def test_args_with_w0_is_greedy_decoding(world):
    model, _, tok = world
    want = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=0)
    out = run_method("args", model, tok, PROMPTS, settings=GREEDY, options={"w": 0.0, "topk": 4}, reward_fn=gold)
    assert ids_of(out) == first(want)
    for o in out:
        n = len(o.token_ids) + o.finished  # sampled tokens, stop included
        assert o.reward == reviews.reward(o.text) and o.kl is None
        assert o.calls == n + 4 * n and o.tokens == len(prompt_ids(tok, o.prompt)) + n - 1


def test_args_follows_a_large_reward_weight(world):
    model, _, tok = world
    base = run_method("args", model, tok, PROMPTS, settings=GREEDY, options={"w": 0.0}, reward_fn=gold)
    assert all(o.reward > 0 for o in base)  # π's greedy reviews are positive ...
    neg = run_method("args", model, tok, PROMPTS, settings=GREEDY, options={"w": 10.0, "topk": 8},
                     reward_fn=lambda p, c, r: [-x for x in gold(p, c, r)])
    assert all(reviews.reward(o.text) < 0 for o in neg)  # ... steering by −reward makes every one negative


def test_one_args_step_matches_the_hand_computed_choice_and_kl(world):
    _, _, tok = world
    a, b = tok.convert_tokens_to_ids(["Ġsuperb", "Ġdull"])
    v = len(tok)
    logits = torch.full((1, v), math.log(0.1 / (v - 2)))
    logits[0, a], logits[0, b] = math.log(0.6), math.log(0.3)
    reward = {tok.decode([a]): 0.0, tok.decode([b]): 1.0}

    def step(w, greedy):
        ch = ArgsChooser(ArgsOptions(w=w, topk=2, greedy=greedy), InferenceSettings(temperature=1.0), tok,
                         ["p"], [{}], lambda p, c, r: [reward[x] for x in c])
        return int(ch([logits], torch.tensor([True]), [[]])[0]), ch

    # greedy: log .6 vs log .3 + w, switching at w = log 2
    assert step(0.6, True)[0] == a and step(0.8, True)[0] == b
    _, ch = step(1.0, False)
    qb = 0.3 * math.e / (0.6 + 0.3 * math.e)
    kl = (1 - qb) * math.log((1 - qb) / 0.6) + qb * math.log(qb / 0.3)
    assert ch.kl[0] == pytest.approx(kl, rel=1e-5) and ch.reward_calls == [2]


def test_args_errors_name_the_option(world):
    model, _, tok = world
    with pytest.raises(ValueError, match="temperature > 0"):
        run_method("args", model, tok, ["Review:"], settings=GREEDY, options={"greedy": False}, reward_fn=gold)
    with pytest.raises(ValueError, match="topk >= 1"):
        run_method("args", model, tok, ["Review:"], settings=GREEDY, options={"topk": 0}, reward_fn=gold)
    with pytest.raises(ValueError, match="2 finite scalar rewards"):
        run_method("args", model, tok, ["Review:"], settings=GREEDY, options={"topk": 2},
                   reward_fn=lambda p, c, r: [0.0])
    with pytest.raises(ValueError, match="needs a reward"):
        run_method("args", model, tok, ["Review:"], settings=GREEDY)


# ---------------------------------------------------------------- GenARM


def test_arm_objective_is_the_genarm_loss():
    """−logσ(β_r(s_w − s_l)) on summed log-probs: no reference, no length normalisation."""
    beta = 0.5
    s = [[-3.0, -5.0], [-2.0, -1.5]]
    stats = SequenceStats(logps=T(s, requires_grad=True), ranks=T([[0.0, 1.0], [0.0, 1.0]]),
                          lengths=T([[2.0, 9.0], [7.0, 1.0]]))
    out = build_objective(arm_objective(beta))(stats)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    deltas = [s[0][0] - s[0][1], s[1][0] - s[1][1]]
    assert out.loss.item() == pytest.approx(sum(-lsig(beta * d) for d in deltas) / 2, rel=1e-12)
    g = [[-beta * sig(-beta * d) / 2, beta * sig(-beta * d) / 2] for d in deltas]  # d/ds_w, d/ds_l of the mean
    torch.testing.assert_close(grad, T(g))
    with pytest.raises(ValueError, match="beta_r must be > 0"):
        arm_objective(0.0)


def test_genarm_beta_inf_is_the_base_model(world):
    model, helper, tok = world
    inf = {"beta": math.inf}
    greedy = run_method("genarm", model, tok, PROMPTS, settings=GREEDY, options=inf, helper=helper)
    assert ids_of(greedy) == first(generate(model, tok, PROMPTS, max_new_tokens=20, temperature=0))
    sampled = run_method("genarm", model, tok, PROMPTS, settings=SAMPLE, options=inf, helper=helper)
    base = sample_product([model], [1.0], tok, PROMPTS, max_new_tokens=20, seed=SAMPLE.seed)
    assert ids_of(sampled) == first(base) and all(abs(o.kl) < 1e-5 for o in sampled)
    # a finite β changes the samples and moves away from π
    finite = run_method("genarm", model, tok, PROMPTS, settings=SAMPLE, options={"beta": 1.0}, helper=helper)
    assert ids_of(finite) != ids_of(sampled) and sum(o.kl for o in finite) > 0.1
    with pytest.raises(ValueError, match="beta > 0"):
        run_method("genarm", model, tok, PROMPTS, settings=SAMPLE, options={"beta": 0.0}, helper=helper)


def test_genarm_with_a_trained_arm_raises_the_gold_reward(world, review_world, tmp_path):
    """ARM = π trained ~20 steps with the ARM loss on 256 best-vs-worst pairs labelled by the gold reward.
    On 64 held-out prompts x 2 seeds (seed 0, measured): π 0.09, GenARM β=1 with the untrained ARM 0.08,
    with the trained ARM 0.63 (KL ≈ 2.3 nats)."""
    from alignkit.models.load import load_model
    from alignkit.training import train

    model, _, tok = world
    train_prompts = reviews.prompts(256, seed=1)
    gen = generate(model, tok, train_prompts, k=4, max_new_tokens=32, seed=1)
    records, _ = best_vs_worst(train_prompts, gen.texts, [[reviews.reward(c) for c in r] for r in gen.texts])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    result = train({"model": review_world, "data": str(data), "objective": arm_objective(0.1),
                    "output_dir": str(tmp_path / "arm"), "batch_size": 32, "epochs": 3.0, "lr": 1e-3,
                    "warmup": 0.1, "seed": 0, "max_length": 128, "progress": False})
    arm = load_model(result.final_dir)

    held_out = reviews.prompts(64, seed=2)

    def mean_reward(beta, helper):
        outs = [o for seed in (0, 1) for o in run_method(
            "genarm", model, tok, held_out, options={"beta": beta}, helper=helper,
            settings=InferenceSettings(max_new_tokens=32, seed=seed, batch_size=64))]
        return sum(reviews.reward(o.text) for o in outs) / len(outs), sum(o.kl for o in outs) / len(outs)

    base, _ = mean_reward(math.inf, arm)
    untrained, _ = mean_reward(1.0, model)
    guided, kl = mean_reward(1.0, arm)
    assert guided - base > 0.3 and guided - untrained > 0.3, (base, untrained, guided)
    assert kl > 0.5


# ---------------------------------------------------------------- nudging


def test_nudging_gamma_0_is_the_base_and_gamma_above_1_the_helper(world):
    model, helper, tok = world
    base_g = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=0)
    help_g = generate(helper, tok, PROMPTS, max_new_tokens=20, temperature=0)
    assert first(base_g) != first(help_g)  # the two limits are distinguishable
    for gamma, want, frac in ((0.0, base_g, 0.0), (1.5, help_g, 1.0)):  # options as a dict, as from --set
        out = run_method("nudging", model, tok, PROMPTS, settings=GREEDY, options={"gamma": gamma}, helper=helper)
        assert ids_of(out) == first(want) and all(o.extra["nudged"] == frac for o in out)
    # sampling, same seed: exactly the base's / the helper's own samples
    for gamma, m in ((0.0, model), (1.5, helper)):
        out = run_method("nudging", model, tok, PROMPTS, settings=SAMPLE, options=NudgingOptions(gamma), helper=helper)
        assert ids_of(out) == first(sample_product([m], [1.0], tok, PROMPTS, max_new_tokens=20, seed=SAMPLE.seed))
        assert all((abs(o.kl) < 1e-5) == (gamma == 0.0) for o in out)
    with pytest.raises(ValueError, match="gamma >= 0"):
        run_method("nudging", model, tok, PROMPTS, settings=GREEDY, options=NudgingOptions(-0.1), helper=helper)


def test_nudges_happen_exactly_where_the_base_is_unsure(world):
    model, helper, tok = world
    gamma = 0.5
    out = run_method("nudging", model, tok, PROMPTS, settings=GREEDY, options={"gamma": gamma}, helper=helper,
                     reward_fn=gold)
    total = 0
    for o in out:
        p_ids = prompt_ids(tok, o.prompt)
        ids = o.token_ids + ([tok.eos_token_id] if o.finished else [])
        with torch.no_grad():
            top1 = F.softmax(model(torch.tensor([p_ids + ids])).logits[0, len(p_ids) - 1:-1], -1).max(-1).values
        assert o.extra["nudged_tokens"] == int((top1 < gamma).sum())
        assert o.extra["nudged"] == pytest.approx(o.extra["nudged_tokens"] / len(ids))
        assert o.reward == reviews.reward(o.text) and o.calls == 2 * len(ids)
        total += o.extra["nudged_tokens"]
    assert 0 < total < sum(len(o.token_ids) for o in out)  # a mix of base and helper tokens
