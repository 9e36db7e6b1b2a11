"""The run folder, and the checks that run before anything expensive (reading data, loading the model, the
reference pass).

* **One run per folder.** ``<output_dir>/run.lock`` holds the pid, host and start time of the run using the
  folder, under an exclusive ``flock`` that the kernel drops when the process ends, however it ends. A
  second run on the folder is refused in one line naming the first; a lock file left by a dead process is
  taken over with a warning. Trainers of one process share its lock (a notebook, a test building two).
* **No silent overwrite.** A new run in a folder that holds one (``config.yaml``, a checkpoint, ``final/``)
  needs ``resume_from=latest`` or ``overwrite=true``; ``overwrite=true`` removes the previous run's
  checkpoints, ``final/``, ``adapter/``, metrics and config when the new run starts training (caches such as
  ``ref_cache/`` stay: they are keyed by content).
* **Room to finish.** The folder must be writable and its disk must have room for one more checkpoint of
  the trainable parameters (weights + AdamW's two moments: 3 x the parameter bytes, 12 bytes a parameter in
  float32) plus the final model, counted from the model's safetensors headers before any weight is read.
* **Positions.** ``max_length`` beyond the model's position limit (``max_position_embeddings`` /
  ``n_positions`` in its config.json) is lowered to the limit with a warning naming both numbers, before
  any weight is loaded, instead of failing later (an index error, or memory for positions that cannot
  exist). A clamp rather than an error because the default (512) is beyond small models' limits (the
  demo's world has 256 positions) and sequences past the limit cannot be scored anyway; the run's
  config.yaml and checkpoints record the value used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import shutil
import socket
import struct
import weakref
from pathlib import Path

from alignkit.engine.checkpoint import latest_checkpoint, recover_published
from alignkit.engine.distributed import any_process
from alignkit.engine.logging import logger
from alignkit.errors import AlignkitError, ConfigError, ModelError, RunDirError
from alignkit.io_atomic import atomic_write_text
from alignkit.models.checks import position_limit
from alignkit.models.hub import resolve_model

LOCK = "run.lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "code.json", "samples.jsonl")
RUN_DIRS = ("checkpoints", "final", "adapter", "tensorboard", ".tmp-final", ".tmp-adapter", ".old-final",
            ".old-adapter")
MARGIN = 64 * 2**20  # bytes beyond the estimate: config, tokenizer, RNG and trainer state files
_HELD: dict[str, list] = {}  # resolved folder -> [fd, holders] of the locks this process holds


def _stamp(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


def _who(h: dict) -> str:
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}"


def acquire(folder: Path) -> None:
    """Take ``folder``'s run lock (see the module docstring), or raise `RunDirError` naming its holder."""
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    path = folder / LOCK
    for _ in range(10):  # the holder may remove the file between our open and our flock: then try again
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirError(f"output_dir {folder} is in use by another run ({_who(holder)}; lock {path}); wait "
                              "for it to finish or pick another output_dir") from None
        except OSError as e:  # a file system without flock (some network mounts): the pid file still says who
            logger.warning("output_dir %s: cannot lock %s (%s); a second run on this folder would not be refused",
                           folder, path, e.strerror or e)
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            continue
        stale = _holder(fd)
        if stale.get("pid") and stale.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            raise RunDirError(f"output_dir {folder} is locked by a run on another machine ({_who(stale)}); if that "
                              f"run has ended, delete {path}")
        if stale.get("pid"):
            logger.warning("output_dir %s: taking over the lock of a run that is no longer running (%s)", folder,
                           _who(stale))
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        os.fsync(fd)
        _HELD[key] = [fd, 1]
        return
    raise RunDirError(f"output_dir {folder}: could not take {path} (it keeps changing); is another run starting?")


def release(folder: Path) -> None:
    """Give back one hold on ``folder``'s lock; the last one removes the lock file and unlocks it."""
    key = str(folder.resolve())
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / LOCK)  # while still holding it: a newcomer then finds no file, or its own new one
    os.close(entry[0])


def describe_run(folder: Path) -> str | None:
    """What the folder holds of an earlier run, for the refusal message; None for a folder without a run."""
    if (folder / "final").is_dir():
        return f"a finished run (final/ from {_stamp(folder / 'final')})"
    last = latest_checkpoint(folder / "checkpoints")
    if last is not None:
        return f"an unfinished run (checkpoints/{last.name} from {_stamp(last)})"
    if (folder / "config.yaml").is_file():
        return f"a run that saved no checkpoint (config.yaml from {_stamp(folder / 'config.yaml')})"
    return None


def check_new_run(folder: Path, config) -> None:
    """A new run (no ``resume_from``) may not start in a folder that holds one, unless ``overwrite=true``."""
    if config.resume_from or config.overwrite:
        return
    held = describe_run(folder)
    if held:
        raise RunDirError(f"output_dir {folder} holds {held}; resume with resume_from=latest or start over with "
                          "overwrite=true")


def clear_run(folder: Path) -> None:
    """``overwrite=true``: remove what the previous run in ``folder`` wrote (module docstring)."""
    gone = [n for n in (*RUN_DIRS, *RUN_FILES) if (folder / n).exists()]
    for name in gone:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if gone:
        logger.warning("overwrite=true: removed the previous run's %s from %s", ", ".join(gone), folder)


def start_run(folder: Path, config, config_yaml: str) -> None:
    """The run's folder as training starts: checked again for a run another trainer of this process may have
    finished in it since this one was built, the previous run cleared (``overwrite``), ``config.yaml`` written."""
    check_new_run(folder, config)
    if config.overwrite:
        clear_run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", config_yaml)


def check_writable(folder: Path) -> None:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"alignkit")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"output_dir {folder} is not writable ({e.strerror or e}); pick another output_dir") from e


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; a file that is not one (a Git LFS pointer left by a clone without
    git-lfs, a truncated download) is one `ModelError` line naming it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        try:
            header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
        except ValueError:
            header = None
    if isinstance(header, dict):
        return header
    if head.startswith(b"version "):
        raise ModelError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in {path.parent} (or "
                         "download the model again)")
    raise ModelError(f"{path} is not a safetensors file ({size} bytes, no valid header): download it again")


def safetensors_params(model_dir: Path) -> int | None:
    """Number of parameters in a local model folder, from its safetensors headers (no weight is read); weight
    files in other formats count at 4 bytes a parameter. None when the folder has no weight files."""
    total, found = 0, False
    for f in sorted(model_dir.glob("*.safetensors")):
        header = safetensors_header(f)
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
        found = True
    for f in (*model_dir.glob("*.bin"), *model_dir.glob("*.pt"), *model_dir.glob("*.pth")):
        total += f.stat().st_size // 4
        found = True
    return total if found else None


_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}


def needed_bytes(config, model_dir: Path) -> int | None:
    """Bytes one checkpoint plus the final model take (module docstring); None when ``model_dir`` (the model's
    local folder, or its cached Hub snapshot) holds no safetensors weights yet. LoRA: the adapters are a sliver
    of the model, so the final (merged) model is what counts."""
    n = safetensors_params(model_dir)
    if n is None:
        return None
    size = _BYTES.get(str(config.dtype), 4)
    trainable = 0 if config.lora else n
    return trainable * size * 3 + n * size + MARGIN


def check_space(folder: Path, config, model_dir: Path) -> None:
    need = needed_bytes(config, model_dir)
    if need is None:
        return
    free = shutil.disk_usage(folder).free
    if config.overwrite:  # what overwrite=true removes as training starts is room for this run
        free += sum(f.stat().st_size for n in (*RUN_DIRS, *RUN_FILES) if (folder / n).exists()
                    for f in ([folder / n] if (folder / n).is_file() else (folder / n).rglob("*")) if f.is_file())
    if free < need:
        raise RunDirError(f"output_dir {folder}: {free / 2**30:.2f} GiB free on its disk, this run needs about "
                          f"{need / 2**30:.2f} GiB (a checkpoint of the trainable parameters with their optimizer "
                          "state, and the final model); free space or pick another output_dir")


def model_folder(config) -> Path:
    """The model's local folder, or its Hub snapshot in the cache (configs and tokenizer only: the weights come
    when the model loads); a name that is found nowhere is one `ModelError` line, here, before anything else."""
    return Path(resolve_model(config.model, weights=False, trust_remote_code=config.trust_remote_code))


def within_position_limit(config, model_dir: Path):
    """``config``, with a ``max_length`` beyond the model's position limit (read from its config.json, before any
    weight) lowered to the limit, with a warning naming both: the config the run uses and records."""
    if config.max_length is None:
        return config
    try:
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=config.trust_remote_code)
    except Exception:  # not a model we can read the config of: loading it will say why
        return config
    found = position_limit(model_config)
    if found is not None and config.max_length > found[1]:
        attr, limit = found
        logger.warning("max_length %d is beyond the position limit of model %s (%s=%d): sequences are cut at %d "
                       "(set max_length <= %d to silence this)", config.max_length, config.model, attr, limit,
                       limit, limit)
        return dataclasses.replace(config, max_length=limit)
    return config


class Hold:
    """This trainer's hold on a folder's lock: given back by `release`, or when the trainer is collected or the
    interpreter exits (whichever comes first; only once)."""

    def __init__(self, folder: Path):
        acquire(folder)
        self._done = weakref.finalize(self, release, folder)

    def release(self) -> None:
        self._done()


def preflight(config, main: bool):
    """Every check above, in order, before anything is read or loaded: ``(Hold or None, the config the run uses)``.
    The main process takes the lock (given back if a later check fails) and gets its `Hold`."""
    if config.overwrite and config.resume_from:
        raise ConfigError("set either resume_from (continue the run) or overwrite=true (start over), not both")
    folder = Path(config.output_dir)
    if not main:
        return None, within_position_limit(config, model_folder(config))
    check_writable(folder)
    hold = Hold(folder)
    try:
        for parent in (folder, folder / "checkpoints"):  # a kill between publish's two renames
            for name in recover_published(parent):
                logger.warning("%s: put back %s, which a stopped save had moved aside", parent, name)
        check_new_run(folder, config)
        model_dir = model_folder(config)
        check_space(folder, config, model_dir)
        config = within_position_limit(config, model_dir)
    except BaseException:
        hold.release()
        raise
    return hold, config


def preflight_all(config, accelerator):
    """`preflight` on every process (the lock on the main one): ``(Hold or None, config)``; when the main process
    refuses, the others stop too."""
    error, hold = None, None
    try:
        hold, config = preflight(config, accelerator.is_main_process)
    except AlignkitError as e:
        error = e
    if any_process(accelerator, error is not None):
        raise error or RunDirError(f"output_dir {config.output_dir}: refused by the main process (see its message)")
    return hold, config
