"""Atomic checkpoints with everything exact resume needs.

A checkpoint is a folder ``checkpoints/step-000050/`` holding:

* ``model.safetensors`` — the trainable parameters (all of them, or only the LoRA adapters);
* ``optimizer.pt`` / ``scheduler.pt`` — their ``state_dict``s (tensors and numbers only, loaded with
  ``torch.load(weights_only=True)``);
* ``rng.pt`` — torch RNG state; ``trainer_state.json`` — step, counters, Python/NumPy RNG states,
  objective state;
* ``config.yaml`` — the resolved config.

It is written to ``checkpoints/.tmp-step-000050`` and then renamed in one ``os.replace``: a kill at any
moment leaves either the previous checkpoints only, or the new one complete. Leftover ``.tmp-*``
folders from a crash are ignored by `latest_checkpoint` and removed by the next save.

Under FSDP / DeepSpeed the optimizer state (and with FSDP / ZeRO-3 the parameters) is split across
processes: there ``optimizer.pt`` is replaced by ``sharded/`` (``accelerator.save_state``) and
``model.safetensors`` holds the gathered full weights. The same three steps (`begin_checkpoint`,
`write_checkpoint`, `commit_checkpoint`) make that folder; see `engine/distributed.py`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"
SHARDED_DIR = "sharded"  # accelerator.save_state output of an FSDP / DeepSpeed run


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
    tmp, final = begin_checkpoint(root, step)
    write_checkpoint(tmp, step, _trainable(model), optimizer.state_dict(), scheduler, state, config_yaml,
                     objective_state, extra_states)
    return commit_checkpoint(tmp, final, keep)


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
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng_json, rng_tensors = rng_state()
    torch.save(rng_tensors, tmp / "rng.pt")
    torch.save(objective_state or {}, tmp / "objective.pt")
    for name, extra in (extra_states or {}).items():
        torch.save(extra, tmp / f"extra_{name}.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step, "rng": rng_json}))
    (tmp / "config.yaml").write_text(config_yaml)


def commit_checkpoint(tmp: Path, final: Path, keep: int = 2) -> Path:
    """fsync, rename the temp folder into place, drop all but the newest ``keep`` checkpoints."""
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. interrupt right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent, recursive=False)
    for old in list_checkpoints(final.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path, recursive: bool = True) -> None:
    """fsync the files of a folder (and of its subfolders), then the folder itself."""
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        elif recursive and f.is_dir():
            _fsync_dir(f)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(dirs, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer state, objective state).

    ``model`` / ``optimizer`` None: leave them alone (a sharded run restores them from ``sharded/``).
    Extra states saved with the checkpoint come back in ``trainer_state["extra"]`` by name."""
    path = Path(path)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{path} is not an alignkit checkpoint (no trainer_state.json)")
    if optimizer is not None and not (path / "optimizer.pt").exists():
        raise ValueError(
            f"checkpoint {path} was saved under FSDP/DeepSpeed: its optimizer state is split across processes "
            f"in {SHARDED_DIR}/. Resume it with the same kind of launch (its model.safetensors holds the full "
            "weights, e.g. to start a new run from)."
        )
    if model is not None:
        weights = load_file(path / "model.safetensors")
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise ValueError(
                f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unknown[:5]} "
                "(was it saved with the same model and LoRA settings?)"
            )
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text())
    set_rng_state(state.pop("rng"), torch.load(path / "rng.pt", weights_only=True))
    objective_state = torch.load(path / "objective.pt", weights_only=True)
    state["extra"] = {f.stem[len("extra_"):]: torch.load(f, weights_only=True) for f in path.glob("extra_*.pt")}
    return state, objective_state
