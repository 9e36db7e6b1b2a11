"""Self-play: preference functions, win-rate rewards, SPPO and Nash-MD losses (known math), the Nash-MD
mixture opponent, and both methods learning the review world from a preference derived from its gold
reward."""

import json
import math

import pytest
import torch

from alignkit.objectives import SequenceStats, get_objective
from alignkit.rewards import LiveModels, build_group_reward, build_reward
from alignkit.rewards.opponents import MixtureOpponentReward, mixture_exponents, stable_seed
from alignkit.rewards.preference import (
    FunctionPreference,
    PointwisePreference,
    build_preference,
    reward_preference,
    skew_symmetrize,
    win_rates,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- losses: hand-computed values and gradients
def stats_for(logps, ref, p, valid=None, weights=None):
    lp = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    s = SequenceStats(logps=lp, ref_logps=torch.tensor(ref, dtype=torch.float64),
                      valid=None if valid is None else torch.tensor(valid),
                      weights=None if weights is None else torch.tensor(weights, dtype=torch.float64),
                      rewards=torch.tensor(p, dtype=torch.float64))
    return s, lp


def test_sppo_value_and_gradient_by_hand():
    # rho = [1, -1], P = [.75, .25], eta = 2 -> targets [.5, -.5], residuals [.5, -.5]
    s, lp = stats_for([[-3.0, -5.0]], [[-4.0, -4.0]], [[0.75, 0.25]])
    out = get_objective("sppo")(s, eta=2.0)
    assert out.loss.item() == pytest.approx(0.25)
    out.loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([0.5, -0.5])  # (1/K)·2(rho − target)
    assert out.metrics["winrate/mean"] == pytest.approx(0.5) and out.metrics["target/mean"] == pytest.approx(0.0)
    # the loss and gradient vanish exactly at rho = eta (P − 1/2): the SPPO update's fixed point
    s, lp = stats_for([[-3.5, -4.5]], [[-4.0, -4.0]], [[0.75, 0.25]])
    out = get_objective("sppo")(s, eta=2.0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0) and lp.grad.abs().max().item() == pytest.approx(0.0)


def test_sppo_masks_padding_and_weights_records():
    s, lp = stats_for([[-3.0, -5.0, 0.0], [-1.0, -1.0, -1.0]], [[-4.0, -4.0, 0.0], [-1.0, -1.0, -1.0]],
                      [[0.75, 0.25, float("nan")], [1.0, 0.5, 0.0]], valid=[[True, True, False], [True] * 3],
                      weights=[1.0, 3.0])
    out = get_objective("sppo")(s, eta=2.0)
    row2 = ((0 - 1) ** 2 + 0 + (0 + 1) ** 2) / 3  # rho = 0, targets [1, 0, -1]
    assert out.per_example.tolist() == pytest.approx([0.25, row2])
    assert out.loss.item() == pytest.approx((0.25 + 3 * row2) / 4)
    out.loss.backward()
    assert lp.grad[0, 2].item() == 0.0 and torch.isfinite(lp.grad).all()


def test_nash_md_value_and_gradient_by_hand():
    # per sample −(P − ½)·logp + (β/2)·rho²: [0.75 + 0.25, −1.25 + 0.25] -> mean 0
    s, lp = stats_for([[-3.0, -5.0]], [[-4.0, -4.0]], [[0.75, 0.25]])
    out = get_objective("nash_md")(s, beta=0.5)
    assert out.loss.item() == pytest.approx(0.0)
    out.loss.backward()  # (1/K)·(−(P − ½) + β·rho)
    assert lp.grad[0].tolist() == pytest.approx([0.125, -0.125])
    assert out.metrics["kl"] == pytest.approx(0.0) and out.metrics["preference/mean"] == pytest.approx(0.5)


def test_nash_md_expected_gradient_is_the_regularised_game_gradient():
    """Over y ~ πθ, enumerated as records weighted by πθ(y) (held fixed), the gradient of the registered loss
    is E[∇ℓ(y)] = −∇[P(πθ ≻ q) − β·KL(πθ ‖ π_ref)] exactly, for a general (intransitive) preference."""
    torch.manual_seed(0)
    theta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(4, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(4, dtype=torch.float64), 0)  # the opponent (mixture) distribution
    pm = skew_symmetrize(torch.rand(4, 4, dtype=torch.float64))  # a general (intransitive) preference
    beta = 0.3
    logpi = torch.log_softmax(theta, 0)
    p_vs_q = pm @ q  # P(y ≻ y') averaged over y' ~ q
    s = SequenceStats(logps=logpi[:, None], ref_logps=ref[:, None], rewards=p_vs_q[:, None],
                      weights=logpi.exp().detach())
    grad = torch.autograd.grad(get_objective("nash_md")(s, beta=beta).loss, theta)[0]
    logpi = torch.log_softmax(theta, 0)
    pi = logpi.exp()
    game = (pi * p_vs_q).sum() - beta * (pi * (logpi - ref)).sum()
    true = torch.autograd.grad(-game, theta)[0]
    assert torch.allclose(grad, true, atol=1e-12), (grad, true)


def test_selfplay_losses_refuse_rewards_that_are_not_probabilities():
    s, _ = stats_for([[-3.0, -5.0]], [[-4.0, -4.0]], [[2.0, -1.0]])
    for name in ("sppo", "nash_md"):
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*winrate.*unfinished_penalty in \[0, 1\]"):
            get_objective(name)(s)
    with pytest.raises(ValueError, match="eta must be > 0"):
        get_objective("sppo")(stats_for([[-1.0]], [[-1.0]], [[0.5]])[0], eta=0.0)


# ---------------------------------------------------------------- preferences and win rates
def lex_reward(text):
    return text.count("+") - text.count("-")


def test_bradley_terry_matrix_and_win_rates_by_hand():
    pref = reward_preference(lambda p, c, r: [float(lex_reward(x)) for x in c])
    m = pref.matrix(["x"], [["++", "+", "-"]])
    assert m[0, 0, 1].item() == pytest.approx(sig(1.0)) and m[0, 0, 2].item() == pytest.approx(sig(3.0))
    w = win_rates(m)[0].tolist()
    assert w == pytest.approx([(sig(1) + sig(3)) / 2, (sig(-1) + sig(2)) / 2, (sig(-3) + sig(-2)) / 2])
    assert sum(w) / 3 == pytest.approx(0.5)


def test_win_rates_average_one_half_for_any_skew_symmetrised_preference():
    torch.manual_seed(1)
    for k in (2, 3, 5):
        m = skew_symmetrize(torch.rand(7, k, k, dtype=torch.float64))
        assert torch.allclose(m + m.transpose(1, 2), torch.ones_like(m))
        assert torch.allclose(win_rates(m).mean(1), torch.full((7,), 0.5, dtype=torch.float64))
    assert win_rates(torch.rand(2, 1, 1)).tolist() == [[0.5], [0.5]]  # no opponent


def biased_pref(prompt, a, b):
    """Not skew-symmetric: prefers the longer answer, and the first position a little."""
    return min(1.0, 0.1 + 0.8 * (len(a) > len(b)) + 0.1)


def test_a_python_preference_is_order_averaged():
    pref = FunctionPreference(biased_pref, "biased")
    assert pref(["x"], ["long"], ["s"]) == [1.0] and pref(["x"], ["s"], ["long"]) == [pytest.approx(0.2)]
    assert pref.pair(["x"], ["long"], ["s"]) == [pytest.approx(0.9)]
    m = pref.matrix(["x"], [["aaa", "b", "cc"]])
    assert torch.allclose(m + m.transpose(1, 2), torch.ones_like(m))
    assert win_rates(m)[0].tolist() == pytest.approx([0.9, 0.1, 0.5])


def test_rock_paper_scissors_cycle_only_a_general_preference_can_express():
    """A cyclic preference (GPM embeddings 120° apart): each beats the next, and the group's win rates are
    all ½ (the uniform Nash equilibrium). No scalar reward does this: BT win rates are all ½ only when all
    rewards are equal, and then every pairwise preference is ½."""
    from alignkit.objectives.reward_structured import gpm_score

    angle = {"rock": 0.0, "paper": 4 * math.pi / 3, "scissors": 2 * math.pi / 3}
    pref = PointwisePreference(lambda p, c, r: [[math.cos(angle[x]), math.sin(angle[x])] for x in c],
                               lambda a, b: torch.sigmoid(gpm_score(a, b, beta=3.0)), "rps")
    beats = pref(["x"] * 3, ["paper", "scissors", "rock"], ["rock", "paper", "scissors"])
    assert all(p > 0.9 for p in beats)  # paper ≻ rock, scissors ≻ paper, rock ≻ scissors: a cycle
    w = win_rates(pref.matrix(["x"], [["rock", "paper", "scissors"]]))[0]
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.5])
    for r in ([0.0, 1.0, 2.0], [2.0, 0.0, 1.0]):  # any non-constant scalar reward orders the three
        bt = reward_preference(lambda p, c, rows, r=r: [r[["rock", "paper", "scissors"].index(x)] for x in c])
        assert max(win_rates(bt.matrix(["x"], [["rock", "paper", "scissors"]]))[0].tolist()) > 0.6


def test_winrate_reward_reads_the_groups_it_is_given():
    fn = build_group_reward("winrate:bt:alignkit.worlds.reviews:reward")
    groups = [[" great.", " dull.", " great and dull."], [" fun.", " fun.", " boring."]]
    out = fn(["a", "a"], groups, [{}, {}])  # one prompt text twice, rows alike: still two groups of K = 3
    r = [1.0, -1.0, 0.0]
    assert out.rewards[0] == pytest.approx([(sig(r[0] - r[1]) + sig(r[0] - r[2])) / 2, (sig(-2) + sig(-1)) / 2,
                                            (sig(1) + sig(-1)) / 2])
    assert out.rewards[1] == pytest.approx([(0.5 + sig(2)) / 2, (0.5 + sig(2)) / 2, sig(-2)])
    assert out.metrics == {}
    ragged = fn(["a", "b"], [groups[0], groups[1][:2]], [{}, {}])  # groups of different sizes: one call per size
    assert ragged.rewards[0] == pytest.approx(out.rewards[0]) and ragged.rewards[1] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="group reward"):  # not a pointwise reward: no groups to guess
        build_reward("winrate:bt:alignkit.worlds.reviews:reward")


def test_preference_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="preference spec"):
        build_preference("nothing")
    with pytest.raises(ValueError, match="cannot load"):
        build_preference("alignkit.worlds.reviews:no_such_fn")
    bad = FunctionPreference(lambda a, b: 1.5, "bad")
    with pytest.raises(ValueError, match=r"returned 1.5.*\[0, 1\]"):
        bad.matrix(["x"], [["a", "b"]])


# ---------------------------------------------------------------- the Nash-MD mixture opponent
def test_mixture_with_alpha_zero_is_the_policy(tiny):
    from alignkit.generation.decoding import sample_product
    from alignkit.models.load import frozen_copy

    model, tok = tiny
    other = frozen_copy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert mixture_exponents(0.0) == [1.0, 0.0] and mixture_exponents(0.25) == [0.75, 0.25]
    with pytest.raises(ValueError, match="mixture_alpha"):
        mixture_exponents(1.5)
    args = dict(tokenizer=tok, prompts=["The movie was", "The plot"], k=3, max_new_tokens=6, seed=3)
    mix = sample_product([model, other], mixture_exponents(0.0), **args)
    alone = sample_product([model], [1.0], **args)
    assert mix.token_ids == alone.token_ids
    assert sample_product([model, other], mixture_exponents(0.5), **args).token_ids != alone.token_ids


def test_mixture_reward_is_a_deterministic_probability(tiny):
    from types import SimpleNamespace

    from alignkit.engine.reference import ModelReference
    from alignkit.models.load import frozen_copy

    model, tok = tiny
    fn = build_group_reward("mixture:bt:alignkit.worlds.reviews:reward")
    cfg = SimpleNamespace(mixture_alpha=0.5, max_new_tokens=5, temperature=1.0, top_p=1.0, chat_template="auto",
                          chat_template_kwargs={})
    models = LiveModels(model, ModelReference(frozen_copy(model), "copy", 0), tok, cfg)
    prompts, groups = ["The movie was"], [[" great.", " dull.", " ok."]]
    out = fn(prompts, groups, [{}], models)
    assert fn.needs_models and out == fn(prompts, groups, [{}], models) and all(0 < x < 1 for x in out.rewards[0])
    assert out.metrics["preference/mean"] == pytest.approx(sum(out.rewards[0]) / 3)
    assert stable_seed(["a"], ["b"]) == stable_seed(["a"], ["b"]) != stable_seed(["a"], ["c"])
    with pytest.raises(ValueError, match="decodes with the run's policy"):
        fn(prompts, groups, [{}])


def test_mixture_opponents_end_at_the_runs_stop_strings(tiny):
    """The policy's samples end before a stop string (generation.generate); the opponents they are compared
    with must too, or a stop string would hand every comparison to whichever side runs on."""
    from types import SimpleNamespace

    from alignkit.engine.reference import ModelReference
    from alignkit.models.load import frozen_copy

    model, tok = tiny
    seen = []

    def pref(prompts, firsts, seconds, rows):
        seen.append(list(seconds))
        return [0.5] * len(firsts)

    fn = MixtureOpponentReward(FunctionPreference(pref, "record"))
    cfg = SimpleNamespace(mixture_alpha=0.5, max_new_tokens=10, temperature=1.0, top_p=1.0, chat_template="auto",
                          chat_template_kwargs={})
    models = LiveModels(model, ModelReference(frozen_copy(model), "copy", 0), tok, cfg)
    prompts, groups = ["The movie was", "The plot was", "I think"], [[" a"], [" b"], [" c"]]
    fn(prompts, groups, [{}] * 3, models)
    plain = seen[0]  # first call of pair(): (completions, opponents)
    stop = [next(t for t in plain if len(t) > 4)[2:4]]  # a string one opponent contains
    cfg.stop = stop
    seen.clear()
    fn(prompts, groups, [{}] * 3, models)
    cut = seen[0]
    assert cut == [t[: t.find(stop[0])] if stop[0] in t else t for t in plain]
    assert cut != plain and not any(stop[0] in t for t in cut)


def test_winrate_rollout_groups_are_each_prompts_k_samples_even_with_shared_rows(tiny):
    """sample_experience hands a win-rate reward each prompt's K samples as one group: a repeated prompt text
    whose rows are one shared object (rows=[{}] * B) is not merged with its neighbour into one group of 2K."""
    from alignkit.rollout import sample_experience

    model, tok = tiny
    fn = build_group_reward("winrate:bt:rule:length:100")
    prompts, k = ["The movie was"] * 2, 3
    exp = sample_experience(model, tok, prompts, [{}] * 2, fn, k=k, seed=5, max_new_tokens=8)
    own = [x for g in exp.texts for x in fn(prompts[:1], [g], [{}]).rewards[0]]  # each group alone
    assert exp.rewards.flatten().tolist() == pytest.approx(own)
    assert exp.rewards.sum(1).tolist() == pytest.approx([k / 2, k / 2])  # each group's win rates average ½


# ---------------------------------------------------------------- online runs and learning
def run_online(tiny_path, tmp_path, *items):
    from alignkit import cli

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"The movie number {i} was"}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    argv = ["train", f"model={tiny_path}", f"prompts={path}", f"output_dir={out}", "progress=false", "batch_size=4",
            "max_new_tokens=4", "lr=1e-3", "max_steps=2", *items]
    assert cli.main(argv) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sppo_and_nash_md_run_online(tiny_path, tmp_path):
    rows = run_online(tiny_path, tmp_path / "sppo", "objective=sppo", "num_samples=3",
                      "reward=winrate:bt:alignkit.worlds.reviews:reward")
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(r["winrate/mean"] == pytest.approx(0.5) for r in steps)  # a group averages ½
    rows = run_online(tiny_path, tmp_path / "nash", "objective=nash_md", "num_samples=2", "mixture_alpha=0.5",
                      "reward=mixture:bt:alignkit.worlds.reviews:reward")
    steps = [r for r in rows if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) and 0 < r["reward/mean"] < 1 for r in steps)
    # the opponents' side is logged: the mean preference is the mean reward (P(y ≻ y') is the reward)
    assert all(r["preference/mean"] == pytest.approx(r["reward/mean"], abs=1e-6) for r in steps)
    assert all(r["opponent/length_chars"] > 0 for r in steps)


def test_a_weighted_list_keeps_the_mixture_opponents_needs(tiny_path, tmp_path):
    from alignkit.rewards import Weighted

    spec = [{"reward": "mixture:bt:alignkit.worlds.reviews:reward", "weight": 2.0},
            {"reward": "rule:length:4", "weight": 0.0}]
    fn = build_group_reward(spec)
    assert isinstance(fn, Weighted) and fn.needs_models  # given the live models like the bare reward
    rows = run_online(tiny_path, tmp_path / "nash", "objective=nash_md", "num_samples=2", "mixture_alpha=0.5",
                      "reward=[{reward: 'mixture:bt:alignkit.worlds.reviews:reward', weight: 0.5}, "
                      "{reward: 'mixture:bt:alignkit.worlds.reviews:reward', weight: 0.5}]")
    steps = [r for r in rows if "loss" in r]  # both parts draw the same seeded opponents: the mean is one part's
    assert steps and all(r["reward/mean"] == pytest.approx(r["preference/mean"], abs=1e-6) for r in steps)


def test_a_gpm_reward_model_gives_its_skew_symmetric_preference(tiny_path, tmp_path):
    from alignkit.executor.reward_model import load_reward_model, write_info
    from alignkit.models.load import load_tokenizer
    from alignkit.objectives import build_objective
    from alignkit.objectives.reward_structured import gpm_score

    path = tmp_path / "gpm"
    load_reward_model(tiny_path, num_outputs=4).save_pretrained(path)
    load_tokenizer(tiny_path).save_pretrained(path)
    write_info(path, build_objective({"name": "gpm", "dim": 4, "beta": 5.0}), 4, 0)
    pref = build_preference(f"rm:{path}")
    assert pref.name.startswith("gpm:")
    texts = [" good.", " bad.", " fine."]
    m = pref.matrix(["The movie was"], [texts])[0]
    assert torch.allclose(m + m.T, torch.ones_like(m))
    e = pref._embed(["The movie was"] * 3, texts, [{}] * 3)  # the model's 4-dim embeddings
    assert e.shape == (3, 4) and e.abs().sum() > 0
    assert m[0, 1].item() == pytest.approx(torch.sigmoid(gpm_score(e[0], e[1], beta=5.0)).item())
    assert pref(["The movie was"], [" good."], [" bad."]) == [pytest.approx(m[0, 1].item())]
