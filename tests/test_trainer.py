"""The trainer: pinned first losses, exact resume, atomic checkpoints, NaN skip, SIGINT, LoRA reference."""

import json
import math
import os
import signal

import pytest
import torch

from alignkit.config import TrainConfig
from alignkit.engine import checkpoint as ckpt
from alignkit.engine.trainer import Trainer, TrainingStopped
from alignkit.objectives import register
from alignkit.objectives.pairwise import dpo
from alignkit.training import train


def cfg(tiny_path, pairs_path, out, **kw):
    base = dict(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, batch_size=4, max_steps=6, lr=1e-3,
                output_dir=str(out), progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_pinned_first_losses_and_metrics_file(tiny_path, pairs_path, tmp_path):
    result = train(cfg(tiny_path, pairs_path, tmp_path, max_steps=3))
    losses = [h["loss"] for h in result.history]
    # At step 1 the policy equals the reference: DPO loss is exactly log 2.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    # Pinned values of this seeded run (tiny Qwen2, seed 0, lr 1e-3, beta 0.5, batch 4).
    assert losses[1:] == pytest.approx(PINNED[1:], abs=1e-4)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_per_second", "seconds_per_step", "peak_memory_mb",
                "rewards/margin", "rewards/accuracy"):
        assert key in lines[0]
    assert (tmp_path / "config.yaml").exists() and (result.final_dir / "model.safetensors").exists()


PINNED = [0.693147, 0.546673, 0.584401]


def test_exact_resume_is_bit_identical(tiny_path, pairs_path, tmp_path):
    straight = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a"))
    res_a = straight.train()
    first = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b"))
    for _ in range(3):
        first.step()
    first.save()
    del first
    resumed = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", resume_from="latest"))
    res_b = resumed.train()
    assert [h["loss"] for h in res_b.history] == [h["loss"] for h in res_a.history[3:]]
    pa, pb = params(straight.policy), params(resumed.policy)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)


def test_crash_during_save_leaves_previous_checkpoint(tiny_path, pairs_path, tmp_path, monkeypatch):
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path))
    t.step()
    good = t.save()
    t.step()

    def killed(*a, **k):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt.os, "replace", killed)  # dies after writing the temp folder, before rename
    with pytest.raises(KeyboardInterrupt):
        t.save()
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) == good
    assert any(p.name.startswith(".tmp-") for p in root.iterdir())
    t2 = Trainer(cfg(tiny_path, pairs_path, tmp_path, resume_from="latest"))
    t2.resume("latest")
    assert t2.step_idx == 1
    # The next successful save removes the stale temporary folder.
    t2.step()
    t2.save()
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


_calls = {"n": 0}


@register("_test_nan_on_even_calls", needs_reference=True, label_kinds=("ranks",), min_responses=2,
          max_responses=2)
def _nan_on_even(stats, beta: float = 0.1):
    _calls["n"] += 1
    out = dpo(stats, beta=beta)
    if _calls["n"] % 2 == 0:
        out.loss = out.loss * float("nan")
    return out


@register("_test_always_nan", needs_reference=True, label_kinds=("ranks",), min_responses=2, max_responses=2)
def _always_nan(stats, beta: float = 0.1):
    out = dpo(stats, beta=beta)
    out.loss = out.loss * float("inf")
    return out


def test_nan_steps_are_skipped_counted_and_stop(tiny_path, pairs_path, tmp_path):
    _calls["n"] = 0
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, objective="_test_nan_on_even_calls", max_steps=4))
    before = params(t.policy)
    t.step()  # call 1: finite -> update
    after_one = params(t.policy)
    assert any(not torch.equal(before[n], after_one[n]) for n in before)
    rec = t.step()  # call 2: NaN -> skipped, parameters unchanged
    assert rec["skipped_steps"] == 1
    assert all(torch.equal(after_one[n], p) for n, p in params(t.policy).items())
    bad = Trainer(cfg(tiny_path, pairs_path, tmp_path / "bad", objective="_test_always_nan", max_bad_steps=3))
    with pytest.raises(TrainingStopped, match="3 steps in a row"):
        bad.train()


def test_sigint_finishes_step_saves_and_says_how_to_resume(tiny_path, pairs_path, tmp_path, caplog):
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, max_steps=6))
    step = t.step

    def step_then_interrupt():
        rec = step()
        if rec["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return rec

    t.step = step_then_interrupt
    seen = []

    def host(signum, frame):  # the handler of the program that runs the trainer
        seen.append(signum)

    before = signal.signal(signal.SIGINT, host)
    try:
        result = t.train()
        assert signal.getsignal(signal.SIGINT) is host  # handler restored
    finally:
        signal.signal(signal.SIGINT, before)
    assert result.interrupted and result.final_dir is None
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step-000002"
    assert seen == [signal.SIGINT]  # once saved, the signal went on to the handler from before the run


def test_lora_reference_by_disabling_adapters_equals_frozen_copy(tiny_path, pairs_path, tmp_path):
    from alignkit.models.load import load_model

    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, lora=True, lora_r=4, lr=1e-2, max_steps=3, ref_cache="off"))
    assert t.reference.strategy == "disable_adapters"
    for _ in range(3):
        t.step()
    batch = t.train_data.collate(list(range(8)), t.tokenizer.pad_token_id, t.layout, 4096)
    ref_disabled = t.reference.token_logps(batch)
    from alignkit.executor.logprobs import LogProbModel

    with torch.no_grad():
        ref_copy = LogProbModel(load_model(tiny_path))(batch)
        policy = LogProbModel(t.policy)(batch)
    torch.testing.assert_close(ref_disabled, ref_copy, atol=1e-6, rtol=1e-6)
    assert (policy - ref_copy).abs().max() > 1e-3  # the adapters did learn something
    # Only adapter weights are trainable; the checkpoint holds just those.
    path = t.save()
    from safetensors.torch import load_file

    assert all("lora_" in name for name in load_file(path / "model.safetensors"))


def test_reference_cache_equals_live_reference_and_is_reused(tiny_path, pairs_path, tmp_path, caplog):
    from alignkit.engine.refcache import CachedReference

    live = Trainer(cfg(tiny_path, pairs_path, tmp_path / "live", ref_cache="off"))
    cache_dir = tmp_path / "shared_cache"
    cached = Trainer(cfg(tiny_path, pairs_path, tmp_path / "c1", ref_cache="on", ref_cache_dir=str(cache_dir)))
    assert isinstance(cached.reference, CachedReference)  # no reference model is held
    batch = live.train_data.collate(list(range(12)), live.tokenizer.pad_token_id, live.layout, 1024)
    torch.testing.assert_close(cached.reference.sequence_logps(batch), live.reference.sequence_logps(batch),
                               atol=1e-5, rtol=1e-6)
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 1 and files[0].startswith("train-")
    h1 = cached.train().history
    # A second run (e.g. another beta) with the same reference and data reads the same file.
    with caplog.at_level("INFO", logger="alignkit"):
        again = Trainer(cfg(tiny_path, pairs_path, tmp_path / "c2", ref_cache="on", ref_cache_dir=str(cache_dir)))
    assert "from cache" in caplog.text
    assert [h["loss"] for h in again.train().history] == [h["loss"] for h in h1]
    assert sorted(p.name for p in cache_dir.iterdir()) == files
    # The live run's losses agree with the cached run's to float precision.
    assert [h["loss"] for h in live.train().history] == pytest.approx([h["loss"] for h in h1], abs=1e-5)


def test_gradient_checkpointing_gives_the_same_step(tiny_path, pairs_path, tmp_path):
    plain = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a"))
    ckpt_run = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", gradient_checkpointing=True))
    on = "is_activation_checkpointing" if hasattr(plain.policy, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(ckpt_run.policy, on) and not getattr(plain.policy, on)
    ra, rb = plain.step(), ckpt_run.step()
    assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-7)
    assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-5)
    pa, pb = params(plain.policy), params(ckpt_run.policy)
    for n in pa:
        torch.testing.assert_close(pa[n], pb[n], atol=1e-6, rtol=1e-5)


def test_checkpoint_round_trips_extra_states_like_the_grad_scaler(tmp_path):
    from alignkit.engine.schedule import build_scheduler

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, "linear", 0, 10)
    scaler_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                    "_growth_tracker": 3}
    path = ckpt.save_checkpoint(tmp_path, 7, model, opt, sched, {"skipped_total": 0}, "a: 1\n",
                                extra_states={"grad_scaler": scaler_state})
    with torch.no_grad():
        model.weight.zero_()
    state, _ = ckpt.load_checkpoint(path, model, opt, sched)
    assert state["step"] == 7 and state["extra"] == {"grad_scaler": scaler_state}
    assert model.weight.abs().sum() > 0  # weights restored


def test_reference_cache_pass_makes_no_copy_of_the_model(tiny_path, pairs_path, tmp_path, monkeypatch):
    import alignkit.engine.reference as reference

    def no_copy(model):
        raise AssertionError("the cache pass must use the initial policy, not a copy")

    monkeypatch.setattr(reference, "frozen_copy", no_copy)
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, ref_cache="on"))
    assert t.reference.strategy == "cache"
    assert t.train().history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference = initial policy
