"""Code named in configs: ``reward=module:function``, ``--judge rule:module:function``, preferences, subsets.

One loader, `load_function`, for every place a spec names a Python function:

* the module is found as ``python -m`` would find it: the current directory first on ``sys.path`` (the
  ``alignkit`` console script otherwise puts its own ``bin/`` folder there), then installed packages;
* a standard-library module (``os:system``, ``subprocess:run``, ``builtins:eval``, ...) is refused: a reward
  or a judge is the user's own function, so naming one is a mistake (or a config passed around that tries
  to run a shell through a one-liner). This is a guard against mistakes, **not a sandbox**: any installed
  package's function can be named (``torch.hub:load``, ``yaml:unsafe_load``), and the user's own module runs
  whatever it contains. A config that names code is code: run only configs you trust, as with any Python
  script;
* what was loaded is logged (the resolved file and its sha256) and can be recorded in a run folder as
  ``code.json`` (`record`), so whoever audits a run knows exactly which code scored it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from alignkit.errors import ConfigError
from alignkit.io_atomic import atomic_write_text

logger = logging.getLogger("alignkit")
_collectors: list[list[CodeRef]] = []


@dataclass(frozen=True)
class CodeRef:
    """Which code a spec resolved to: enough to find it again and to tell whether it changed."""

    role: str  # reward | judge | preference | prompts | subset
    spec: str  # as written in the config / on the command line
    module: str
    function: str
    file: str | None  # absolute path of the module's file (None for a module without one)
    line: int | None  # first line of the function in that file
    sha256: str | None  # of the module's file


@contextlib.contextmanager
def _cwd_first() -> Iterator[None]:
    cwd = os.getcwd()
    if sys.path[:1] in ([cwd], [""]):
        yield
        return
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _sha256(file: str | None) -> str | None:
    if file is None or not os.path.isfile(file):
        return None
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


def split_spec(spec: str, role: str) -> tuple[str, str]:
    """``module:function`` (or ``module.function``) -> (module, function)."""
    module, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module or not attr:
        raise ConfigError(f"{role} {spec!r}: write module:function (a function in a .py file of the current "
                          "directory or of an installed package), e.g. alignkit.worlds.reviews:reward")
    return module, attr


def load_function(spec: str, role: str) -> Callable:
    """The function a ``module:function`` spec names, for ``role`` (reward, judge, ...); see the module docstring."""
    module, attr = split_spec(spec, role)
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        raise ConfigError(f"{role} {spec!r}: '{top}' is a Python standard-library module; a {role} must be your own "
                          "function (module:function in a .py file of the current directory or an installed package)")
    try:
        with _cwd_first():
            mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{role} {spec!r}: cannot load module {module!r} from the current directory "
                          f"({os.getcwd()}) or the installed packages ({type(e).__name__}: {e})") from None
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"{role} {spec!r}: cannot load {attr!r}: module {module!r} "
                              f"({getattr(mod, '__file__', None)}) has no {part!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"{role} {spec!r}: {attr!r} in {module!r} is a {type(fn).__name__}, not a function")
    file = getattr(mod, "__file__", None)
    file = os.path.abspath(file) if file else None
    try:
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        line = None
    ref = CodeRef(role, spec, module, attr, file, line, _sha256(file))
    logger.info("%s %s: %s%s (sha256 %s)", role, spec, file or f"module {module} (no file)",
                f":{line}" if line else "", (ref.sha256 or "-")[:16])
    for refs in _collectors:
        refs.append(ref)
    return fn


@contextlib.contextmanager
def collect() -> Iterator[list[CodeRef]]:
    """``with collect() as refs: build_reward(...)`` -> the `CodeRef` of every function loaded in the block."""
    refs: list[CodeRef] = []
    _collectors.append(refs)
    try:
        yield refs
    finally:
        _collectors.remove(refs)


def record(output_dir: str | os.PathLike, refs: list[CodeRef]) -> Path | None:
    """Add ``refs`` to ``<output_dir>/code.json`` (``{"functions": [CodeRef, ...]}``, one entry per role and
    spec; a resumed run whose file changed since gets the new hash and a warning). None when ``refs`` is empty."""
    if not refs:
        return None
    path = Path(output_dir) / "code.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("functions", []) if path.exists() else []
    except (OSError, ValueError, AttributeError):
        entries = []
    by_key = {(e.get("role"), e.get("spec")): e for e in entries if isinstance(e, dict)}
    for ref in refs:
        old = by_key.get((ref.role, ref.spec))
        if old is not None and old.get("sha256") != ref.sha256:
            logger.warning("%s %s: %s changed since this run folder recorded it (sha256 %s -> %s)", ref.role,
                           ref.spec, ref.file, str(old.get("sha256"))[:16], str(ref.sha256)[:16])
        by_key[(ref.role, ref.spec)] = asdict(ref)
    atomic_write_text(path, json.dumps({"functions": list(by_key.values())}, indent=2) + "\n")
    return path
