"""SIGINT / SIGTERM during a run: stop at a point that loses nothing, leave a checkpoint, say how to resume.

What a signal does depends on the phase the run is in (`StopGuard.phase`):

* ``setup`` (reading and tokenizing data, loading the model, the reference-cache pass, loading a checkpoint)
  and ``eval`` (periodic or final evaluation): nothing there is lost by stopping, so the work stops at once
  (`RunInterrupted` is raised where the signal lands). After setup there is nothing to resume; after an
  evaluation the trainer saves the step it had finished;
* ``step``: the step is finished, then the trainer saves it. A second signal stops the step at once; its
  partial work is dropped (the RNG and objective state go back to the step's start), and the previous step
  is saved, so the resumed run is still exact;
* ``update`` (the optimizer is changing the weights) and ``save``: always finished first.

Under several processes nothing stops mid-phase (the others would wait in a collective): every signal is
handled at the next step boundary, on every process together.

When the run has saved, the signal is passed on to the handler that was there before the run
(`StopGuard.pass_on`): Python's default turns SIGINT into KeyboardInterrupt (so Ctrl-C on a test suite
stops the suite, and the command line exits with 130 without a traceback), SIGTERM's default ends the
process by SIGTERM, and a handler that returns leaves the trainer's result to be returned. A signal that
was ignored when the run started is never caught: it stays ignored (`StopGuard.install`).
"""

from __future__ import annotations

import contextlib
import signal
import threading

from alignkit.engine.logging import logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORTABLE = ("setup", "eval")


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped the run where stopping at once loses nothing (see the module docstring)."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


class StopGuard:
    def __init__(self, single_process: bool):
        self.single = single_process
        self.signum: int | None = None  # the first signal received
        self.phase = "idle"
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Handle SIGINT / SIGTERM until `restore` (only the main thread can: elsewhere signals stay as they are).
        A signal the process was started with ignored stays ignored: a shell without job control starts
        background commands so (``alignkit train … &`` in a script), so that Ctrl-C on the terminal spares them."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def pass_on(self) -> None:
        """Deliver the received signal to the handlers restored by `restore` (module docstring)."""
        if self.signum is not None and not self._previous:
            signal.raise_signal(self.signum)

    @contextlib.contextmanager
    def during(self, phase: str):
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    @contextlib.contextmanager
    def starting(self, release):
        """A trainer's start-up: handlers installed, phase ``setup``; on any failure ``release()`` (the folder's
        lock) is called, and a signal is reported and passed on."""
        self.install()
        try:
            with self.during("setup"):
                yield
        except BaseException as e:
            self.restore()
            release()
            if isinstance(e, RunInterrupted):
                logger.warning("%s received during start-up: stopped before training, nothing to resume; run the "
                               "same command again", self.name)
                self.pass_on()
            raise
        self.restore()

    def report(self, step: int, output_dir, final_dir, stopped: bool = True, started: bool = True) -> None:
        """The run's last word on a signal: where it stopped and the command that resumes it."""
        if not started:
            logger.warning("%s received before training started: nothing was trained; run the same command again",
                           self.name)
        elif stopped:
            saved = f"checkpoint of step {step} in {output_dir / 'checkpoints'}" if step else "nothing trained yet"
            logger.warning("interrupted by %s after step %d; %s. Resume with: alignkit train %s resume_from=latest",
                           self.name if self.signum else "a signal to another process", step, saved,
                           output_dir / "config.yaml")
        elif self.signum is not None:
            logger.warning("%s received during the final save: the save was finished first; the run is complete (%s)",
                           self.name, final_dir)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def _on_signal(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        phase = self.phase.split(":")[0]
        if self.single and (phase in ABORTABLE or (phase == "step" and not first)):
            raise RunInterrupted(signum)
        what = {"step": "finishing this step, then saving a checkpoint (a second signal stops the step now)",
                "update": "finishing this update, then saving a checkpoint",
                "save": "finishing the save first"}.get(phase, "stopping at the end of this step")
        logger.warning("%s received: %s", signal.Signals(signum).name, what)
