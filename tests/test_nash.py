"""Nash learning by online IPO (objectives/nash.py, algorithms/nash.py): the pairwise soft-IPO identity
the loss is built on, and the property that defines EGPO and IPO-MD — on a cyclic preference a > b > c > a
with a tabular softmax policy they reach the uniform Nash equilibrium, where the plain self-play steps
(online IPO's single step, SPPO against the previous iterate) keep circling it."""

import json
import math

import pytest
import torch
from test_selfplay import run_online

from alignkit.algorithms.nash import Extragradient
from alignkit.errors import ConfigError
from alignkit.objectives import SequenceStats, get_objective
from alignkit.objectives.nash import pairwise_ipo
from alignkit.rewards.preference import skew_symmetrize, win_rates


def _stats(rho, p, valid=None):
    valid = torch.ones_like(rho, dtype=torch.bool) if valid is None else valid
    return SequenceStats(logps=rho, ref_logps=torch.zeros_like(rho), valid=valid, rewards=p)


@pytest.mark.parametrize("name", ["online_ipo", "ipo_md", "egpo"])
def test_loss_and_gradient_equal_the_soft_ipo_loss_on_every_pair(name):
    """Σ_{i<j} (ρ_i − ρ_j − (P_ij − ½)/β)² over a record's pairs, from the preference matrix itself, has the
    loss's gradient; the values differ by a constant in ρ (checked at two points)."""
    torch.manual_seed(0)
    b, k, beta = 3, 5, 0.3
    m = skew_symmetrize(torch.rand(b, k, k, dtype=torch.float64))
    w = win_rates(m)

    def reference(rho):
        i, j = torch.triu_indices(k, k, 1)
        pair = (rho[:, i] - rho[:, j] - (m[:, i, j] - 0.5) / beta).square()
        return (pair.sum(1) / (k * (k - 1) / 2)).mean()

    values = []
    for _ in range(2):
        rho = torch.randn(b, k, dtype=torch.float64, requires_grad=True)
        out = get_objective(name)(_stats(rho, w), beta=beta)
        ref = reference(rho)
        g, g_ref = torch.autograd.grad(out.loss, rho)[0], torch.autograd.grad(ref, rho)[0]
        torch.testing.assert_close(g, g_ref)
        values.append(float(out.loss.detach() - ref.detach()))
    assert values[0] == pytest.approx(values[1])


def test_by_hand_two_samples_is_ipo_with_a_soft_label():
    """K = 2: (ρ_0 − ρ_1 − (P − ½)/β)² with P = P(y_0 ≻ y_1) = w_0; padded slots and short records drop out."""
    rho = torch.tensor([[0.3, -0.2, 9.0], [1.0, 5.0, 7.0]], requires_grad=True)
    p = torch.tensor([[0.8, 0.2, 0.5], [0.5, 0.5, 0.5]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    out = get_objective("egpo")(_stats(rho, p, valid), beta=0.5)
    expected = (0.3 + 0.2 - (0.8 - 0.5) / 0.5) ** 2
    assert float(out.loss.detach()) == pytest.approx(expected)
    (g,) = torch.autograd.grad(out.loss, rho)
    d = 2 * (0.5 - 0.6)
    torch.testing.assert_close(g, torch.tensor([[d, -d, 0.0], [0.0, 0.0, 0.0]]))
    per, rows = pairwise_ipo(rho.detach(), p, valid, 0.5)
    assert rows.tolist() == [True, False] and float(per[1]) == 0.0


def test_beta_must_be_positive():
    with pytest.raises(ConfigError, match="egpo hyper-parameter beta must be > 0"):
        get_objective("egpo")(_stats(torch.zeros(1, 2), torch.full((1, 2), 0.5)), beta=0.0)


# ---------------------------------------------------------------- the cyclic game
CYCLE = torch.full((3, 3), 0.5, dtype=torch.float64)
for _i, _j in [(0, 1), (1, 2), (2, 0)]:  # a ≻ b, b ≻ c, c ≻ a, each surely
    CYCLE[_i, _j], CYCLE[_j, _i] = 1.0, 0.0
UNIFORM_LOG = torch.full((3,), -torch.log(torch.tensor(3.0, dtype=torch.float64)))


def play(method: str, steps: int = 600, beta: float = 0.02, lr: float = 0.008, b: int = 256, k: int = 4,
         alpha: float = 0.5) -> list[float]:
    """A tabular softmax policy trained by ``method`` on the cycle, through the registered objective: each
    step samples b x k responses (of πθ, or of the mixture πθ^{1−α}·π_ref^α for ipo_md), scores them by their
    win rates within each group, and takes an SGD step (egpo: through `Extragradient`, as its recipe does).
    π_ref is uniform, so the β-regularised Nash equilibrium is uniform too. Returns max |π − ⅓| per step."""
    gen = torch.Generator().manual_seed(1)
    theta = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    extragradient, distance = Extragradient(), []
    for step in range(steps):
        with torch.no_grad():
            logp = torch.log_softmax(theta, 0)
            mu = torch.softmax((1 - alpha) * logp + alpha * UNIFORM_LOG, 0) if method == "ipo_md" else logp.exp()
        y = torch.multinomial(mu, b * k, replacement=True, generator=gen).view(b, k)
        w = win_rates(CYCLE[y[:, :, None], y[:, None, :]])
        if method == "egpo":
            extragradient.before_update([theta], opt, step)
        logp = torch.log_softmax(theta, 0)
        # sppo's reference is the previous iterate (its paper's π_t): a multiplicative-weights step
        ref = logp.detach()[y] if method == "sppo" else UNIFORM_LOG[y]
        stats = SequenceStats(logps=logp[y], ref_logps=ref, valid=torch.ones(b, k, dtype=torch.bool), rewards=w)
        loss = get_objective(method)(stats, **({"eta": 1.0} if method == "sppo" else {"beta": beta})).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        distance.append(float((torch.softmax(theta.detach(), 0) - 1 / 3).abs().max()))
    return distance


@pytest.mark.parametrize("method", ["egpo", "ipo_md"])
def test_egpo_and_ipo_md_reach_the_uniform_nash_equilibrium_of_a_cycle(method):
    last = play(method)[-100:]
    assert max(last) < 0.08 and sum(last) / len(last) < 0.04, (max(last), sum(last) / len(last))


@pytest.mark.parametrize("method", ["online_ipo", "sppo"])
def test_plain_self_play_keeps_circling_the_equilibrium(method):
    last = play(method)[-100:]  # measured: online_ipo 0.15 to 0.25 from ⅓, sppo 0.22; egpo and ipo_md 0.03
    assert min(last) > 0.1 and sum(last) / len(last) > 0.15, (min(last), sum(last) / len(last))


def test_extragradient_restores_weights_and_optimizer_state_every_second_step():
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.Adam([theta], lr=0.1)
    eg = Extragradient()
    assert eg.before_update([theta], opt, 1) == 0  # nothing remembered (a resumed run): a plain step
    assert eg.before_update([theta], opt, 0) == 1
    start, state = theta.detach().clone(), {k: v.clone() for k, v in opt.state_dict()["state"].get(0, {}).items()}
    theta.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert not torch.equal(theta.detach(), start)
    assert eg.before_update([theta], opt, 1) == 2
    assert torch.equal(theta.detach(), start) and opt.state_dict()["state"].get(0, {}) == state


# ---------------------------------------------------------------- online, through the recipes
WINRATE = "reward=winrate:bt:alignkit.worlds.reviews:reward"


def test_egpo_alternates_half_and_full_steps_online(tiny_path, tmp_path):
    rows = [r for r in run_online(tiny_path, tmp_path, "objective=egpo", "num_samples=3", WINRATE, "log_every=1")
            if "loss" in r]
    assert [r["egpo/phase"] for r in rows] == [1.0, 2.0]  # θ_{½} from θ_0, then θ_1 from θ_0 again
    assert all(math.isfinite(r["loss"]) and r["winrate/mean"] == pytest.approx(0.5) for r in rows)


def test_ipo_md_samples_from_the_policy_reference_mixture(tiny_path, tmp_path, monkeypatch):
    import alignkit.algorithms.nash as nash

    seen = []

    def spy(models, exponents, *args, **kwargs):
        seen.append(list(exponents))
        return sample_product(models, exponents, *args, **kwargs)

    sample_product = nash.sample_product
    monkeypatch.setattr(nash, "sample_product", spy)
    rows = [r for r in run_online(tiny_path, tmp_path, "objective=ipo_md", "num_samples=2", "mixture_alpha=0.25",
                                  WINRATE) if "loss" in r]
    assert seen == [[0.75, 0.25], [0.75, 0.25]] and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("items, message", [
    (["objective=egpo", "updates_per_batch=2"], "objective=egpo takes one update per rollout"),
    (["objective=ipo_md", "stop=['.']"], "remove stop="),
    (["objective=online_ipo", "num_samples=1"], "num_samples must be >= 2"),
])
def test_settings_a_recipe_cannot_train_with_are_one_line_errors(items, message, tiny_path, tmp_path, capfd):
    import logging

    from alignkit import cli

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The movie was"}) + "\n")
    logging.getLogger("alignkit").handlers.clear()
    rc = cli.main(["train", f"model={tiny_path}", f"prompts={prompts}", f"output_dir={tmp_path / 'r'}",
                   "num_samples=2", "progress=false", WINRATE, *items])
    err = capfd.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
