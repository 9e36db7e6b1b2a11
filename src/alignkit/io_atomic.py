"""Atomic file writes: a failure part-way leaves the previous file as it was.

Every output alignkit writes for the user (converted data, scores, log-probs, generations, reports) goes
through `atomic_write` (an open file) or `atomic_path` (a path, for writers that take one: pyarrow,
matplotlib, safetensors). Both write a temporary file in the destination's folder (the same file system,
so the rename is atomic), flush and fsync it, rename it over the destination and fsync the folder. On any
exception, KeyboardInterrupt included, the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _mode_for(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp makes 0600 files)."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can open a folder for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception, the file written
    there replaces ``path`` (fsynced). The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)  # keeps the suffix: savefig reads it
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # writers that take a path do not fsync
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)`` — like ``open(path, mode)`` (``"w"`` or ``"wb"``),
    but ``path`` changes only when the block finishes."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
    with atomic_path(path) as tmp, open(tmp, mode, **text) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``Path.write_text``, atomically."""
    with atomic_write(path, encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``Path.write_bytes``, atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)
