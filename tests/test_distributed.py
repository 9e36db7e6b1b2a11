"""Two CPU processes (DDP over gloo, launched with torchrun) train like one process with the global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.config import TrainConfig
from alignkit.training import train


def test_two_processes_match_one_process_with_the_global_batch(tiny_path, pairs_path, tmp_path):
    common = [f"model={tiny_path}", f"data={pairs_path}", "objective=dpo", "beta=0.5", "max_steps=3", "lr=1e-3",
              "progress=false", "seed=0", "eval_split=0.25"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "alignkit.cli", "train", *common,
           "batch_size=4", f"output_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(TrainConfig(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, max_steps=3, lr=1e-3,
                               progress=False, seed=0, batch_size=8, output_dir=str(tmp_path / "one"),
                               eval_split=0.25))
    a = load_file(tmp_path / "ddp" / "checkpoints" / "step-000003" / "model.safetensors")
    b = load_file(single.output_dir / "checkpoints" / "step-000003" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    # The logged loss is the mean over both processes, so it matches the single-process loss.
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    la = [r["loss"] for r in rows if "loss" in r]
    lb = [h["loss"] for h in single.history if "loss" in h]
    assert la == pytest.approx(lb, abs=1e-5)
    # The held-out evaluation is split across both processes and merged: same numbers as one process.
    assert rows[-1]["eval/loss"] == pytest.approx(single.history[-1]["eval/loss"], abs=1e-5)
    assert rows[-1]["eval/rewards/accuracy"] == pytest.approx(single.history[-1]["eval/rewards/accuracy"])


# ---------------------------------------------------------------- resume under DDP and FSDP (slow)
LAUNCHER = str(Path(__file__).resolve().parent / "sharded_cpu_launch.py")
COMMON = ["objective=dpo", "beta=0.5", "lr=1e-3", "progress=false", "seed=0", "max_steps=4", "save_every=2",
          "eval_split=0"]


def torchrun(args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run, step=4):
    return load_file(Path(run) / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def assert_equal_weights(a, b, atol=0.0, rtol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.slow
def test_ddp_resume_continues_exactly(tiny_path, pairs_path, tmp_path):
    """2 DDP processes: 4 steps straight == 2 steps, checkpoint, resume in a new launch, 2 more steps."""
    base = ["-m", "alignkit.cli", "train", f"model={tiny_path}", f"data={pairs_path}", *COMMON, "batch_size=4"]
    torchrun([*base, f"output_dir={tmp_path / 'a'}"])
    torchrun([*base, f"output_dir={tmp_path / 'b'}", f"resume_from={tmp_path / 'a' / 'checkpoints' / 'step-000002'}"])
    assert (tmp_path / "a" / "checkpoints" / "step-000002" / "optimizer.pt").exists()  # the one-process layout
    assert_equal_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert losses[1] == losses[0][2:]


@pytest.mark.slow
@pytest.mark.parametrize("version,lora", [("1", False), ("2", False), ("1", True)], ids=["fsdp1", "fsdp2", "fsdp1-lora"])
def test_fsdp_checkpoint_resume_and_final_match_one_process(version, lora, tiny_path, pairs_path, tmp_path):
    """2 CPU processes under FSDP (configs/accelerate/fsdp.yaml; see tests/sharded_cpu_launch.py): the sharded
    checkpoint resumes bit for bit, and checkpoint and final/ weights equal a one-process run's."""
    from sharded_cpu_launch import launch_environment

    env = launch_environment(FSDP_VERSION=version, **({"FSDP_RESHARD_AFTER_FORWARD": "true"} if version == "2" else {}))
    # defaults: the log-prob check and the reference-cache pass (LoRA: the disabled-adapter reference) run
    # through the sharded root module on both processes; FSDP2 also covers a live frozen reference copy
    setup = {"ref_cache": "off"} if version == "2" else {"lora": True} if lora else {}
    overrides = [f"{k}={json.dumps(v)}" for k, v in setup.items()]
    base = [LAUNCHER, "train", f"model={tiny_path}", f"data={pairs_path}", *COMMON, "batch_size=4", *overrides]
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun([*base, f"output_dir={a}"], env)
    torchrun([*base, f"output_dir={b}", f"resume_from={a / 'checkpoints' / 'step-000002'}"], env)
    ckpt = a / "checkpoints" / "step-000002"
    assert (ckpt / "sharded").is_dir() and not (ckpt / "optimizer.pt").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["sharding"] == "fsdp"
    assert_equal_weights(weights(a), weights(b))  # resumed == uninterrupted (optimizer state restored)

    single = train(TrainConfig(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, lr=1e-3, progress=False,
                               seed=0, max_steps=4, save_every=2, batch_size=8, output_dir=str(tmp_path / "one"),
                               **setup))
    assert_equal_weights(weights(a), weights(single.output_dir), atol=2e-5, rtol=1e-4)
    # final/: a plain save_pretrained folder (LoRA: merged) with the same weights, plus adapter/ with LoRA
    assert_equal_weights(load_file(a / "final" / "model.safetensors"),
                         load_file(single.final_dir / "model.safetensors"), atol=2e-5, rtol=1e-4)
    if lora:
        assert_equal_weights(load_file(a / "adapter" / "adapter_model.safetensors"),
                             load_file(single.output_dir / "adapter" / "adapter_model.safetensors"), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_fsdp_reward_model_checks_itself_through_the_sharded_root(tiny_path, pairs_path, tmp_path):
    """A Bradley–Terry reward model under FSDP1 with the default start-up check (its reward read by the
    executor vs the model's own forward, both through the sharded root): trains like one process."""
    from sharded_cpu_launch import launch_environment

    common = ["objective=bt", "lr=1e-3", "progress=false", "seed=0", "max_steps=2", "save_every=2", "eval_split=0"]
    torchrun([LAUNCHER, "train", f"model={tiny_path}", f"data={pairs_path}", *common, "batch_size=4",
              f"output_dir={tmp_path / 'a'}"], launch_environment(FSDP_VERSION="1"))
    single = train(TrainConfig(model=tiny_path, data=pairs_path, objective="bt", lr=1e-3, progress=False, seed=0,
                               max_steps=2, save_every=2, batch_size=8, eval_split=0, output_dir=str(tmp_path / "one")))
    assert_equal_weights(weights(tmp_path / "a", 2), weights(single.output_dir, 2), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("config,objective", [("deepspeed_zero2.yaml", "dpo"), ("deepspeed_zero3.yaml", "simpo")])
def test_deepspeed_checkpoint_resume_and_final_match_one_process(config, objective, tiny_path, pairs_path, tmp_path):
    """2 CPU processes under DeepSpeed (DeepSpeed's CPU accelerator; see tests/sharded_cpu_launch.py)."""
    pytest.importorskip("deepspeed")  # not an alignkit dependency
    from sharded_cpu_launch import CONFIGS, launch_environment

    env = launch_environment(CONFIGS / config)
    # ZeRO-3: the reference passes and the log-prob check do not run yet (see the README), so SimPO there
    setup = {"verify_logprobs": False, "ref_cache": "off"} if config.endswith("zero3.yaml") else {}
    overrides = [f"{k}={json.dumps(v)}" for k, v in setup.items()]
    base = [LAUNCHER, "train", f"model={tiny_path}", f"data={pairs_path}", *COMMON[1:], f"objective={objective}",
            "batch_size=4", *overrides]
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun([*base, f"output_dir={a}"], env)
    torchrun([*base, f"output_dir={b}", f"resume_from={a / 'checkpoints' / 'step-000002'}"], env)
    ckpt = a / "checkpoints" / "step-000002"
    assert (ckpt / "sharded").is_dir() and not (ckpt / "optimizer.pt").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["sharding"] == "deepspeed"
    assert_equal_weights(weights(a), weights(b))
    single = train(TrainConfig(model=tiny_path, data=pairs_path, objective=objective, beta=0.5, lr=1e-3,
                               progress=False, seed=0, max_steps=4, save_every=2, batch_size=8,
                               output_dir=str(tmp_path / "one"), **setup))
    assert_equal_weights(weights(a), weights(single.output_dir), atol=2e-5, rtol=1e-4)
    assert_equal_weights(load_file(a / "final" / "model.safetensors"),
                         load_file(single.final_dir / "model.safetensors"), atol=2e-5, rtol=1e-4)


def test_ppo_under_ddp_keeps_policy_and_value_model_in_step(tiny_path, tmp_path):
    """PPO's value model sits outside the DDP wrapper: the online trainer averages its gradients, so two
    processes that sample different completions end every step with the same policy *and* value weights."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"The movie number {i} was"}) + "\n" for i in range(8)))
    check = str(Path(__file__).resolve().parent / "ddp_param_check.py")
    torchrun([check, str(tmp_path), f"model={tiny_path}", f"prompts={prompts}", "objective=ppo",
              r"reward=rule:regex:[aeiou]{2}", "batch_size=2", "num_samples=2", "max_new_tokens=6", "max_steps=2",
              "lr=1e-2", "progress=false", "seed=0", f"output_dir={tmp_path / 'run'}"])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["local_rewards"] != r1["local_rewards"]  # the processes sampled different completions
    means = [(a + b) / 2 for a, b in zip(r0["local_rewards"], r1["local_rewards"])]
    assert r0["logged"] == pytest.approx(means, abs=1e-6)  # the logged reward is over both processes
    value = [n for n in r0["params"] if "alignkit_value" in n]
    assert value and len(value) < len(r0["params"])
    assert r0["params"] == r1["params"]  # bit-equal: policy (DDP) and value model (averaged) in step
    assert any(abs(r0["params"][n][0] - r0["params"][n][2]) > 1e-6 for n in value)  # and the value model learned


def test_pal_user_table_under_ddp_is_one_table_equal_to_one_process(tiny_path, tmp_path):
    """pal's per-user weights are objective state that follows the data: each process steps the logits of the
    users in its share of the batch, and the trainer merges the processes' tables after every micro-batch
    (objectives.personal.merge_user_states). Both processes end with the same table, equal to the table of one
    process with the global batch (without the merge each process held only its own users' steps)."""
    from alignkit.worlds.plural import user_pairs

    data = tmp_path / "users.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in user_pairs(48, users_per_group=3, seed=0)))
    common = [f"model={tiny_path}", f"data={data}", "objective=pal", "max_steps=3", "lr=3e-3", "progress=false",
              "seed=0", "eval_split=0"]
    check = str(Path(__file__).resolve().parent / "ddp_user_table_check.py")
    torchrun([check, str(tmp_path), *common, "batch_size=4", f"output_dir={tmp_path / 'ddp'}"])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # bit-equal: one merged table on every process
    single = train(TrainConfig(model=tiny_path, data=str(data), objective="pal", max_steps=3, lr=3e-3, progress=False,
                               seed=0, eval_split=0, batch_size=8, output_dir=str(tmp_path / "one")))
    one = json.loads((single.final_dir / "alignkit_reward.json").read_text())["users"]
    saved = json.loads((tmp_path / "ddp" / "final" / "alignkit_reward.json").read_text())["users"]
    assert saved == r0 and r0.keys() == one.keys() and len(one) == 7  # 6 users and the population mixture
    for user, w in one.items():
        assert r0[user] == pytest.approx(w, abs=1e-4), user
    assert max(abs(a - b) for w in one.values() for a, b in zip(w, [0.5, 0.5])) > 0.1  # the weights moved
