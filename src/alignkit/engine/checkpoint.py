"""Atomic checkpoints with everything exact resume needs.

A checkpoint is a folder ``checkpoints/step-000050/`` holding:

* ``model.safetensors`` — the trainable parameters (all of them, or only the LoRA adapters);
* ``optimizer.pt`` / ``scheduler.pt`` — their ``state_dict``s (tensors and numbers only, loaded with
  ``torch.load(weights_only=True)``);
* ``rng.pt`` — torch RNG state; ``trainer_state.json`` — step, counters, Python/NumPy RNG states,
  objective state;
* ``config.yaml`` — the resolved config;
* ``manifest.json`` — size and sha256 of every other file, written last.

It is written to ``checkpoints/.tmp-step-000050`` and then renamed in one ``os.replace``: a kill at any
moment leaves either the previous checkpoints only, or the new one complete. Leftover ``.tmp-*``
folders from a crash are ignored by `latest_checkpoint` and removed by the next save; folders whose name
is not exactly ``step-<digits>`` (``step-000010.bak``) are not checkpoints and are never touched. A write
that fails (disk full) removes its temp folder and raises `RunDirError`: the previous checkpoint stays.

`verify_checkpoint` checks a folder against its manifest; `choose_checkpoint` takes the newest one that
passes (and whose weights are finite), naming each one it passes over and why. Rotation keeps the newest
``keep`` checkpoints and, if none of those is healthy (finite weights, saved when the last step was not
skipped for a non-finite loss), the newest healthy one.

Under FSDP / DeepSpeed the optimizer state (and with FSDP / ZeRO-3 the parameters) is split across
processes: there ``optimizer.pt`` is replaced by ``sharded/`` (``accelerator.save_state``) and
``model.safetensors`` holds the gathered full weights. The same three steps (`begin_checkpoint`,
`write_checkpoint`, `commit_checkpoint`) make that folder; see `engine/distributed.py`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.errors import CheckpointError, RunDirError

PREFIX = "step-"
NAME = re.compile(r"step-(\d+)")  # a checkpoint folder's whole name; anything else is a foreign folder
SHARDED_DIR = "sharded"  # accelerator.save_state output of an FSDP / DeepSpeed run
MANIFEST = "manifest.json"


class WithExtras:
    """The parameters of a model and of modules trained beside it, as one checkpoint sees them: the model's
    under their own names, each extra module's under ``<name>.`` (so they save and load with the model)."""

    def __init__(self, model: torch.nn.Module, extras: dict[str, torch.nn.Module]):
        self.model, self.extras = model, extras

    def named_parameters(self):
        yield from self.model.named_parameters()
        for name, module in self.extras.items():
            yield from module.named_parameters(prefix=name)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    np_state = np.random.get_state()
    json_part = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return json_part, tensors


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    v, state, gauss = json_part["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
    objective_state: dict[str, Any] | None = None,
    extra_states: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """``extra_states``: more ``state_dict``s to keep (e.g. the fp16 grad scaler), saved as ``extra_<name>.pt``."""
    with disk_errors(*checkpoint_paths(root, step)):
        tmp, final = begin_checkpoint(root, step)
        write_checkpoint(tmp, step, _trainable(model), optimizer.state_dict(), scheduler, state, config_yaml,
                         objective_state, extra_states)
        return commit_checkpoint(tmp, final, keep)


@contextlib.contextmanager
def disk_errors(tmp: Path, final: Path, stays: str | None = None, more: tuple[Path, ...] = ()):
    """An ``OSError`` while writing ``final`` via ``tmp`` (disk full, quota, I/O error) removes ``tmp`` (and the
    temp folders in ``more``) and becomes one `RunDirError` line saying what is still there (``stays``; default:
    the newest checkpoint next to it)."""
    try:
        yield
    except Exception as raised:
        e = os_error(raised)
        if e is None:  # not the disk: a bug, with its traceback
            raise
        for folder in (tmp, *more):
            shutil.rmtree(folder, ignore_errors=True)
        if stays is None:
            previous = latest_checkpoint(final.parent)
            stays = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "write failed"
        raise RunDirError(f"{final.parent}: {what} while saving {final.name} ({e.strerror or e}); {stays}. "
                          "Free space (or pick another output_dir) and resume with resume_from=latest") from raised


def os_error(e: BaseException) -> OSError | None:
    """The operating-system error behind a failed write, wherever the writer put it: an ``OSError`` itself or in
    the chain (``torch.save`` to a file object raises a RuntimeError whose context is the OSError), or the
    ``(os error N)`` of a ``SafetensorError`` (safetensors writes from Rust); None for anything else."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        if found := re.search(r"\(os error (\d+)\)", str(e)):
            code = int(found[1])
            return OSError(code, os.strerror(code))
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file object, so a failed write surfaces its OSError (`os_error`)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def checkpoint_paths(root: str | Path, step: int) -> tuple[Path, Path]:
    """(temp folder, final folder) of the checkpoint of ``step``."""
    root = Path(root)
    return root / f".tmp-{PREFIX}{step:06d}", root / f"{PREFIX}{step:06d}"


def begin_checkpoint(root: str | Path, step: int) -> tuple[Path, Path]:
    """Remove leftover temp folders and create this step's: returns (temp folder, final folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp, final = checkpoint_paths(root, step)
    tmp.mkdir()
    return tmp, final


def write_checkpoint(
    tmp: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler: Any,
    state: dict[str, Any],
    config_yaml: str,
    objective_state: dict[str, Any] | None = None,
    extra_states: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Everything but the sharded part. ``optimizer_state=None``: it lives in ``sharded/`` instead."""
    save_file(weights, tmp / "model.safetensors")
    if optimizer_state is not None:
        _torch_save(optimizer_state, tmp / "optimizer.pt")
    _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng_json, rng_tensors = rng_state()
    _torch_save(rng_tensors, tmp / "rng.pt")
    _torch_save(objective_state or {}, tmp / "objective.pt")
    for name, extra in (extra_states or {}).items():
        _torch_save(extra, tmp / f"extra_{name}.pt")
    finite = all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    healthy = finite and not state.get("skipped_in_row")  # not saved inside a run of skipped (non-finite) steps
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step, "finite": finite, "healthy": healthy,
                                                        "rng": rng_json}))
    (tmp / "config.yaml").write_text(config_yaml)


def commit_checkpoint(tmp: Path, final: Path, keep: int = 2) -> Path:
    """Write the manifest, fsync, rename the temp folder into place, rotate (see `rotate`)."""
    write_manifest(tmp)
    publish(tmp, final)
    for old in rotate(list_checkpoints(final.parent), keep):
        shutil.rmtree(old, ignore_errors=True)
    return final


def publish(tmp: Path, folder: Path) -> None:
    """fsync ``tmp`` and rename it to ``folder``. An existing ``folder`` (the same step saved again, or a previous
    ``final/``) is moved aside first and removed after: a kill in between leaves the old copy as
    ``.old-<name>`` or the new one complete, never a mix."""
    fsync_dir(tmp)
    aside = folder.with_name(f".old-{folder.name}")
    if folder.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
    os.replace(tmp, folder)
    fsync_dir(folder.parent, recursive=False)
    shutil.rmtree(aside, ignore_errors=True)


def recover_published(parent: Path) -> list[str]:
    """Finish what a kill inside `publish` left in ``parent``: an ``.old-<name>`` whose ``<name>`` is missing (the
    kill fell between the two renames) is put back; one whose ``<name>`` is there is removed. Returns what was
    put back."""
    restored = []
    for aside in parent.glob(".old-*") if parent.is_dir() else ():
        folder = aside.with_name(aside.name[len(".old-"):])
        if folder.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, folder)
            restored.append(folder.name)
    return restored


def rotate(checkpoints: list[Path], keep: int) -> list[Path]:
    """The checkpoints to delete (oldest first): all but the newest ``keep``, except that the newest healthy one
    (finite weights, saved outside a run of skipped non-finite steps) is always kept: a run that diverged and
    went on saving keeps a checkpoint from before."""
    if keep <= 0 or len(checkpoints) <= keep:
        return []
    kept, old = checkpoints[-keep:], checkpoints[:-keep]
    if not any(_flag(p, "healthy") for p in kept):
        good = next((p for p in reversed(old) if _flag(p, "healthy")), None)
        old = [p for p in old if p != good]
    return old


def _flag(path: Path, name: str) -> bool:
    """``finite`` / ``healthy`` of a checkpoint's state (checkpoints that do not say: assumed so)."""
    try:
        return bool(json.loads((path / "trainer_state.json").read_text()).get(name, True))
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """``manifest.json``: size and sha256 of every file of the folder (subfolders included)."""
    files = {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)}
             for f in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": "alignkit-checkpoint/1", "files": files}, indent=1))


def verify_checkpoint(path: str | Path) -> str | None:
    """None when the folder is a complete checkpoint whose files match its manifest, else the reason (naming
    the file). A checkpoint from before manifests (and fingerprints) were written is checked for its state file
    only."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    if not (path / MANIFEST).is_file():
        if not (path / "trainer_state.json").is_file():
            return "incomplete: no manifest.json, no trainer_state.json"
        try:  # this version writes fingerprints and a manifest together: one without the other is damage
            state = json.loads((path / "trainer_state.json").read_text())
        except ValueError:
            return "trainer_state.json is unreadable"
        return "manifest.json is missing" if "fingerprints" in state else None
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {want['size']} (truncated?)"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its sha256 in the manifest (corrupted)"
    return None


def choose_checkpoint(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes `verify_checkpoint` and has finite weights, and one note per newer
    checkpoint passed over (``"step-000006: model.safetensors is missing"``)."""
    skipped = []
    for path in reversed(list_checkpoints(root)):
        reason = verify_checkpoint(path) or (None if _flag(path, "finite") else "its weights are not finite (NaN/inf)")
        if reason is None:
            return path, skipped
        skipped.append(f"{path.name}: {reason}")
    return None, skipped


def fsync_dir(path: Path, recursive: bool = True) -> None:
    """fsync the files of a folder (and of its subfolders), then the folder itself."""
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        elif recursive and f.is_dir():
            fsync_dir(f)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)]
    return sorted(dirs, key=lambda p: int(NAME.fullmatch(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer state, objective state).

    ``model`` / ``optimizer`` None: leave them alone (a sharded run restores them from ``sharded/``).
    Extra states saved with the checkpoint come back in ``trainer_state["extra"]`` by name. Every tensor is
    checked against the model (name, shape, dtype) before any is copied; errors name the file."""
    path = Path(path)
    if not (path / "trainer_state.json").exists():
        raise CheckpointError(f"{path} is not an alignkit checkpoint (no trainer_state.json)")
    state = _read(path / "trainer_state.json", lambda f: json.loads(f.read_text()))
    if optimizer is not None and not (path / "optimizer.pt").exists():
        if state.get("sharding") or (path / SHARDED_DIR).is_dir():
            raise CheckpointError(
                f"checkpoint {path} was saved under FSDP/DeepSpeed: its optimizer state is split across processes "
                f"in {SHARDED_DIR}/. Resume it with the same kind of launch (its model.safetensors holds the full "
                "weights, e.g. to start a new run from)."
            )
        raise CheckpointError(f"checkpoint {path}: optimizer.pt is missing; resume from an earlier checkpoint")
    if model is not None:
        weights = _read(path / "model.safetensors", load_file)
        check_weights(weights, model, path / "model.safetensors")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
    if optimizer is not None:
        optimizer.load_state_dict(_read(path / "optimizer.pt", _torch_load))
    scheduler.load_state_dict(_read(path / "scheduler.pt", _torch_load))
    set_rng_state(state.pop("rng"), _read(path / "rng.pt", _torch_load))
    objective_state = _read(path / "objective.pt", _torch_load)
    state["extra"] = {f.stem[len("extra_"):]: _read(f, _torch_load) for f in path.glob("extra_*.pt")}
    return state, objective_state


def check_weights(weights: dict[str, torch.Tensor], model: torch.nn.Module, source: Path) -> None:
    """Raise `CheckpointError` unless ``weights`` has exactly the model's trainable parameters, each with the
    parameter's shape and dtype (``copy_`` would broadcast a [1, 64] tensor into a [461, 64] embedding)."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise CheckpointError(f"{source} does not match the model: missing {missing[:5]}, unexpected {unknown[:5]} "
                              "(was it saved with the same model and LoRA settings?)")
    for n, t in weights.items():
        p = params[n]
        if t.shape != p.shape or t.dtype != p.dtype:
            raise CheckpointError(f"{source}: tensor {n!r} is {list(t.shape)} {t.dtype}, the model's is "
                                  f"{list(p.shape)} {p.dtype} (was it saved with the same model, dtype and LoRA settings?)")


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def _read(path: Path, reader) -> Any:
    """``reader(path)``, with any failure to read it reported as a `CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is missing")
    try:
        return reader(path)
    except Exception as e:  # torch / safetensors / json raise many kinds on a damaged file
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'damaged'})") from e
