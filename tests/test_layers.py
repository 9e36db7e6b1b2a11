"""The layers' rules that import-linter (.importlinter, `make lint`) does not check: no module imports another's
private name; and the seam that keeps the engine below eval (a trainer samples and judges during training only
through the evaluator it is handed)."""

import ast
from pathlib import Path

import pytest

from alignkit.config import ConfigError, TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"


def _imported_names(path: Path):
    """(module, name) of every ``from alignkit... import name`` in ``path``, at any depth (function-local too)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] == "alignkit":
                yield module, [a.name for a in node.names]


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted((SRC / "alignkit").rglob("*.py")):
        own = ".".join(path.relative_to(SRC).with_suffix("").parts)
        for module, names in _imported_names(path):
            found += [f"{own} -> {module}.{n}" for n in names if n.startswith("_") and not n.endswith("__") and module != own]
    assert found == []


def test_the_import_walk_sees_private_names(tmp_path, monkeypatch):
    """The scan above reads relative and function-local imports (else it could pass on anything)."""
    pkg = tmp_path / "alignkit" / "x"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("def f():\n    from .other import _hidden\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert list(_imported_names(pkg / "m.py")) == [("alignkit.x.other", ["_hidden"])]


def test_a_hand_built_trainer_with_a_judge_needs_the_evaluator(tiny_path, pairs_path, tmp_path):
    from alignkit.engine.trainer import Trainer

    config = TrainConfig(model=tiny_path, data=pairs_path, output_dir=str(tmp_path), eval_prompts=pairs_path,
                         eval_judge="rule:alignkit.worlds.reviews:reward", progress=False)
    with pytest.raises(ConfigError, match=r"^eval_judge: a Trainer built by hand needs the evaluator"):
        Trainer(config)
