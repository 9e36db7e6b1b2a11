"""The loop around a trainer's steps: run to ``total_steps`` or to a signal, evaluate and save on schedule,
log every step, stop a diverged run after saving its last finite update, and report what was finished.

`StepLoop` is the base of `alignkit.engine.trainer.Trainer`, which supplies the steps, evaluation and
checkpoints (``step``, ``evaluate``, ``save``, ``save_final``, ``resume``); this file holds only the order in
which they run and what a signal, a divergence or an evaluation cut short leaves behind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.engine import checkpoint as ckpt
from alignkit.engine import distributed as dist
from alignkit.engine import rundir
from alignkit.engine.interrupts import RunInterrupted
from alignkit.engine.logging import MetricsLogger, logger, progress_fields
from alignkit.errors import AlignkitError


class TrainingStopped(AlignkitError):
    """Raised when too many consecutive steps had a non-finite loss, gradient or update (the run diverged: a
    setting to change, so one line on the command line, after the last finite update is saved)."""


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    skipped_steps: int = 0
    layout: str | None = None  # the batch layout the run used (after the start-up check)


class StepLoop:
    """Drives ``self.step()`` (module docstring); the subclass sets ``config``, ``accelerator``, ``guard``,
    ``output_dir``, ``objective``, ``optimizer`` and the step counters before `train` is called."""

    def train(self) -> TrainResult:
        """Run to ``total_steps`` (or to a signal: then a checkpoint of the last finished step, the command that
        resumes it, and the signal passed on to the handler from before the run)."""
        self.guard.install()
        try:
            result = self._run()
        finally:
            self.guard.restore()
            self._release()
        self.guard.pass_on()
        return result

    def _run(self) -> TrainResult:
        c, acc = self.config, self.accelerator
        main = acc.is_main_process
        try:
            with self.guard.during("setup"):
                if self._resume_path is not None:
                    self.resume(c.resume_from)
                if main:
                    rundir.start_run(self.output_dir, c, self._config_yaml())
                    self._start_files()
        except RunInterrupted:
            self.guard.report(self.step_idx, self.output_dir, None, started=False)
            return TrainResult(self.output_dir, None, [], True, self.skipped_total)
        log = MetricsLogger(self.output_dir, c.trackers, dataclasses.asdict(c), enabled=main,
                            resume_step=self.step_idx)
        history: list[dict[str, Any]] = []
        bar = _progress(self.total_steps, self.step_idx, enabled=c.progress and main)
        stopped = dist.any_process(acc, self.guard.signum is not None)  # a signal during start-up
        record = None  # a finished step's record not logged yet
        try:
            while self.step_idx < self.total_steps and not stopped:
                try:
                    record = self._guarded_step()
                except TrainingStopped as e:
                    log.close()
                    raise TrainingStopped(str(e) + self._keep_last_finite_update()) from None
                if c.eval_every and self.step_idx % c.eval_every == 0:
                    with self.guard.during("eval"):  # a signal stops the evaluation at once
                        record.update(self.evaluate())
                self._log(record, history, log, bar)
                record = None
                if c.save_every and self.step_idx % c.save_every == 0:
                    self.save()
                stopped = dist.any_process(acc, self.guard.signum is not None)
            if self.step_idx > 0 and self.skipped_total == self.step_idx:  # not one update applied
                log.close()
                raise TrainingStopped(f"every one of the {self.step_idx} steps had a non-finite loss, gradient or "
                                      "update, so the model never changed; no final model is written. Check the "
                                      "objective's hyper-parameters and the data, or lower lr")
            if not stopped:
                with self.guard.during("eval"):
                    self._final_eval(history, log)
        except RunInterrupted:
            stopped = True
            if record is not None:  # its evaluation was cut short; the step itself finished
                self._log(record, history, log, bar)
        finally:
            bar.close()
        if self._saved_step != self.step_idx and (self.step_idx > 0 or not stopped):
            self.save()
        final_dir = None if stopped else self.save_final()
        self.guard.report(self.step_idx, self.output_dir, final_dir, stopped=stopped)
        log.close()
        if self.skipped_total:
            logger.warning("%d step(s) were skipped for non-finite loss, gradient or update", self.skipped_total)
        return TrainResult(self.output_dir, final_dir, history, stopped, self.skipped_total, self.layout)

    def _start_files(self) -> None:
        """What a run writes into its folder as it starts, after an old run there is cleared (a subclass may add
        files, e.g. the code its reward functions came from)."""

    def _keep_last_finite_update(self) -> str:
        """When a run diverges: a checkpoint of its weights, which are those of the last finite update (skipped
        updates change nothing), unless that step is saved already or there was none; what to do next."""
        last = self.step_idx - self.skipped_in_row
        if last <= 0 or last <= (self._saved_step or 0):
            return ""
        path = self.save()
        return (f" Checkpoint {path.name if path else f'step {self.step_idx}'} holds the weights of step {last}, the "
                f"last finite update: resume with `alignkit train {self.output_dir}/config.yaml resume_from=latest "
                "resume_override=lr lr=<lower>`")

    def _guarded_step(self) -> dict[str, Any]:
        """`step`, in the ``step`` phase: a second signal stops it at once, and the RNG and objective state go back
        to the step's start (the weights are untouched until the update, which no signal interrupts)."""
        rng, objective_state = ckpt.rng_state(), self.objective.state_dict()
        try:
            with self.guard.during("step"):
                return self.step()
        except RunInterrupted:
            ckpt.set_rng_state(*rng)
            self.objective.load_state_dict(objective_state)
            self.optimizer.zero_grad(set_to_none=True)
            raise

    def _log(self, record: dict[str, Any], history: list, log: MetricsLogger, bar) -> None:
        history.append(record)
        if self.step_idx % max(1, self.config.log_every) == 0 or self.step_idx == self.total_steps:
            log.log(record)
        bar.update(1)
        bar.set_postfix(progress_fields(record))

    def _final_eval(self, history: list, log: MetricsLogger) -> None:
        c = self.config
        if (self.eval_data is None and not c.eval_judge) or c.eval_every:
            return
        final_eval = self.evaluate()
        if final_eval:
            final_eval["step"] = self.step_idx
            log.log(final_eval)
            history.append(final_eval)
            logger.info("eval: %s", {k: round(v, 4) for k, v in final_eval.items()})


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)
