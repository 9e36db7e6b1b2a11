"""Self-generated responses as a data transform: ``{name: self_samples, k: 4, max_new_tokens: 64}``.

D2O (negatives only) contrasts each human negative with K samples drawn from the reference model.
`add_self_samples` draws them once, caches them on disk as JSONL keyed by a digest of the model's
weight files, the prompts and the sampling settings, and appends them to each record as extra
responses labelled desirable (``labels`` records). A later run with the same key reads the cache
instead of generating. `apply_with_samples` runs a transform list in which ``self_samples`` may
appear among the pure transforms of `alignkit.data.transforms`.

Samples are drawn from the record's prompt alone (its ``system`` field is passed through the chat
template when the prompt is a chat); empty samples (EOS first) are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms import apply_transforms, resolve_transforms
from alignkit.engine.refcache import files_digest
from alignkit.errors import ConfigError, DataError
from alignkit.generation import generate
from alignkit.io_atomic import atomic_write_text
from alignkit.models.load import load_model, load_tokenizer

logger = logging.getLogger("alignkit")

SAMPLE_OPTIONS = {"k": 4, "max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "model": None,
                  "cache_dir": None, "batch_size": 32}


def _key(model_path: str, prompts: list, options: dict[str, Any], seed: int) -> str:
    weights = files_digest(model_path) or f"name:{model_path}"
    folder = Path(model_path)
    tokenizer = sorted((f.name, f.read_bytes().hex()) for f in folder.glob("*token*") if f.is_file()) \
        if folder.is_dir() else []  # the tokenizer and its chat template shape the prompts
    settings = {k: options[k] for k in ("k", "max_new_tokens", "temperature", "top_p", "batch_size")}
    settings["tokenizer"] = hashlib.sha256(repr(tokenizer).encode()).hexdigest()
    blob = json.dumps([weights, prompts, settings, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _prompt(record: PreferenceRecord):
    if record.system and isinstance(record.prompt, list):
        return [{"role": "system", "content": record.system}, *record.prompt]
    return record.prompt


def add_self_samples(records: list[PreferenceRecord], model_path: str, default_cache_dir: str | Path, seed: int = 0,
                     progress: bool = True, **options: Any) -> tuple[list[PreferenceRecord], dict[str, int]]:
    """Append ``k`` samples from the model at ``model_path`` to every ``labels`` record, labelled True."""
    unknown = set(options) - set(SAMPLE_OPTIONS)
    if unknown:
        raise ConfigError(f"transform self_samples has no option(s) {sorted(unknown)}; allowed: {sorted(SAMPLE_OPTIONS)}")
    opts = {**SAMPLE_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    model_path = opts["model"] or model_path
    if not isinstance(opts["k"], int) or opts["k"] < 1:
        raise ConfigError(f"transform self_samples: k must be an integer >= 1, got {opts['k']!r}")
    for i, r in enumerate(records):
        if r.label_kind != "labels":
            raise DataError(f"transform self_samples adds desirable samples to 'labels' records; record {i} "
                             f"(id={r.id}) has {r.label_kind}")
    prompts = [_prompt(r) for r in records]
    path = Path(opts["cache_dir"] or default_cache_dir) / f"samples-{_key(model_path, prompts, opts, seed)}.jsonl"
    if path.exists():
        texts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if len(texts) != len(records):
            raise DataError(f"self_samples cache {path} holds {len(texts)} rows for {len(records)} records; "
                             "delete it to regenerate")
        logger.info("self_samples: %d x %d samples from cache %s", len(texts), opts["k"], path)
    else:
        texts = _generate(model_path, prompts, opts, seed, progress)
        atomic_write_text(path, "".join(json.dumps(t) + "\n" for t in texts))
        logger.info("self_samples: generated %d x %d samples with %s, cached in %s", len(texts), opts["k"],
                    model_path, path)
    report = {"records_in": len(records), "samples_added": 0, "empty_samples_dropped": 0,
              "records_without_samples_dropped": 0}
    out = []
    for r, row in zip(records, texts):
        kept = [t for t in row if t.strip()]
        report["empty_samples_dropped"] += len(row) - len(kept)
        if not kept:
            report["records_without_samples_dropped"] += 1
            continue
        report["samples_added"] += len(kept)
        out.append(dataclasses.replace(r, responses=r.responses + kept, labels=r.labels + [True] * len(kept)))
    return out, report


def _generate(model_path: str, prompts: list, opts: dict[str, Any], seed: int, progress: bool) -> list[list[str]]:
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    bs = int(opts["batch_size"])
    texts: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), bs), desc="self_samples", disable=not progress, dynamic_ncols=True):
        gen = generate(model, tokenizer, prompts[start:start + bs], k=opts["k"], max_new_tokens=opts["max_new_tokens"],
                       temperature=opts["temperature"], top_p=opts["top_p"], seed=seed + start, batch_size=bs)
        texts.extend(gen.texts)
    return texts


def apply_with_samples(records: list[PreferenceRecord], specs: list[dict], seed: int = 0, model: str = "",
                       cache_dir: str | Path = "samples", progress: bool = True):
    """Run ``specs`` in order; ``self_samples`` uses the model at ``model``, the rest are pure transforms."""
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"transforms[{i}] needs a 'name', got {spec!r}")
    resolve_transforms([s for s in specs if s["name"] != "self_samples"])  # every spec checked before any runs
    reports: list[dict] = []
    for spec in specs:
        if spec["name"] == "self_samples":
            options = {k: v for k, v in spec.items() if k != "name"}
            records, report = add_self_samples(records, model, cache_dir, seed, progress, **options)
            reports.append(report)
        else:
            records, (report,) = apply_transforms(records, [spec], seed=seed)
            reports.append(report)
    return records, reports
