"""Run faults: a signal in every phase, kill -9, corrupt checkpoints, two runs on one folder, a resume with
other settings, a diverging update, a full disk — each case checks one exact outcome.

Each test's docstring is its case, ``case -> expected outcome``. The runs are the tiny DPO run of
`_run_helpers.tiny_config`; ``straight`` is that run uninterrupted (checkpoints at steps 2, 4 and 6, kept),
the reference for "bit-identical". ``ALIGNKIT_FAULT_TRIALS`` sets the number of kill -9 trials (3 by
default; the slow variant runs ten times as many).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from alignkit.engine import checkpoint as ckpt
from alignkit.engine import distributed as dist
from alignkit.engine.schedule import build_scheduler, lr_factor
from alignkit.engine.trainer import Trainer
from alignkit.errors import CheckpointError, RunDirError

from ._run_helpers import (
    RUN,
    Recorder,
    cli_items,
    env,
    foreground_signals,
    host_handler,
    logged_steps,
    optimizer_moments,
    same_tensors,
    signal_self,
    start_cli,
    tiny_config,
    wait_for,
    weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRIALS = int(os.environ.get("ALIGNKIT_FAULT_TRIALS", "3"))


@pytest.fixture(scope="module")
def straight(one_torch_thread, tiny_path, pairs_path, tmp_path_factory):
    """The uninterrupted run: 6 steps, a checkpoint every 2 steps (all kept), final/."""
    out = tmp_path_factory.mktemp("straight")
    Trainer(tiny_config(tiny_path, pairs_path, out, save_every=2, keep_checkpoints=3)).train()
    return out


@pytest.fixture
def log(caplog):
    """The alignkit logger's records (it does not propagate to the root logger caplog listens to)."""
    alignkit_logger = logging.getLogger("alignkit")
    alignkit_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="alignkit")
    yield caplog
    alignkit_logger.removeHandler(caplog.handler)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def copy_checkpoints(straight: Path, out: Path, steps=(2, 4, 6)) -> Path:
    """``out`` as an unfinished run: the straight run's config and the checkpoints of ``steps``."""
    (out / "checkpoints").mkdir(parents=True)
    for s in steps:
        shutil.copytree(straight / "checkpoints" / f"step-{s:06d}", out / "checkpoints" / f"step-{s:06d}")
    shutil.copy(straight / "config.yaml", out / "config.yaml")
    return out


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def same_as_straight(out: Path, straight: Path, step: int) -> bool:
    """The checkpoint of ``step`` holds exactly the uninterrupted run's weights and Adam moments of that step."""
    a, b = step_dir(out, step), step_dir(straight, step)
    return same_tensors(weights(a), weights(b)) and all(
        torch.equal(x, y) for x, y in zip(optimizer_moments(a), optimizer_moments(b), strict=True))


def resume_to_end(tiny_path, pairs_path, out, **kw):
    return Trainer(tiny_config(tiny_path, pairs_path, out, resume_from="latest", **kw)).train()


# ------------------------------------------------------------------------------------------------ 1. signals
@pytest.mark.parametrize("phase", ["tokenization", "reference-pass"])
def test_signal_during_startup_stops_at_once(tiny_path, pairs_path, tmp_path, monkeypatch, log, phase):
    """SIGTERM while the data is tokenized / during the reference-cache pass -> start-up stops at once (the phase
    does not go on), the folder's lock is given back, nothing is left that blocks running the same command again,
    one line says so, and the program's own SIGTERM handler gets the signal."""
    import alignkit.engine.refcache as rc
    import alignkit.engine.trainer as trainer_module

    went_on = []
    target = (trainer_module, "prepare_data") if phase == "tokenization" else (rc, "compute_table")
    original = getattr(*target)

    def interrupted(*args, **kwargs):
        signal_self(signal.SIGTERM)
        went_on.append(phase)
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, interrupted)
    with host_handler(signal.SIGTERM, Recorder()) as host, pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path))
    assert went_on == [] and host.seen == [signal.SIGTERM]
    from alignkit.engine import rundir

    assert not (tmp_path / "run.lock").exists() and rundir.describe_run(tmp_path) is None
    assert ("SIGTERM received during start-up: stopped before training, nothing to resume; run the same command "
            "again") in messages(log)


def test_signal_mid_training_saves_the_finished_step_and_resumes_exactly(tiny_path, pairs_path, tmp_path, straight,
                                                                          log):
    """SIGINT during step 2 (save_every=0) -> step 2 finishes, checkpoint step-000002 holds the uninterrupted run's
    step 2 (weights and Adam moments), the resume command is printed, then Ctrl-C reaches the program
    (KeyboardInterrupt); resumed, the final weights are bit-identical to the uninterrupted run's."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path))
    step = t.step

    def step_with_signal():
        if t.step_idx == 1:
            signal_self(signal.SIGINT)
        return step()

    t.step = step_with_signal
    with host_handler(signal.SIGINT, signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        t.train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-000002"]
    assert same_as_straight(tmp_path, straight, 2) and logged_steps(tmp_path) == [1, 2]
    assert (f"interrupted by SIGINT after step 2; checkpoint of step 2 in {tmp_path / 'checkpoints'}. Resume with: "
            f"alignkit train {tmp_path / 'config.yaml'} resume_from=latest") in messages(log)
    resume_to_end(tiny_path, pairs_path, tmp_path)
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_second_signal_stops_the_step_at_once(tiny_path, pairs_path, tmp_path, straight):
    """Two SIGINTs inside step 3 -> the step stops at once (its RNG and objective state are put back), checkpoint
    step-000002 holds the uninterrupted step 2 (weights, moments and RNG state); resumed, the final weights are
    bit-identical to the uninterrupted run's."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path))
    micro, calls = t._micro_loss, []

    def two_signals(*args, **kwargs):
        if t.step_idx == 2:
            calls.append(1)
            signal_self(signal.SIGINT)
            signal_self(signal.SIGINT)
        return micro(*args, **kwargs)

    t._micro_loss = two_signals
    with host_handler(signal.SIGINT, signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        t.train()
    assert calls == [1] and t.step_idx == 2
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"
    assert same_as_straight(tmp_path, straight, 2)
    rng = [torch.load(step_dir(r, 2) / "rng.pt", weights_only=True)["torch"] for r in (tmp_path, straight)]
    assert torch.equal(*rng)
    resume_to_end(tiny_path, pairs_path, tmp_path)
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))


def test_signal_during_periodic_eval_keeps_the_step(tiny_path, pairs_path, tmp_path, straight):
    """SIGINT during the evaluation after step 2 (eval_every=2) -> the evaluation stops at once, step 2's metrics
    line is still written, checkpoint step-000002 holds the uninterrupted step 2, Ctrl-C reaches the program."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, eval_data=pairs_path, eval_every=2))
    evaluate, went_on = t.evaluate, []

    def evaluate_with_signal():
        signal_self(signal.SIGINT)
        went_on.append(1)
        return evaluate()

    t.evaluate = evaluate_with_signal
    with host_handler(signal.SIGINT, signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        t.train()
    assert went_on == [] and logged_steps(tmp_path) == [1, 2]
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"
    assert same_as_straight(tmp_path, straight, 2)


def test_signal_during_final_eval_leaves_the_last_step_resumable(tiny_path, pairs_path, tmp_path, straight):
    """SIGINT during the end-of-run evaluation (save_every=0) -> checkpoint step-000006 holds the uninterrupted
    step 6, no final/; resume_from=latest evaluates, and writes final/ bit-identical to the uninterrupted run's."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, eval_data=pairs_path))
    evaluate = t.evaluate

    def evaluate_with_signal():
        signal_self(signal.SIGINT)
        return evaluate()

    t.evaluate = evaluate_with_signal
    with host_handler(signal.SIGINT, signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        t.train()
    assert not (tmp_path / "final").exists() and same_as_straight(tmp_path, straight, 6)
    result = resume_to_end(tiny_path, pairs_path, tmp_path, eval_data=pairs_path)
    assert [h["step"] for h in result.history] == [6] and "eval/loss" in result.history[0]
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))


def test_signal_during_final_save_finishes_the_save(tiny_path, pairs_path, tmp_path, straight, monkeypatch, log):
    """SIGINT while final/ is written -> the save finishes first (final/ complete, bit-identical to the
    uninterrupted run's; checkpoint step-000006 saved), one line says so, then Ctrl-C reaches the program."""
    original = dist.save_final

    def save_with_signal(*args, **kwargs):
        signal_self(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(dist, "save_final", save_with_signal)
    with host_handler(signal.SIGINT, signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path)).train()
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))
    assert (tmp_path / "final" / "tokenizer_config.json").is_file() and same_as_straight(tmp_path, straight, 6)
    assert (f"SIGINT received during the final save: the save was finished first; the run is complete "
            f"({tmp_path / 'final'})") in messages(log)


def test_a_signal_ignored_at_start_stays_ignored(tiny_path, pairs_path, tmp_path, straight):
    """SIGINT ignored by the program (a background command of a script's shell) -> the run leaves it ignored:
    a SIGINT mid-run changes nothing, the run ends complete and bit-identical, and SIGINT is still ignored."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path))
    step = t.step
    t.step = lambda: (signal_self(signal.SIGINT), step())[1]
    with host_handler(signal.SIGINT, signal.SIG_IGN):
        result = t.train()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert not result.interrupted and t.guard.signum is None
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))


def test_sigterm_to_the_command_line_mid_training(tiny_path, pairs_path, tmp_path, straight):
    """SIGTERM to `alignkit train` during step 3 -> the step finishes and is saved, the resume command is printed,
    no traceback, the process ends by SIGTERM; the printed command's resume gives bit-identical final weights."""
    log_path, out = tmp_path / "train.log", tmp_path / "run"
    proc = start_cli(cli_items(tiny_path, pairs_path, out), log_path, step_pause=0.5)
    try:
        assert wait_for(lambda: len(logged_steps(out)) >= 2, proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == -signal.SIGTERM
    finally:
        proc.kill()
    text = log_path.read_text()
    saved = ckpt.latest_checkpoint(out / "checkpoints")
    step = int(saved.name[len("step-"):])  # 3, or 2 if the signal came between step 2's log line and step 3
    assert "Traceback" not in text and step in (2, 3)
    assert (f"interrupted by SIGTERM after step {step}; checkpoint of step {step} in {out / 'checkpoints'}. Resume "
            f"with: alignkit train {out / 'config.yaml'} resume_from=latest") in text
    resume_to_end(tiny_path, pairs_path, out)
    assert same_tensors(weights(out / "final"), weights(straight / "final"))


def test_ctrl_c_stops_a_test_suite_on_the_first_press(tiny_path, pairs_path, tmp_path):
    """SIGINT to a pytest session while one of its tests trains -> the run saves its checkpoint and the session
    stops there (exit status 2, "KeyboardInterrupt"), without running the next test."""
    marker, out = tmp_path / "next-test-ran", tmp_path / "run"
    (tmp_path / "test_suite.py").write_text(
        "import time\nfrom alignkit.config import TrainConfig\nfrom alignkit.engine.trainer import Trainer\n\n"
        "def test_trains():\n"
        f"    t = Trainer(TrainConfig(model={tiny_path!r}, data={pairs_path!r}, output_dir={str(out)!r}, "
        "max_steps=1000, batch_size=4, progress=False))\n"
        "    step = t.step\n    t.step = lambda: (time.sleep(0.2), step())[1]\n    t.train()\n\n"
        f"def test_next():\n    open({str(marker)!r}, 'w').close()\n")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_suite.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(),
                            preexec_fn=foreground_signals)
    try:
        assert wait_for(lambda: len(logged_steps(out)) >= 1, proc=proc)
        proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=120)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 2 and "KeyboardInterrupt" in text, text[-2000:]
    assert not marker.exists() and ckpt.latest_checkpoint(out / "checkpoints") is not None


# ------------------------------------------------------------------------------------------------ kill -9
def kill_trial(trial: int, tiny_path, pairs_path, out: Path, straight: Path, kills: int = 1) -> None:
    """``kills`` runs of `alignkit train` (the first fresh, then resume_from=latest), each killed with SIGKILL at a
    random moment; then a resume in this process runs to the end."""
    rng = random.Random(trial)
    items = cli_items(tiny_path, pairs_path, out, save_every=1, keep_checkpoints=2)
    for k in range(kills):
        proc = start_cli(items + (["resume_from=latest"] if k else []), out.parent / f"{out.name}.{k}.log")
        try:
            assert wait_for(out.exists, proc=proc)  # the run has started on its folder
            time.sleep(rng.uniform(0.0, 4.0))  # start-up, reference pass, steps, saves or the final save
        finally:
            proc.kill()
            proc.wait()
    resume_to_end(tiny_path, pairs_path, out, save_every=1, keep_checkpoints=2)
    assert same_tensors(weights(out / "final"), weights(straight / "final"))
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_at_a_random_moment_then_resume(trial, tiny_path, pairs_path, tmp_path, straight):
    """kill -9 of `alignkit train` at a random moment (seeded by the trial) -> resume_from=latest from what is on
    disk finishes with final weights bit-identical to the uninterrupted run's, and metrics.jsonl holds each step
    once."""
    kill_trial(trial, tiny_path, pairs_path, tmp_path / "run", straight)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS, 11 * TRIALS))
def test_kill_9_twice_at_many_random_moments_then_resume(trial, tiny_path, pairs_path, tmp_path, straight):
    """kill -9 at a random moment, then kill -9 of the resumed run at another (ten times as many trials) -> the final
    resume is still bit-identical and metrics.jsonl holds each step once."""
    kill_trial(trial, tiny_path, pairs_path, tmp_path / "run", straight, kills=2)


# ------------------------------------------------------------------------------------------------ 2. resume checks
def test_resume_with_other_settings_is_refused_before_loading(tiny_path, pairs_path, tmp_path, straight,
                                                               monkeypatch):
    """resume_from=latest with beta, lr and seed changed -> refused before the model loads, in one line listing each
    key with its old and new value and the resume_override that applies them."""
    import alignkit.engine.startup as startup

    copy_checkpoints(straight, tmp_path)
    monkeypatch.setattr(startup, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest", beta=0.3, lr=2e-3, seed=1))
    assert str(e.value) == (
        f"resume from {step_dir(tmp_path, 6)} refused: settings that change the result differ from the checkpoint's: "
        "beta: 0.5 -> 0.3; lr: 0.001 -> 0.002; seed: 0 -> 1. Restore them, or apply them with "
        "resume_override=beta,lr,seed")


def test_resume_with_other_data_is_refused_and_a_moved_file_is_not(tiny_path, pairs_path, tmp_path, straight):
    """resume with a data file missing one row -> refused naming 'data' and its fingerprints; the same rows at
    another path (and free keys such as log_every, save_every, keep_checkpoints changed) -> accepted."""
    copy_checkpoints(straight, tmp_path / "run")
    rows = Path(pairs_path).read_text().splitlines(keepends=True)
    (tmp_path / "fewer.jsonl").write_text("".join(rows[:-1]))
    (tmp_path / "moved.jsonl").write_text("".join(rows))
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(tiny_path, str(tmp_path / "fewer.jsonl"), tmp_path / "run", resume_from="latest"))
    old = json.loads((step_dir(tmp_path / "run", 6) / "trainer_state.json").read_text())["fingerprints"]["data"]
    assert (f"data: {old} -> " in str(e.value) and "(the training data's token ids and labels)" in str(e.value)
            and str(e.value).endswith("resume_override=data"))
    t = Trainer(tiny_config(tiny_path, str(tmp_path / "moved.jsonl"), tmp_path / "run", resume_from="latest",
                            log_every=2, save_every=3, keep_checkpoints=5))
    assert t._resume_path == step_dir(tmp_path / "run", 6) and t.fingerprints["data"] == old
    t._release()


def test_resume_with_the_preferences_reversed_or_the_reference_dropped_is_refused(tiny_path, pairs_path, tmp_path,
                                                                                   straight):
    """resume on the same texts with chosen and rejected swapped (the same token ids, other labels) -> refused
    naming 'data'; resume of a run trained against ref_model=PATH without it (the reference silently becoming a
    copy of the policy) -> refused naming 'ref_model' and 'reference'."""
    copy_checkpoints(straight, tmp_path / "run")
    rows = [json.loads(x) for x in Path(pairs_path).read_text().splitlines()]
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("".join(json.dumps({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]],
                                           "ranks": [1, 0]}) + "\n" for r in rows))
    with pytest.raises(CheckpointError, match=r"data: \w+ -> \w+ \(the training data's token ids and labels\)"):
        Trainer(tiny_config(tiny_path, str(swapped), tmp_path / "run", resume_from="latest"))
    out = tmp_path / "with_ref"
    Trainer(tiny_config(tiny_path, pairs_path, out, ref_model=tiny_path, max_steps=2)).train()
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, out, resume_from="latest", max_steps=2))
    assert "ref_model: " in str(e.value) and " -> null (the reference model's files)" in str(e.value)
    assert "reference: path -> copy" in str(e.value)


def test_resume_override_applies_lr_and_max_steps(tiny_path, pairs_path, tmp_path, straight, log):
    """resume from step 4 with lr=5e-4 and max_steps=8 named in resume_override -> both are logged and take effect:
    steps 5..8 run, step 5 uses 5e-4 x the linear schedule over 8 steps at step 4, and Adam's groups hold 5e-4."""
    copy_checkpoints(straight, tmp_path, steps=(2, 4))
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest", lr=5e-4, max_steps=8,
                            resume_override="lr,max_steps"))
    result = t.train()
    assert [h["step"] for h in result.history] == [5, 6, 7, 8]
    assert result.history[0]["lr"] == 5e-4 * lr_factor(4, "linear", 0, 8)
    assert result.history[1]["lr"] == 5e-4 * lr_factor(5, "linear", 0, 8)
    assert t.optimizer.param_groups[0]["initial_lr"] == 5e-4
    assert "resume_override: lr 0.001 -> 0.0005 (applied from step 4 on)" in messages(log)
    assert "resume_override: max_steps 6 -> 8 (applied from step 4 on)" in messages(log)


# ------------------------------------------------------------------------------------------------ 3. one run per folder
def test_a_second_run_on_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tiny_path, pairs_path,
                                                                                        tmp_path, log):
    """`alignkit train` is training in output_dir -> a second run there is refused in one line naming the first (pid,
    host, start time) and the first goes on; after kill -9 of the first, the next run takes the stale lock over
    with a warning, and gives it back when it ends."""
    out = tmp_path / "run"
    proc = start_cli(cli_items(tiny_path, pairs_path, out, max_steps=10000), tmp_path / "first.log", step_pause=0.2)
    try:
        assert wait_for(lambda: len(logged_steps(out)) >= 1, proc=proc)
        with pytest.raises(RunDirError) as e:
            Trainer(tiny_config(tiny_path, pairs_path, out, resume_from="latest"))
        holder = json.loads((out / "run.lock").read_text())
        who = f"pid {proc.pid} on {socket.gethostname()}, started {holder['started']}"
        assert str(e.value) == (f"output_dir {out} is in use by another run ({who}; lock {out / 'run.lock'}); "
                                "wait for it to finish or pick another output_dir")
        steps = len(logged_steps(out))
        assert wait_for(lambda: len(logged_steps(out)) > steps, proc=proc)  # the first run goes on
    finally:
        proc.kill()
        proc.wait()
    t = Trainer(tiny_config(tiny_path, pairs_path, out, max_steps=10000, resume_from="latest"))
    assert f"output_dir {out}: taking over the lock of a run that is no longer running ({who})" in messages(log)
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid()
    t._release()
    assert not (out / "run.lock").exists()


def test_a_new_run_in_a_folder_holding_a_run_needs_resume_or_overwrite(tiny_path, pairs_path, tmp_path, straight):
    """A new run in a folder holding a finished run -> refused in one line (what it holds, from when; resume_from=
    latest or overwrite=true); with overwrite=true the old checkpoints, final/ and metrics are replaced."""
    shutil.copytree(straight, tmp_path / "run")
    out = tmp_path / "run"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime((out / "final").stat().st_mtime))
    with pytest.raises(RunDirError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, out, max_steps=2))
    assert str(e.value) == (f"output_dir {out} holds a finished run (final/ from {stamp}); resume with "
                            "resume_from=latest or start over with overwrite=true")
    Trainer(tiny_config(tiny_path, pairs_path, out, max_steps=2, overwrite=True)).train()
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-000002"]
    assert logged_steps(out) == [1, 2] and (out / "final" / "model.safetensors").is_file()


def test_two_trainers_of_one_process_on_one_folder_cannot_both_write_a_run(tiny_path, pairs_path, tmp_path):
    """Two Trainers built on one folder before either trains (a notebook) -> the second to start is refused in one
    line, and the first's finished run (config, metrics, final/) is left as it was."""
    a = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, max_steps=2))
    b = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, max_steps=2, beta=0.1))
    a.train()
    config, final = (tmp_path / "config.yaml").read_text(), weights(tmp_path / "final")
    with pytest.raises(RunDirError, match=re.escape(f"output_dir {tmp_path} holds a finished run (final/ from ")):
        b.train()
    assert (tmp_path / "config.yaml").read_text() == config and logged_steps(tmp_path) == [1, 2]
    assert same_tensors(weights(tmp_path / "final"), final)


def test_overwrite_starts_the_code_record_and_the_samples_log_afresh(tiny_path, tmp_path):
    """An online run (log_samples_every=1, a reward named by module) over a folder of an earlier one with
    overwrite=true -> code.json names only this run's reward and samples.jsonl holds only this run's steps; a
    resume drops the sample lines of the steps it redoes."""
    (tmp_path / "prompts.txt").write_text("The movie was\nThe plot was\n")
    base = dict(RUN, model=tiny_path, prompts=str(tmp_path / "prompts.txt"), objective="grpo", num_samples=2,
                max_new_tokens=3, batch_size=2, log_samples_every=1, output_dir=str(tmp_path / "run"), beta=None)
    import alignkit

    alignkit.train({**base, "reward": "alignkit.worlds.reviews:reward", "max_steps": 3})
    alignkit.train({**base, "reward": "alignkit.model_matrix:distinct_characters", "max_steps": 2, "overwrite": True})
    code = json.loads((tmp_path / "run" / "code.json").read_text())["functions"]
    assert [f["spec"] for f in code] == ["alignkit.model_matrix:distinct_characters"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert steps == [1, 1, 2, 2]
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    redone = [json.dumps({**json.loads(x), "step": 3, "prompt": "from the killed run"}) for x in lines[-2:]]
    (tmp_path / "run" / "samples.jsonl").write_text("\n".join(lines + redone) + "\n")  # step 3 logged, not saved
    alignkit.train({**base, "reward": "alignkit.model_matrix:distinct_characters", "max_steps": 3,
                    "resume_from": "latest", "resume_override": "max_steps"})
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2, 2, 3, 3] and "from the killed run" not in {r["prompt"] for r in rows}


# ------------------------------------------------------------------------------------------------ 4. atomic writes
def test_a_kill_during_the_final_save_leaves_no_half_written_final(tiny_path, pairs_path, tmp_path, straight):
    """The process dies while final/ is being written (after the weights, before the tokenizer) -> no final/ at
    all (not a half-written one), checkpoint step-000006 intact; resume_from=latest writes final/ bit-identical."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing final/")

    t.tokenizer.save_pretrained = killed
    with pytest.raises(KeyboardInterrupt, match="killed while writing"):
        t.train()
    assert not (tmp_path / "final").exists() and ckpt.verify_checkpoint(step_dir(tmp_path, 6)) is None
    resume_to_end(tiny_path, pairs_path, tmp_path)
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))


def test_metrics_stay_on_disk_when_a_resumed_run_dies_before_its_first_log(tiny_path, pairs_path, tmp_path,
                                                                            straight):
    """A run resumed from step 4 dies during its first step -> metrics.jsonl on disk still holds steps 1..4 (the
    lines of steps 5 and 6 were dropped), at every moment of the resume."""
    copy_checkpoints(straight, tmp_path, steps=(2, 4))
    shutil.copy(straight / "metrics.jsonl", tmp_path / "metrics.jsonl")
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest"))
    on_disk = []

    def dies():
        on_disk.append(logged_steps(tmp_path))
        raise KeyboardInterrupt("killed")

    t.step = dies
    with pytest.raises(KeyboardInterrupt, match="killed"):
        t.train()
    assert on_disk == [[1, 2, 3, 4]] and logged_steps(tmp_path) == [1, 2, 3, 4]


def test_a_torn_last_metrics_line_is_tolerated_and_reported(tiny_path, pairs_path, tmp_path, straight, log):
    """metrics.jsonl ends in a torn line (a kill mid-write) -> the resume goes on, a warning names the line, the
    file ends with whole lines of steps 1..6; `alignkit report`'s reader also leaves it out with a warning."""
    from alignkit.eval.runs_report import read_run

    copy_checkpoints(straight, tmp_path, steps=(2, 4))
    lines = (straight / "metrics.jsonl").read_text().splitlines(keepends=True)[:4]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 5, "lo')
    assert len(read_run(tmp_path)["rows"]) == 4
    resume_to_end(tiny_path, pairs_path, tmp_path)
    torn = f"{tmp_path / 'metrics.jsonl'}: left out unreadable line(s) 5 (torn: the run stopped while writing it)"
    assert messages(log).count(torn) == 2  # the report's reader, then the resume
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())


# ------------------------------------------------------------------------------------------------ 5. integrity
def corrupt_truncate(path: Path) -> str:
    f = path / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2])
    return f"model.safetensors has {size // 2} bytes, the manifest says {size} (truncated?)"


def corrupt_flip(path: Path) -> str:
    f = path / "optimizer.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return "optimizer.pt does not match its sha256 in the manifest (corrupted)"


def corrupt_delete(path: Path) -> str:
    (path / "optimizer.pt").unlink()
    return "optimizer.pt is missing"


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_flip, corrupt_delete],
                         ids=["truncated-safetensors", "flipped-byte", "deleted-optimizer"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_valid_one(tiny_path, pairs_path, tmp_path, straight,
                                                                         log, corrupt):
    """The newest checkpoint (step 6) truncated / with a flipped byte / without optimizer.pt -> a warning names the
    checkpoint, the file and the reason, the resume starts from step-000004 and ends bit-identical."""
    copy_checkpoints(straight, tmp_path)
    reason = corrupt(step_dir(tmp_path, 6))
    result = resume_to_end(tiny_path, pairs_path, tmp_path)
    assert f"checkpoint step-000006: {reason}" in messages(log)
    assert f"resuming from {step_dir(tmp_path, 4)}, the newest valid checkpoint" in messages(log)
    assert [h["step"] for h in result.history] == [5, 6]
    assert same_tensors(weights(tmp_path / "final"), weights(straight / "final"))


def test_a_named_checkpoint_without_its_optimizer_is_refused_naming_the_file(tiny_path, pairs_path, tmp_path,
                                                                             straight):
    """resume_from=PATH of a checkpoint whose optimizer.pt was deleted -> one line naming the folder and the file
    (not "saved under FSDP/DeepSpeed"), also from the loader itself when the manifest is gone too."""
    copy_checkpoints(straight, tmp_path, steps=(4,))
    path = step_dir(tmp_path, 4)
    (path / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from=str(path)))
    assert str(e.value) == f"resume_from={path}: optimizer.pt is missing"
    (path / "manifest.json").unlink()
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(path, None, opt, build_scheduler(opt, "linear", 0, 6))
    assert str(e.value) == f"checkpoint {path}: optimizer.pt is missing; resume from an earlier checkpoint"


def test_a_wrong_shape_tensor_is_refused_before_any_weight_changes(tiny_path, pairs_path, tmp_path, straight):
    """A checkpoint whose embedding is [1, 64] (without a manifest, as one saved before manifests, so only the shape
    check can see it) -> CheckpointError naming the file, the tensor and both shapes; no parameter changed."""
    copy_checkpoints(straight, tmp_path, steps=(6,))
    path = step_dir(tmp_path, 6)
    tensors = weights(path)
    name = next(n for n, t in tensors.items() if t.dim() == 2)
    full = tensors[name]
    save_file({**tensors, name: full[:1].clone()}, path / "model.safetensors")
    (path / "manifest.json").unlink(missing_ok=True)
    state = json.loads((path / "trainer_state.json").read_text())
    state.pop("fingerprints")  # an older alignkit wrote neither (a manifest without its fingerprints is damage)
    (path / "trainer_state.json").write_text(json.dumps(state))
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest"))
    before = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
    with pytest.raises(CheckpointError) as e:
        t.resume("latest")
    assert str(e.value) == (f"{path / 'model.safetensors'}: tensor {name!r} is [1, {full.shape[1]}] torch.float32, "
                            f"the model's is {list(full.shape)} torch.float32 (was it saved with the same model, dtype "
                            "and LoRA settings?)")
    assert all(torch.equal(before[n], p) for n, p in t.policy.named_parameters())
    t._release()


def test_a_checkpoint_of_this_version_without_its_manifest_is_damaged(tiny_path, pairs_path, tmp_path, straight):
    """The newest checkpoint lost its manifest.json (its trainer_state.json has fingerprints: written by this
    version) -> passed over as damaged, with a warning naming it; the resume takes step-000004."""
    copy_checkpoints(straight, tmp_path, steps=(4, 6))
    (step_dir(tmp_path, 6) / "manifest.json").unlink()
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest"))
    assert t._resume_path == step_dir(tmp_path, 4)
    t._release()


def test_foreign_folders_are_ignored_and_kept(tiny_path, pairs_path, tmp_path, straight):
    """checkpoints/ also holds step-000010.bak (a copy of step 6) and step-abc -> they are not checkpoints: the
    resume takes step-000006, and saving with keep_checkpoints=1 removes neither."""
    copy_checkpoints(straight, tmp_path, steps=(4, 6))
    shutil.copytree(step_dir(tmp_path, 6), tmp_path / "checkpoints" / "step-000010.bak")
    (tmp_path / "checkpoints" / "step-abc").mkdir()
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest", keep_checkpoints=1))
    assert t.train().history == [] and t.step_idx == 6
    t.save()  # a save at step 6 again: rotation keeps one checkpoint
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000006", "step-000010.bak", "step-abc"]


def test_no_valid_checkpoint_at_all_is_one_line(tiny_path, pairs_path, tmp_path, straight):
    """Every checkpoint truncated -> resume_from=latest is refused in one line listing each checkpoint and why (no
    silent fresh start over the run's folder)."""
    copy_checkpoints(straight, tmp_path)
    reasons = [f"step-{s:06d}: {corrupt_truncate(step_dir(tmp_path, s))}" for s in (6, 4, 2)]
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path, resume_from="latest"))
    assert str(e.value) == (f"resume_from=latest: no valid checkpoint in {tmp_path / 'checkpoints'} "
                            f"({'; '.join(reasons)}); start over with overwrite=true")


# ------------------------------------------------------------------------------------------------ 6. numerics
def test_an_update_that_would_make_weights_non_finite_is_rolled_back(tiny_path, pairs_path, tmp_path):
    """Step 3 has a finite loss and gradient, but its update would overflow the weights (lr 1e39) -> the update
    is skipped and counted: weights and Adam state are exactly those after step 2, all finite."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path))
    t.step()
    t.step()
    params = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
    moments = {k: {n: v.clone() for n, v in s.items()} for k, s in t.optimizer.state_dict()["state"].items()}
    for group in t.optimizer.param_groups:
        group["lr"] = 1e39
    record = t.step()
    assert record["skipped_steps"] == 1 and t.step_idx == 3 and math.isfinite(record["loss"])
    assert all(torch.equal(params[n], p) for n, p in t.policy.named_parameters())
    state = t.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[k][n], state[k][n]) for k in moments for n in moments[k])
    t._release()


def test_float16_weights_that_adam_would_break_stay_intact(tiny_path, pairs_path, tmp_path):
    """float16 weights (AdamW's eps underflows to 0 there, so the first update turns weights inf/NaN at a finite
    loss) -> every update is skipped, the run stops after max_bad_steps=3 in one line, the weights are still the
    model's own and finite, and no checkpoint is written."""
    from alignkit.engine.loop import TrainingStopped

    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, dtype="float16", max_bad_steps=3,
                            verify_logprobs=False))
    before = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
    with pytest.raises(TrainingStopped) as e:
        t.train()
    assert all(torch.equal(before[n], p) for n, p in t.policy.named_parameters())
    assert str(e.value) == ("3 steps in a row had a non-finite loss, gradient or update; stopping. Lower lr, check "
                            "the data, or use dtype=float32.")
    assert ckpt.list_checkpoints(tmp_path / "checkpoints") == []



def nan_losses_after(trainer, done: int) -> None:
    """Make every loss of ``trainer`` NaN once ``done`` steps have completed (steps done+1, done+2, ...)."""
    micro = trainer._micro_loss

    def poisoned(indices, data, train):
        out, tokens = micro(indices, data, train)
        if trainer.step_idx >= done:
            out.loss = out.loss * float("nan")
        return out, tokens

    trainer._micro_loss = poisoned

def test_a_run_that_diverges_keeps_its_last_finite_update(tiny_path, pairs_path, tmp_path, straight):
    """The loss turns NaN after step 4 (save_every=0, max_bad_steps=2) -> one line (what happened, where the work
    is, how to go on), a checkpoint step-000006 whose weights and Adam moments are the uninterrupted step 4's."""
    from alignkit.engine.loop import TrainingStopped

    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, max_bad_steps=2))
    nan_losses_after(t, 4)
    with pytest.raises(TrainingStopped) as e:
        t.train()
    assert str(e.value) == (
        "2 steps in a row had a non-finite loss, gradient or update; stopping. Lower lr, check the data, or use "
        f"dtype=float32. Checkpoint step-000006 holds the weights of step 4, the last finite update: resume with "
        f"`alignkit train {tmp_path}/config.yaml resume_from=latest resume_override=lr lr=<lower>`")
    a, b = step_dir(tmp_path, 6), step_dir(straight, 4)
    assert same_tensors(weights(a), weights(b))
    assert all(torch.equal(x, y) for x, y in zip(optimizer_moments(a), optimizer_moments(b), strict=True))


def test_a_run_whose_every_step_is_skipped_writes_no_final_model(tiny_path, pairs_path, tmp_path):
    """hparams={beta: .inf} (every loss NaN) with max_steps=3 < max_bad_steps -> one line saying no update was
    applied and no final model written (it would be the initial model under a trained name)."""
    from alignkit.engine.loop import TrainingStopped

    with pytest.raises(TrainingStopped, match="every one of the 3 steps had a non-finite loss, gradient or update"):
        Trainer(tiny_config(tiny_path, pairs_path, tmp_path, max_steps=3, beta=None, hparams={"beta": math.inf},
                            verify_logprobs=False)).train()
    assert not (tmp_path / "final").exists()


def test_saves_through_skipped_steps_keep_the_last_healthy_checkpoint(tiny_path, pairs_path, tmp_path, straight):
    """Steps 3..6 have a NaN loss (skipped; each saved, keep_checkpoints=1) -> step-000002, the newest checkpoint
    saved outside the run of skipped steps, is kept beside step-000006 and holds the uninterrupted step 2."""
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, save_every=1, keep_checkpoints=1, max_bad_steps=10))
    nan_losses_after(t, 2)
    assert t.train().skipped_steps == 4
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-000002", "step-000006"]
    assert same_as_straight(tmp_path, straight, 2)


def test_rotation_always_keeps_the_last_checkpoint_with_finite_weights(tmp_path, log):
    """Checkpoints 1 (finite), then 2, 3, 4 with NaN weights, keep_checkpoints=2 -> step 1 is kept beside 3 and 4;
    resume_from=latest picks step 1, naming the two NaN checkpoints it passes over."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, "linear", 0, 10)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, model, opt, sched, {"skipped_total": 0}, "a: 1\n", keep=2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    for step in (2, 3, 4):
        ckpt.save_checkpoint(root, step, model, opt, sched, {"skipped_total": 0}, "a: 1\n", keep=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000001", "step-000003", "step-000004"]
    from alignkit.engine.resume import locate

    assert locate("latest", tmp_path) == root / "step-000001"
    assert "checkpoint step-000004: its weights are not finite (NaN/inf)" in messages(log)
    assert "checkpoint step-000003: its weights are not finite (NaN/inf)" in messages(log)


# ------------------------------------------------------------------------------------------------ 8. before the expensive part
def test_an_output_dir_that_cannot_be_written_is_one_line(tiny_path, pairs_path, tmp_path, monkeypatch):
    """output_dir under a file -> one line 'not writable (Not a directory)' before the model loads."""
    import alignkit.engine.startup as startup

    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    monkeypatch.setattr(startup, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(RunDirError) as e:
        Trainer(tiny_config(tiny_path, pairs_path, out))
    assert str(e.value) == f"output_dir {out} is not writable (Not a directory); pick another output_dir"


def test_too_little_disk_is_refused_before_loading(tiny_path, pairs_path, tmp_path, monkeypatch):
    """The disk has 10 MiB free, less than a checkpoint plus the final model -> one line with both sizes, before the
    model loads."""
    import alignkit.engine.startup as startup

    config = tiny_config(tiny_path, pairs_path, tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    monkeypatch.setattr(startup, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(RunDirError) as e:
        Trainer(config)
    from alignkit.engine import rundir

    need = rundir.needed_bytes(config, Path(tiny_path))
    assert need == rundir.safetensors_params(Path(tiny_path)) * 4 * 4 + rundir.MARGIN  # weights, 2 moments, final
    assert str(e.value) == (f"output_dir {tmp_path}: 0.01 GiB free on its disk, this run needs about "
                            f"{need / 2**30:.2f} GiB (a checkpoint of the trainable parameters with their optimizer "
                            "state, and the final model); free space or pick another output_dir")
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("content", [b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", b""],
                         ids=["lfs-pointer", "empty"])
def test_weights_that_are_not_safetensors_are_one_line_before_loading(tiny_path, pairs_path, tmp_path, content):
    """model.safetensors is a Git LFS pointer (a clone without git-lfs) / empty -> one line naming the file and the
    fix, before anything is loaded (the disk estimate reads the header first)."""
    from alignkit.errors import ModelError

    model = tmp_path / "model"
    shutil.copytree(tiny_path, model)
    (model / "model.safetensors").write_bytes(content)
    fix = "is a Git LFS pointer, not the weights: run `git lfs pull`" if content else "is not a safetensors file"
    with pytest.raises(ModelError, match=re.escape(f"{model / 'model.safetensors'} {fix}")):
        Trainer(tiny_config(str(model), pairs_path, tmp_path / "run"))


@pytest.mark.parametrize("fails", ["model.safetensors", "optimizer.pt"])
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tiny_path, pairs_path, tmp_path,
                                                                                 straight, fails):
    """The disk refuses a write while checkpoint step 4 is saved (a real limit on file size: safetensors and
    torch.save fail as they do on a full disk) -> one line (which save, the OS error, what stays), its temp
    folder is gone, and step-000002 is still valid and equal to the uninterrupted run's."""
    import resource

    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, save_every=2))
    sizes = {}
    original = t.save

    def save_with_a_limit():
        if t.step_idx != 4:
            return original()
        sizes.update({f.name: f.stat().st_size for f in step_dir(tmp_path, 2).iterdir()})
        limit = sizes["model.safetensors"] // 2 if fails == "model.safetensors" else sizes["model.safetensors"] + 64
        assert sizes["optimizer.pt"] > limit  # optimizer.pt holds two moments per weight
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write is then an error, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            return original()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    t.save = save_with_a_limit
    with pytest.raises(RunDirError) as e:
        t.train()
    assert str(e.value) == (f"{tmp_path / 'checkpoints'}: write failed while saving step-000004 (File too large); "
                            "the previous checkpoint step-000002 is intact. Free space (or pick another "
                            "output_dir) and resume with resume_from=latest")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert ckpt.verify_checkpoint(step_dir(tmp_path, 2)) is None and same_as_straight(tmp_path, straight, 2)


def test_no_space_left_reads_as_disk_full():
    """The OS error behind a failed write, whatever the writer raised: ENOSPC -> 'disk full' in the line."""
    from safetensors import SafetensorError

    assert ckpt.os_error(SafetensorError("Error while serializing: I/O error: No space left on device "
                                         "(os error 28)")).errno == errno.ENOSPC
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as e:
        assert e.__cause__ is None and ckpt.os_error(e).errno == errno.ENOSPC  # torch.save's: in the context
    assert ckpt.os_error(RuntimeError("a bug")) is None


def test_max_length_beyond_the_position_limit_is_lowered_before_loading(tiny_path, pairs_path, tmp_path, log):
    """max_length beyond the model's max_position_embeddings -> lowered to the limit with one warning naming both
    numbers, read from config.json before any weight is loaded; config.yaml records the value used."""
    from transformers import AutoConfig

    limit = AutoConfig.from_pretrained(tiny_path).max_position_embeddings
    t = Trainer(tiny_config(tiny_path, pairs_path, tmp_path, max_length=limit + 1000, max_steps=1))
    assert t.config.max_length == limit
    assert (f"max_length {limit + 1000} is beyond the position limit of model {tiny_path} (max_position_embeddings="
            f"{limit}): sequences are cut at {limit} (set max_length <= {limit} to silence this)") in messages(log)
    t.train()
    assert f"max_length: {limit}\n" in (tmp_path / "config.yaml").read_text()


def test_the_update_check_computes_as_adamw_does_in_float16():
    """A float16 gradient of 300: g² overflows float16, but AdamW's fused addcmul does not -> the check predicts a
    finite step (and the step is finite); a learning rate whose step overflows -> predicted non-finite, and is."""
    from alignkit.engine.numerics import adamw_step_is_finite

    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.full_like(p, 300.0)
    assert adamw_step_is_finite(opt)
    opt.step()
    assert torch.isfinite(p).all() and float(opt.state[p]["exp_avg_sq"][0]) == 90.0
    q = torch.nn.Parameter(torch.full((4,), 3e38))
    opt = torch.optim.AdamW([q], lr=1e37)
    q.grad = -torch.ones(4)
    assert not adamw_step_is_finite(opt)
    opt.step()
    assert not torch.isfinite(q).all()


def test_a_kill_between_publishs_two_renames_is_undone_at_the_next_start(tiny_path, pairs_path, tmp_path, straight):
    """final/ was moved aside as .old-final and the kill came before the new one was renamed in -> the next run on
    the folder puts the old final/ back (with a warning) and sees a finished run; a stale .old-* beside its
    folder is removed."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    os.replace(out / "final", out / ".old-final")
    shutil.copytree(step_dir(out, 6), out / "checkpoints" / ".old-step-000006")
    with pytest.raises(RunDirError, match="holds a finished run"):
        Trainer(tiny_config(tiny_path, pairs_path, out, max_steps=2))
    assert (out / "final" / "model.safetensors").is_file() and not (out / ".old-final").exists()
    assert not (out / "checkpoints" / ".old-step-000006").exists()
    assert same_tensors(weights(out / "final"), weights(straight / "final"))
