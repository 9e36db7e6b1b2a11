"""PPO in the online loop (algorithms/value.py): the value model reads the state before each completion token
(packed = padded = the model's own forward), the rollout targets compose token rewards, GAE and whitening
as the formulas say, a PPO run logs its metrics, saves final/value/ and resumes exactly; eval_greedy.

GAE itself (γ = λ = 1 is the Monte-Carlo return minus the value), the clipped value loss and the token
rewards' placement are tested by hand in test_objectives_rl.py and test_objectives_rl_losses.py."""

import dataclasses
import json
import math

import pytest
import torch

from alignkit.algorithms.value import (
    ValueModel,
    explained_variance,
    load_value_model,
    ppo_targets,
    whiten_all,
)
from alignkit.config import ConfigError, TrainConfig
from alignkit.executor.logprobs import pad_per_slot

D = torch.float64


def T(x):
    return torch.tensor(x, dtype=D)


# ---------------------------------------------------------------- targets (pure)
def test_targets_are_score_minus_future_kl_minus_value_with_gamma_lambda_one():
    # one prompt, K = 2; sample 0 has 3 tokens, sample 1 has 2 (then padding holding garbage)
    old = T([[[-1.0, -2.0, -0.5], [-0.3, -0.7, 9.0]]])
    ref = T([[[-1.5, -1.0, -0.5], [-0.1, -0.9, 9.0]]])  # k1 = old − ref: [0.5, −1, 0], [−0.2, 0.2]
    v = T([[[0.1, 0.2, 0.3], [0.4, 0.5, 7.0]]])
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    scores = T([[2.0, -1.0]])
    adv, ret, kl = ppo_targets(old, ref, v, mask, scores, kl_coef=0.1, gamma=1.0, lam=1.0)
    torch.testing.assert_close(kl, T([[[0.5, -1.0, 0.0], [-0.2, 0.2, 0.0]]]))
    # return from t = score − β·Σ_{s≥t} kl_s; advantage = return − V_t
    r0 = [2.0 - 0.1 * (0.5 - 1.0), 2.0 - 0.1 * -1.0, 2.0]
    r1 = [-1.0 - 0.1 * 0.0, -1.0 - 0.1 * 0.2, 0.0]
    torch.testing.assert_close(ret, T([[r0, r1]]))
    torch.testing.assert_close(adv, T([[[r0[0] - 0.1, r0[1] - 0.2, r0[2] - 0.3], [r1[0] - 0.4, r1[1] - 0.5, 0.0]]]))
    # no reference: no penalty, whatever kl_coef
    adv0, _, kl0 = ppo_targets(old, None, v, mask, scores, kl_coef=0.1, gamma=1.0, lam=1.0)
    assert float(kl0.abs().sum()) == 0.0
    torch.testing.assert_close(adv0[0, 0], T([1.9, 1.8, 1.7]))


def test_targets_discount_by_gamma_lambda():
    # γ = 0.5, λ = 0 (one-step TD): A_t = r_t + γ·V_{t+1} − V_t, the score only at the last token
    v, mask = T([[[1.0, 2.0, 4.0]]]), torch.ones(1, 1, 3, dtype=torch.bool)
    adv, ret, _ = ppo_targets(torch.zeros(1, 1, 3, dtype=D), None, v, mask, T([[8.0]]), 0.0, 0.5, 0.0)
    torch.testing.assert_close(adv, T([[[0.5 * 2 - 1, 0.5 * 4 - 2, 8.0 - 4.0]]]))
    torch.testing.assert_close(ret, adv + v)


def test_explained_variance_and_whitening_over_the_whole_rollout():
    r, mask = T([1.0, 2.0, 3.0, 4.0, 99.0]), torch.tensor([True, True, True, True, False])
    assert explained_variance(r, r, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(r, 2.5), r, mask) == pytest.approx(0.0)
    # V = R + e with e = [1, −1, 1, −1]: Var(e) = 4/3, Var(R) = 5/3 → 1 − 0.8 = 0.2
    assert explained_variance(r + T([1.0, -1.0, 1.0, -1.0, 0.0]), r, mask) == pytest.approx(0.2)
    assert math.isnan(explained_variance(r, torch.ones_like(r), mask))
    a1, m1 = T([[1.0, 2.0, 5.0]]), torch.tensor([[True, True, False]])
    a2, m2 = T([[3.0], [4.0]]), torch.tensor([[True], [True]])
    w1, w2 = whiten_all([a1, a2], [m1, m2])
    flat = torch.cat([w1[m1], w2[m2]])  # 1..4 together: mean 2.5, unbiased std sqrt(5/3)
    torch.testing.assert_close(flat, (T([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(5 / 3), rtol=1e-6, atol=1e-7)
    assert float(w1[0, 2]) == 0.0


# ---------------------------------------------------------------- the value model
def test_values_sit_at_the_state_before_each_token_packed_equals_padded(tiny, tiny_path):
    from alignkit.rollout import sample_experience

    model, tok = tiny
    exp = sample_experience(model, tok, ["The movie was", "A long prompt about the plot was"], [{}, {}],
                            lambda p, c, r: [0.0] * len(c), k=3, seed=3, max_new_tokens=6)
    torch.manual_seed(0)
    value = load_value_model(tiny_path, model.config.vocab_size, tok.pad_token_id).eval()
    with torch.no_grad():
        got = {}
        for layout in ("shared_prompt", "padded"):
            batch = exp.data.collate([0, 1], tok.pad_token_id, layout, 256)
            got[layout] = pad_per_slot(value(batch), batch)
    torch.testing.assert_close(got["shared_prompt"][0], got["padded"][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got["shared_prompt"][1], got["padded"][1])
    # independent check through transformers' own forward: the score read at the last token of
    # prompt + y_<t is V_t, for every t of one sample
    hf = value.model
    tr = exp.data.items[1]
    ids = tr.prompt_ids + tr.completion_ids(2)
    n = len(tr.completion_ids(2))
    with torch.no_grad():
        own = [float(hf(input_ids=torch.tensor([ids[: len(ids) - n + t]])).logits[0, 0]) for t in range(n)]
    torch.testing.assert_close(got["padded"][0][1, 2, :n], torch.tensor(own), rtol=1e-5, atol=1e-5)


def test_value_model_from_a_reward_model_keeps_its_head(tiny_path, tmp_path):
    from alignkit.executor.reward_model import load_reward_model

    rm = load_reward_model(tiny_path, 1)
    with torch.no_grad():
        rm.score.weight.copy_(torch.linspace(-1, 1, rm.score.weight.numel()).view_as(rm.score.weight))
    rm.save_pretrained(tmp_path / "rm")
    value = load_value_model(str(tmp_path / "rm"), rm.config.vocab_size, 0)
    assert torch.equal(value.model.score.weight, rm.score.weight)


def test_value_model_with_another_vocabulary_is_refused(tiny_path):
    with pytest.raises(ValueError, match="share the policy's tokenizer"):
        load_value_model(tiny_path, 123, 0)


# ---------------------------------------------------------------- the online loop
def prompts_file(tmp_path, n=16):
    path = tmp_path / "prompts.jsonl"
    subjects = ["The movie was", "The film was", "The plot was", "The cast was"]
    path.write_text("".join(json.dumps({"prompt": f"{subjects[i % 4]} number {i}"}) + "\n" for i in range(n)))
    return str(path)


def cfg(tiny_path, tmp_path, out, **kw):
    values = dict(model=tiny_path, prompts=prompts_file(tmp_path), objective="ppo", max_steps=3, updates_per_batch=2,
                  batch_size=4, num_samples=2, max_new_tokens=4, lr=1e-3, reward="alignkit.worlds.reviews:reward",
                  output_dir=str(tmp_path / out), progress=False, kl_coef=0.1)
    return TrainConfig(**{**values, **kw})


PPO_METRICS = ("vf_loss", "vf_clipfrac", "explained_variance", "kl", "kl/sequence", "clip_fraction", "reward/mean",
               "reward/std", "response_length", "pg_loss", "returns/mean", "values/old")


@pytest.mark.parametrize("lora", [False, True])
def test_ppo_runs_logs_and_saves_the_value_model(tiny_path, tmp_path, lora):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignkit.algorithms.online import OnlineTrainer

    trainer = OnlineTrainer(cfg(tiny_path, tmp_path, "r", lora=lora, max_steps=2, value_lr=3e-3))
    start = {n: p.detach().clone() for n, p in trainer.recipe.value.named_parameters() if p.requires_grad}
    first = trainer.step()
    # trained jointly: its own parameter group at value_lr on the policy's schedule; head and body move
    policy_lr, value_lr = trainer.scheduler.get_last_lr()
    assert value_lr == pytest.approx(3 * policy_lr) and policy_lr > 0
    moved = [n for n, p in trainer.recipe.value.named_parameters() if p.requires_grad and not torch.equal(start[n], p)]
    assert any("score" in n for n in moved) and any(("lora_B" if lora else "layers") in n for n in moved), moved
    assert first["kl"] == 0.0  # the first rollout comes from the reference itself
    result = trainer.train()  # step 2, the checkpoint, final/
    for h in [first, *result.history]:
        assert all(k in h for k in PPO_METRICS), sorted(set(PPO_METRICS) - set(h))
        assert all(math.isfinite(h[k]) for k in PPO_METRICS if k != "explained_variance")
    final = result.final_dir
    with safe_open(str(final / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if "alignkit_value" in k]  # noqa: SIM118
    AutoModelForCausalLM.from_pretrained(final)
    v = AutoModelForSequenceClassification.from_pretrained(final / "value")
    assert v.config.num_labels == 1
    batch = trainer.rollout(trainer.train_data.rows[:2], 5, 2, 1.0).data.collate([0, 1], trainer.tokenizer.pad_token_id,
                                                                                  "padded", 256)
    with torch.no_grad():  # final/value/ holds the trained value model (LoRA: merged)
        torch.testing.assert_close(ValueModel(v).eval()(batch), trainer.recipe.value.eval()(batch), rtol=1e-5, atol=1e-5)
    ckpt = next((tmp_path / "r" / "checkpoints").iterdir())
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert any(k.startswith("alignkit_value.") for k in f.keys())  # noqa: SIM118


def test_ppo_resume_reproduces_the_uninterrupted_run(tiny_path, tmp_path):
    from alignkit.algorithms.online import OnlineTrainer

    straight = OnlineTrainer(cfg(tiny_path, tmp_path, "a")).train().history
    # pinned figures of this seeded run (torchtune style): a change to the recipe's arithmetic shows here
    assert [round(h["vf_loss"], 4) for h in straight] == pytest.approx(PINNED_VF, abs=2e-4)
    first = OnlineTrainer(cfg(tiny_path, tmp_path, "b"))
    first.step()
    first.save()
    del first
    resumed = OnlineTrainer(cfg(tiny_path, tmp_path, "b", resume_from="latest")).train().history
    keys = ("loss", "vf_loss", "pg_loss", "grad_norm", "reward/mean", "kl", "values/old")
    assert [[h[k] for k in keys] for h in resumed] == [[h[k] for k in keys] for h in straight[1:]]


PINNED_VF = [0.0161, 0.0185, 0.0089]  # measured on CPU, torch 2.13 (float32)


def test_eval_greedy_samples_at_temperature_zero(tiny_path, tmp_path, tiny):
    from alignkit.algorithms.online import OnlineTrainer
    from alignkit.generation import generate
    from alignkit.rollout import build_reward

    held = tmp_path / "held.txt"
    prompts = ["The movie was", "The plot was", "The cast was"]
    held.write_text("\n".join(prompts) + "\n")
    trainer = OnlineTrainer(cfg(tiny_path, tmp_path, "g", objective="grpo", eval_data=str(held), eval_greedy=True,
                                max_new_tokens=6, temperature=1.5, reward="rule:length:100"))
    seen, rollout = [], trainer.rollout
    trainer.rollout = lambda rows, seed, k, temperature: seen.append(temperature) or rollout(rows, seed, k, temperature)
    got = trainer.evaluate()["eval/reward"]
    model, tok = tiny
    texts = [t[0] for t in generate(model, tok, prompts, k=1, max_new_tokens=6, temperature=0.0).texts]
    assert got == pytest.approx(sum(build_reward("rule:length:100", tok)(prompts, texts, [{}] * 3)) / 3)
    trainer.config = dataclasses.replace(trainer.config, eval_greedy=False)  # configs are frozen
    trainer.evaluate()
    assert seen == [0.0, 1.5]


@pytest.mark.parametrize("key, value", [("gamma", 1.5), ("gae_lambda", -0.1), ("kl_coef", -1.0), ("value_lr", 0.0)])
def test_bad_ppo_settings_name_the_key(key, value):
    from alignkit.config import from_dict

    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(TrainConfig, {key: value})
