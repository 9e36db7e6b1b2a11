"""``alignkit report RUN_DIR...``: one HTML page (and ``results.json``) from training runs' ``metrics.jsonl``.

A run folder is what `alignkit train` writes: ``metrics.jsonl`` (one JSON line per logged step; evaluation
lines carry ``eval/...`` keys) and ``config.yaml``. The report plots, over steps and one line per run, the
loss, the implicit rewards of chosen and rejected responses, their margin and accuracy, any KL metric,
the evaluation metrics, the learning rate and the gradient norm — whichever of them the runs logged — and
tabulates each run's objective, β, steps and last values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignkit.engine.logging import logger, read_metrics
from alignkit.errors import ConfigError, RunDirError
from alignkit.eval import plots
from alignkit.eval import report_html as H
from alignkit.io_atomic import atomic_write_bytes, atomic_write_text

PANELS = ("loss", "rewards/margin", "rewards/accuracy", "rewards/chosen", "rewards/rejected", "logps/chosen",
          "logps/rejected")
TAIL = ("lr", "grad_norm")
SKIP = {"step", "epoch", "seconds_per_step", "tokens_per_second", "peak_memory_mb", "skipped_steps"}


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"name", "path", "config": {...}, "rows": [metrics lines]}`` of one run folder."""
    run = Path(run_dir)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no metrics.jsonl (give a run folder written by `alignkit train`)")
    rows, note = read_metrics(path)  # a torn last line (a killed run) is left out, with a warning
    if note:
        logger.warning("%s", note)
    config: dict[str, Any] = {}
    cfg = path.parent / "config.yaml"
    if cfg.is_file():
        import yaml

        config = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    name = path.parent.name if path.parent.name not in ("", ".") else str(path)
    return {"name": name, "path": str(path.parent), "config": config, "rows": rows}


def metric_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Numeric keys to plot, in order: the main panels, KL keys, other metrics, ``eval/...`` keys, lr, grad norm."""
    seen: dict[str, None] = {}
    for r in runs:
        for row in r["rows"]:
            for k, v in row.items():
                if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, None)
    keys = list(seen)
    main = [k for k in PANELS if k in seen]
    kl = [k for k in keys if "kl" in k.lower() and not k.startswith("eval/") and k not in main]
    ev = [k for k in keys if k.startswith("eval/")]
    tail = [k for k in TAIL if k in seen]
    rest = [k for k in keys if k not in main + kl + ev + tail]
    return main + kl + rest + ev + tail


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((r[key] for r in reversed(rows) if isinstance(r.get(key), (int, float))), None)


def summarize(run: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    rows, cfg = run["rows"], run["config"]
    steps = [r["step"] for r in rows if "step" in r]
    tps = [r["tokens_per_second"] for r in rows if isinstance(r.get("tokens_per_second"), (int, float))]
    return {"name": run["name"], "path": run["path"], "objective": cfg.get("objective"), "beta": cfg.get("beta"),
            "model": cfg.get("model"), "steps": max(steps) if steps else 0, "lines": len(rows),
            "mean_tokens_per_second": sum(tps) / len(tps) if tps else None,
            "last": {k: _last(rows, k) for k in keys}}


def runs_report(run_dirs: list[str], out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Read the runs, write ``results.json``, ``curves.png`` and ``report.html`` into ``out_dir``; return the results."""
    if not run_dirs:
        raise ConfigError("give at least one run folder")
    runs = [read_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    for i, r in enumerate(runs):  # same folder name (e.g. two `final`s): add the parent
        if names.count(r["name"]) > 1:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}#{i + 1}"
    keys = metric_keys(runs)
    summary = [summarize(r, keys) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": command, "runs": summary, "keys": keys,
               "series": {r["name"]: {k: [[row["step"], row[k]] for row in r["rows"]
                                          if "step" in row and isinstance(row.get(k), (int, float))]
                                      for k in keys} for r in runs}}
    sections: list[tuple[str, list[str]]] = []
    if command:
        sections.append(("Command", [H.pre(command)]))
    show = [k for k in keys if not k.startswith("eval/")][:8] + [k for k in keys if k.startswith("eval/")][:4]
    sections.append(("Runs", [H.table(
        ["run", "objective", "β", "steps", "tokens/s"] + [f"last {k}" for k in show],
        [[s["name"], s["objective"], s["beta"], s["steps"], s["mean_tokens_per_second"]]
         + [s["last"][k] for k in show] for s in summary], digits=4),
        H.para("Sources: " + "; ".join(f"{s['name']} = {s['path']}" for s in summary), "note")]))
    figures = {}
    main = [k for k in keys if not k.startswith("eval/") and k not in ("lr", "grad_norm")]
    if main:
        figures["curves"] = plots.training_curves({r["name"]: r["rows"] for r in runs}, main)
        sections.append(("Training curves", [H.image(figures["curves"], "training curves")]))
    ev = [k for k in keys if k.startswith("eval/")]
    if ev:
        figures["eval_curves"] = plots.training_curves({r["name"]: r["rows"] for r in runs}, ev)
        sections.append(("Evaluation during training", [H.image(figures["eval_curves"], "evaluation curves")]))
    opt = [k for k in ("lr", "grad_norm") if k in keys]
    if opt:
        figures["optimizer"] = plots.training_curves({r["name"]: r["rows"] for r in runs}, opt)
        sections.append(("Optimizer", [H.image(figures["optimizer"], "learning rate and gradient norm")]))
    for name, png in figures.items():
        atomic_write_bytes(out / f"{name}.png", png)
    results["files"] = sorted([f"{n}.png" for n in figures] + ["results.json", "report.html"])
    H.write_results(results, out / "results.json")
    sub = f"{len(runs)} run(s); {len(keys)} metrics"
    atomic_write_text(out / "report.html", H.page("alignkit training report", sections, sub))
    return results


def format_runs(results: dict[str, Any]) -> str:
    """Console lines: one per run with its steps and last loss / margin / accuracy."""
    lines = []
    for s in results["runs"]:
        last = s["last"]
        parts = [f"{k}={last[k]:.4g}" for k in ("loss", "rewards/margin", "rewards/accuracy", "eval/loss")
                 if isinstance(last.get(k), (int, float)) and math.isfinite(last[k])]
        lines.append(f"{s['name']}: {s['steps']} steps" + (", last " + ", ".join(parts) if parts else ""))
    return "\n".join(lines)
