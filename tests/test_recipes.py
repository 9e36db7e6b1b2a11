"""Online recipes (src/alignkit/algorithms/): the engine names no method, every rollout objective has a
recipe (a missing one is a one-line config error), PPO's value model belongs to its recipe, and CoPG — the
worked example of a new method — against closed forms: its gradient on on-policy samples is RLOO's."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from closed_forms import D

from alignkit.algorithms.preference import FRESH_SAMPLES
from alignkit.algorithms.recipe import RECIPES, recipe_for
from alignkit.errors import ConfigError
from alignkit.objectives import SequenceStats, available, get_objective
from alignkit.objectives.rl import rloo_advantages

SRC = Path(__file__).resolve().parents[1] / "src" / "alignkit"


# ---------------------------------------------------------------- the layers
def test_no_online_method_or_family_name_appears_in_the_engine():
    online = {n for n in available() if get_objective(n).inputs == "rollout"} | set(RECIPES)
    names = online | {r.family for r in RECIPES.values()} | {"algorithms", "OnlineTrainer", "alignkit.training"}
    pattern = re.compile(r"(?<![\w.])(" + "|".join(sorted(map(re.escape, names))) + r")(?!\w)", re.IGNORECASE)
    found = [f"{path.name}:{i}: {m.group(0)}" for path in sorted((SRC / "engine").glob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) for m in pattern.finditer(line)]
    assert {"grpo", "ppo", "sppo", "raft"} <= online and not found, found


def test_rollout_rewards_and_engine_do_not_import_the_recipes():
    upward = re.compile(r"^\s*(from|import) alignkit\.(algorithms|training)\b", re.MULTILINE)
    for package in ("rollout", "rewards", "engine"):
        for path in (SRC / package).glob("*.py"):
            assert not upward.search(path.read_text()), path
    rollout = "\n".join(p.read_text() for p in (SRC / "rollout").glob("*.py"))
    assert not re.search(r"^\s*from alignkit\.engine\.(online|value|iterative|trainer)\b", rollout, re.MULTILINE)


def test_every_rollout_objective_has_a_recipe_and_a_missing_one_is_a_config_error():
    for name in (n for n in available() if get_objective(n).inputs == "rollout"):
        assert name in RECIPES, name
    fake = SimpleNamespace(name="my_pg", inputs="rollout", terms=[SimpleNamespace(spec=SimpleNamespace(name="my_pg"))])
    with pytest.raises(ConfigError, match="objective my_pg reads rollouts, but no online recipe declares"):
        recipe_for(fake, FRESH_SAMPLES)
    dpo = SimpleNamespace(inputs="logps", terms=[SimpleNamespace(spec=SimpleNamespace(name="dpo"))])
    first, second = recipe_for(dpo, FRESH_SAMPLES), recipe_for(dpo, FRESH_SAMPLES)
    assert first.family == "online_preference" and first is not second  # a fresh recipe per run
    assert RECIPES["remax"].greedy_baseline and not RECIPES["grpo"].greedy_baseline


def test_ppo_owns_its_value_model(tiny_path, tmp_path):
    from alignkit.algorithms.online import OnlineTrainer
    from alignkit.config import TrainConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("The movie was\nThe plot was\n")
    trainer = OnlineTrainer(TrainConfig(model=tiny_path, prompts=str(prompts), objective="ppo", batch_size=2,
                                        num_samples=2, max_new_tokens=3, reward="rule:length:4", progress=False,
                                        output_dir=str(tmp_path / "r")))
    value = trainer.recipe.value
    assert "alignkit_value" not in dict(trainer.policy.named_modules())  # never grafted onto the policy
    assert trainer.extra_modules == {"alignkit_value": value}
    groups = getattr(trainer.optimizer, "optimizer", trainer.optimizer).param_groups
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in value.parameters() if p.requires_grad}
    assert trainer.reference is not None  # kl_coef > 0: the recipe asked for one, the trainer built it


# ---------------------------------------------------------------- CoPG
def copg_stats(logps, ref, rewards, valid=None):
    lp = torch.tensor(logps, dtype=D, requires_grad=True)
    s = SequenceStats(logps=lp, ref_logps=torch.tensor(ref, dtype=D), rewards=torch.tensor(rewards, dtype=D),
                      valid=None if valid is None else torch.tensor(valid))
    return s, lp


def test_copg_value_by_hand():
    s, _ = copg_stats([[-1.0, -2.0]], [[-1.5, -1.0]], [[1.0, 0.0]])
    beta = 0.5  # ρ = [0.5, −1]: R̂ = [1 − 0.25, 0 + 0.5]; two ordered pairs of (0.75 − 0.5)²
    out = get_objective("copg")(s, beta=beta)
    assert out.loss.item() == pytest.approx(2 * 0.25**2 / (4 * beta * 2), rel=1e-12)
    # a pair with r_w − r_l = ½ is IPO's loss at τ = β, times β/4
    s, _ = copg_stats([[-1.0, -2.0]], [[-1.5, -1.0]], [[0.5, 0.0]])
    h = 0.5 - (-1.0)
    assert get_objective("copg")(s, beta=beta).loss.item() == pytest.approx(beta / 4 * (h - 1 / (2 * beta)) ** 2)


def test_copg_gradient_on_policy_samples_is_the_rloo_gradient():
    """Samples of πθ: CoPG's gradient in each sample's log-prob equals that of ``rloo`` (sum aggregation,
    ratio 1) with the regularised rewards r − β·ρ; with πθ = π_ref (ρ = 0) RLOO's own."""
    g = torch.Generator().manual_seed(0)
    B, K, T, beta = 3, 4, 5, 0.3
    token_lp = (-torch.rand(B, K, T, generator=g, dtype=D)).requires_grad_(True)
    mask = torch.rand(B, K, T, generator=g) > 0.2
    mask[..., 0] = True
    ref = -torch.rand(B, K, generator=g, dtype=D) * T
    r = torch.randn(B, K, generator=g, dtype=D)
    for ref_seq in (ref, None):  # None: the policy is the reference
        seq = torch.where(mask, token_lp, torch.zeros_like(token_lp)).sum(-1)
        ref_lp = seq.detach() if ref_seq is None else ref_seq
        out = get_objective("copg")(SequenceStats(logps=seq, ref_logps=ref_lp, rewards=r), beta=beta)
        (copg_grad,) = torch.autograd.grad(out.loss, token_lp)
        adv = rloo_advantages(r - beta * (seq.detach() - ref_lp))
        stats = SequenceStats(logps=seq.detach(), token_logps=token_lp, token_mask=mask,
                              extra={"old_token_logps": token_lp.detach(), "advantages": adv})
        rloo = get_objective("rloo")(stats, loss_agg="sum")
        (rloo_grad,) = torch.autograd.grad(rloo.loss, token_lp)
        torch.testing.assert_close(copg_grad, rloo_grad, rtol=1e-10, atol=1e-12)
        assert copg_grad.abs().sum() > 0


def test_copg_gradient_vanishes_at_the_regularised_optimum_and_masks_padding():
    beta = 0.5
    r = [[1.0, -0.5, 0.25]]
    ref = [[-2.0, -1.0, -3.0]]
    optimum = [[ref[0][i] + r[0][i] / beta + 7.0 for i in range(3)]]  # log π* = log π_ref + r/β + const
    s, lp = copg_stats(optimum, ref, r)
    out = get_objective("copg")(s, beta=beta)
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20) and grad.abs().max() < 1e-12
    s, lp = copg_stats([[-1.0, -2.0, math.nan]], [[-1.5, -1.0, 0.0]], [[1.0, 0.0, math.nan]], [[True, True, False]])
    out = get_objective("copg")(s, beta=beta)
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert torch.isfinite(out.loss) and grad[0, 2] == 0 and out.metrics["pairs"] == 2
    with pytest.raises(ConfigError, match="beta must be finite and > 0"):
        get_objective("copg")(s, beta=0.0)


@pytest.mark.parametrize("objective", ["copg", "dr_grpo", "raft"])
def test_new_methods_train_online_through_their_recipes(objective, tiny_path, tmp_path):
    from alignkit import cli

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"The movie number {i} was"}) + "\n" for i in range(4)))
    argv = ["train", f"model={tiny_path}", f"prompts={prompts}", f"output_dir={tmp_path / 'r'}", "progress=false",
            "batch_size=2", "num_samples=3", "max_new_tokens=4", "max_steps=1", "reward=rule:length:4",
            f"objective={objective}"]
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["loss"]) and rows[0]["grad_norm"] > 0
