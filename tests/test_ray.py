"""Scale-out on Ray (`alignkit.rollout.ray_backend`): rollouts and `alignkit score` on a local Ray instance with
2 CPU actors give exactly the in-process results for the same seeds. The chunking/seeding tests need no Ray;
the rest skip cleanly without the ray extra."""

import dataclasses
import json
import sys

import pytest
import torch

from alignkit import cli
from alignkit.rollout import build_reward, sample_experience
from alignkit.rollout.experience import chunk_seed
from alignkit.rollout.ray_backend import LocalRollout, merge_experiences, split

try:
    import ray  # noqa: F401
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason='ray is not installed (pip install "alignkit[ray]")')
PROMPTS = ["The movie was", "The plot was", "The cast was", "The film was", "The story was"]
KW = dict(k=3, max_new_tokens=5, temperature=1.0, top_p=1.0, unfinished_penalty=None, chat_template="auto")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def make_rm(tiny_path, out, seed: int) -> str:
    """A reward model with a fixed random head (a checkpoint every actor loads identically)."""
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer

    torch.manual_seed(seed)
    load_reward_model(tiny_path, num_outputs=1).save_pretrained(out)
    load_tokenizer(tiny_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rm_path(tiny_path, tmp_path_factory):
    return make_rm(tiny_path, tmp_path_factory.mktemp("rm"), seed=0)


def completions(exp):
    return [[tr.completion_ids(j) for j in range(tr.k)] for tr in exp.data.items]


def test_chunks_are_contiguous_and_seeds_distinct():
    assert [list(r) for r in split(10, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [list(r) for r in split(2, 4)] == [[0], [1]]  # no empty chunks
    assert split(0, 2) == []
    with pytest.raises(ValueError, match="at least one chunk"):
        split(3, 0)
    seeds = {chunk_seed(s, i) for s in range(50) for i in range(8)}
    assert len(seeds) == 400 and chunk_seed(7, 0) != 7


def test_missing_ray_and_bad_settings_are_refused_clearly(monkeypatch, caplog):
    from alignkit.config import ConfigError, TrainConfig, from_dict
    from alignkit.rollout.ray_backend import check_resources, require_ray, rollout_pool

    class TwoCpuCluster:
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    with caplog.at_level("WARNING", logger="alignkit"):
        check_resources(TwoCpuCluster, 2, 1)
        assert caplog.text == ""
        check_resources(TwoCpuCluster, 3, 1)
    assert "3 Ray workers need 3 CPUs; the cluster has 2" in caplog.text

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r'pip install "alignkit\[ray\]"'):
        require_ray()
    with pytest.raises(ConfigError, match="rollout_backend' must be ray, local or vllm"):
        from_dict(TrainConfig, {"rollout_workers": 2, "rollout_backend": "dask"})
    with pytest.raises(ConfigError, match="rollout_workers' must be >= 0"):
        from_dict(TrainConfig, {"rollout_workers": -1})

    class BoundReward:  # e.g. Nash-MD's mixture opponent: bound to the trainer's models every rollout
        needs_models = True

    config = TrainConfig(rollout_workers=2, reward="mixture:x")
    with pytest.raises(ValueError, match="runs in-process only; use rollout_workers=0 or rollout_backend=local"):
        rollout_pool(config, None, None, BoundReward())
    config = dataclasses.replace(config, rollout_backend="local")  # configs are frozen
    assert isinstance(rollout_pool(config, None, None, BoundReward()), LocalRollout)


def test_local_chunks_equal_separate_rollouts_joined_in_order(tiny):
    model, tok = tiny
    rows = [{"prompt": p} for p in PROMPTS]
    reward = build_reward("alignkit.worlds.reviews:reward")
    exp = LocalRollout(model, tok, reward, workers=2).rollout(rows, 11, **KW)
    first = sample_experience(model, tok, PROMPTS[:3], rows[:3], reward, seed=chunk_seed(11, 0), **KW)
    second = sample_experience(model, tok, PROMPTS[3:], rows[3:], reward, seed=chunk_seed(11, 1), **KW)
    assert exp.prompts == PROMPTS and exp.rows == rows
    assert completions(exp) == completions(first) + completions(second)
    assert exp.rewards.tolist() == first.rewards.tolist() + second.rewards.tolist()
    assert [tr.index for tr in exp.data.items] == [0, 1, 2, 3, 4]
    assert exp.texts == first.texts + second.texts
    assert merge_experiences([first]) is first


@needs_ray
def test_ray_rollout_equals_in_process_and_follows_weight_updates(local_ray, tiny_path, rm_path):
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.rollout.ray_backend import RayRollout

    model, tok = load_model(tiny_path), load_tokenizer(tiny_path)
    rows = [{"prompt": p} for p in PROMPTS]
    spec = f"rm:{rm_path}"
    pool = RayRollout(model, tok, spec, workers=2, cpus=1)
    local = LocalRollout(model, tok, build_reward(spec, tok), workers=2, threads=1)
    try:
        before = pool.rollout(rows, 3, **KW)
        ref = local.rollout(rows, 3, **KW)
        assert completions(before) == completions(ref) and before.texts == ref.texts
        assert before.rewards.tolist() == ref.rewards.tolist()  # the reward model ran on the actors, exactly
        assert before.rewards.std() > 0
        with torch.no_grad():  # the driver's weights change: the actors must sample from the new ones
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight), alpha=2.0)
        after = pool.rollout(rows, 3, **KW)
        assert completions(after) == completions(local.rollout(rows, 3, **KW))
        assert completions(after) != completions(before)
    finally:
        pool.close()


def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{PROMPTS[i % 5]} {i}"}) + "\n" for i in range(8)))
    return str(path)


@needs_ray
def test_grpo_with_ray_workers_matches_the_in_process_run(local_ray, tiny_path, tmp_path):
    from alignkit.algorithms.online import OnlineTrainer
    from alignkit.config import TrainConfig

    def history(backend):
        config = TrainConfig(model=tiny_path, prompts=prompts_file(tmp_path), objective="grpo", max_steps=2,
                             batch_size=4, num_samples=4, max_new_tokens=4, lr=1e-2, seed=1,
                             reward="alignkit.worlds.reviews:reward", rollout_workers=2, rollout_backend=backend,
                             output_dir=str(tmp_path / backend), progress=False)
        trainer = OnlineTrainer(config)
        result = trainer.train().history
        trainer._workers.close()
        return [[h[key] for key in ("loss", "reward/mean", "grad_norm")] for h in result if "loss" in h]

    ray_run, local_run = history("ray"), history("local")
    assert len(ray_run) == 2 and ray_run == local_run
    assert ray_run[0] != ray_run[1]  # step 2 sampled from the updated policy (on the actors)


@needs_ray
def test_score_with_workers_equals_in_process(local_ray, rm_path, tiny_path, pairs_path, tmp_path):
    ensemble = [rm_path, make_rm(tiny_path, tmp_path / "rm2", seed=1)]  # scores and the members' spread

    def scores(*extra):
        out = tmp_path / f"scored{len(extra)}.jsonl"
        assert cli.main(["score", "--reward-model", *ensemble, "--data", pairs_path, "--out", str(out), *extra]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        return torch.tensor([r["scores"] for r in rows]), torch.tensor([r["meta"]["score_std"] for r in rows])

    (in_process, spread), (on_ray, ray_spread) = scores(), scores("--workers", "2")
    assert on_ray.shape == (32, 2) and in_process.std() > 0 and spread.min() > 0
    assert torch.allclose(on_ray, in_process, rtol=0, atol=1e-6)
    assert torch.allclose(ray_spread, spread, rtol=0, atol=1e-6)


def test_vllm_actors_get_the_policy_structure_without_weights(tiny):
    """What `RayRollout` ships to vLLM actors once: classes, config and generation config, every tensor on the
    meta device (the engine gets its weights from the pushes); the driver's model is untouched."""
    import io

    from alignkit.rollout.ray_backend import _module_bytes, _structure_bytes

    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blob = _structure_bytes(model)
    copy = torch.load(io.BytesIO(blob), map_location="meta", weights_only=False)
    assert type(copy) is type(model) and copy.config.to_dict() == model.config.to_dict()
    assert copy.generation_config.to_dict() == model.generation_config.to_dict()
    assert {p.device.type for p in copy.parameters()} == {"meta"} and set(copy.state_dict()) == set(before)
    assert len(blob) < len(_module_bytes(model)) / 4
    assert all(torch.equal(v, before[k]) and v.device.type == "cpu" for k, v in model.state_dict().items())
