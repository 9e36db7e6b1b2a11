"""Cached reference log-probs: one no-grad pass over the data, then no reference model at all.

The reference's summed log-prob of every response is computed once and stored on disk as safetensors,
with metadata naming what the numbers depend on:

* ``weights`` — a digest of the reference weights: of its weight files when the reference is a local
  folder (so a cache hit needs no model loaded), else of the loaded tensors; plus the load dtype;
* ``data`` — a digest of the exact token ids of every prompt and response (covers the data file, the
  tokenizer, the chat template, truncation settings and auxiliary completions such as KTO's);
* ``precision`` — the autocast precision of the pass.

Automatic caches live in ``ref_cache_dir`` under a file name derived from those three (a sweep over beta
reuses one pass). An explicit ``ref_cache_file`` (e.g. written by ``alignkit logprobs --cache``) is
checked field by field and refused, with the reason, when any of them differs. Objectives that read
per-token reference log-probs cannot use the sequence-level cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.data.dataset import TokenizedDataset
from alignkit.engine.distributed import sharding, share_sharded_scorer
from alignkit.engine.reference import Reference, build_reference
from alignkit.engine.score import iter_batch_logps
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import unwrap
from alignkit.io_atomic import atomic_path

logger = logging.getLogger("alignkit")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_digest(model: nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (adapters excluded: disabled in the reference)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        t = p.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def files_digest(path: str | Path | None) -> str | None:
    """sha256 over the weight files of a local checkpoint folder (names and bytes); None if not a folder."""
    if not path or not Path(path).is_dir():
        return None
    files = sorted(f for f in Path(path).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    files += [Path(path) / n for n in ("config.json", "adapter_config.json") if (Path(path) / n).is_file()]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return "files:" + h.hexdigest()


def data_digest(data: TokenizedDataset) -> str:
    h = hashlib.sha256()
    for tr in data.items:
        h.update(repr((tr.prompt_ids, tr.segments, tr.score_start)).encode())
    return h.hexdigest()


# /2: log-probs of sliding-window models (Mistral, Gemma-2/3, Phi-3, Mixtral) on sequences longer than the window
# were wrong in shared-prompt rows before the windows went into the block mask; a /1 cache is never reused
FORMAT = "alignkit-ref-logps/2"


def cache_meta(weights: str, data: TokenizedDataset, precision: str,
               settings: dict | None = None) -> dict[str, str]:  # fmt: skip
    """What a cache's numbers depend on; ``settings`` (`record_settings`) only explain a refusal."""
    meta = {"weights": weights, "data": data_digest(data), "precision": precision,
            "records": str(len(data)), "slots": str(data.slots), "format": FORMAT}
    if settings is not None:
        meta["settings"] = json.dumps(settings, sort_keys=True, default=str)
    return meta


# config keys that decide which records a run has and their token ids (with the objective's extras)
RECORD_KEYS = ("data", "data_split", "data_subset", "layout", "columns", "on_bad_row", "eval_split", "transforms",
               "max_length", "max_prompt_length", "chat_template", "chat_template_kwargs", "seed")


def record_settings(config, extras=()) -> dict:
    """The settings that shape a run's training records (`RECORD_KEYS`, the data path made absolute)."""
    out = {k: getattr(config, k) for k in RECORD_KEYS}
    if out["data"] and Path(out["data"]).exists():
        out["data"] = str(Path(out["data"]).resolve())
    return {**out, "objective extras": sorted(extras)}


def _settings_diff(cached: str | None, now: str | None) -> str:
    """``"; settings that shape the records and differ: eval_split (cache: 0.0, this run: 0.05)"``, or ""."""
    if not cached or not now:
        return ""
    old, new = json.loads(cached), json.loads(now)
    keys = [k for k in new if k in old and old[k] != new[k]]
    if not keys:
        return ""
    text = "; settings that shape the records and differ: " + ", ".join(
        f"{k} (cache: {json.dumps(old[k])}, this run: {json.dumps(new[k])})" for k in keys)
    if "eval_split" in keys and new["eval_split"]:
        text += (f" -- eval_split={new['eval_split']} holds part of `data` out for evaluation, so this run trains "
                 "on fewer records than the cache covers: set eval_split=0 (evaluate with eval_data=), or compute "
                 "the cache on the training part")
    return text


def cache_path(cache_dir: str | Path, name: str, meta: dict[str, str]) -> Path:
    key = hashlib.sha256((meta["format"] + meta["weights"] + meta["data"] + f"autocast={meta['precision']}")
                         .encode()).hexdigest()
    return Path(cache_dir) / f"{name}-{key[:24]}.safetensors"


_WHY = {
    "weights": "the reference weights differ (another model, checkpoint or dtype)",
    "data": "the token ids differ (another data file, tokenizer, chat template, max_length, or objective "
            "extras such as KTO's mismatched completions)",
    "precision": "the autocast precision differs",
    "records": "the number of records differs",
    "slots": "the number of response slots differs",
    "format": "the file is not a reference cache of this alignkit (an older format, or another file)",
}


def load_table(path: str | Path, expect: dict[str, str]) -> Tensor:
    """The cached ``[N, slots]`` table at ``path``; raises ValueError naming every field that differs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference cache {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        stale = [k for k in ("format", "weights", "records", "slots", "data", "precision")
                 if meta.get(k) != expect.get(k)]
        if stale:
            details = "; ".join(f"{_WHY[k]} (cache: {str(meta.get(k))[:20]}, this run: {str(expect[k])[:20]})"
                                for k in stale)
            details += _settings_diff(meta.get("settings"), expect.get("settings"))
            raise ConfigError(f"reference cache {path} does not match this run and is refused: {details}. "
                             "Recompute it (delete it, or drop ref_cache_file to use an automatic cache).")
        return f.get_tensor("ref_logps")


def store_table(path: Path, table: Tensor, meta: dict[str, str]) -> None:
    with atomic_path(path) as tmp:  # a unique temp file: concurrent runs never share one
        save_file({"ref_logps": table.contiguous()}, tmp, metadata=meta)


class CachedReference(Reference):
    """Serves ``ref_logps [B, K]`` for a batch from a precomputed ``[N, slots]`` table (by record index)."""

    strategy = "cache"

    def __init__(self, table: Tensor):
        self.table = table

    def sequence_logps(self, batch: Batch) -> Tensor:
        idx = torch.tensor(batch.indices, dtype=torch.long)
        B, K = batch.shape
        out = self.table.index_select(0, idx)[:, :K].to(batch.valid.device)
        return out.masked_fill(~batch.valid, 0.0)


def compute_table(reference: Reference, data: TokenizedDataset, pad_id: int, layout: str, max_row_tokens: int,
                  batch_size: int, device, progress: bool = True) -> Tensor:
    table = torch.zeros(len(data), data.slots, dtype=torch.float32)
    batches = iter_batch_logps(reference.sequence_logps, data, pad_id, layout, batch_size, device, max_row_tokens,
                               desc="reference log-probs" if progress else None)
    for idx, _, seq in batches:
        table[idx, : seq.shape[1]] = seq
    return table


def describe(meta: dict[str, str]) -> str:
    return json.dumps({k: meta[k][:16] for k in ("weights", "data", "precision")})


def cached_tables(splits: dict[str, TokenizedDataset], weights: str, precision: str, cache_dir: Path,
                  cache_file: str | None, make_reference, pad_id: int, layout: str, max_row_tokens: int,
                  batch_size: int, device, progress: bool = True, write: bool = True) -> dict[str, Tensor]:
    """The ``[N, slots]`` table of every split: from ``cache_file`` (train only, checked), from an
    automatic cache in ``cache_dir``, or computed with ``make_reference()`` (called only on a miss) and stored."""
    tables = {}
    for name, data in splits.items():
        meta = cache_meta(weights, data, precision)
        explicit = name == "train" and bool(cache_file)
        path = Path(cache_file) if explicit else cache_path(cache_dir, name, meta)
        if explicit or path.exists():
            tables[name] = load_table(path, meta)
            logger.info("%s: reference log-probs from cache %s", name, path)
            continue
        tables[name] = compute_table(make_reference(), data, pad_id, layout, max_row_tokens, batch_size, device,
                                     progress=progress and name == "train")
        if write:
            store_table(path, tables[name], meta)
            logger.info("%s: reference log-probs cached in %s", name, path)
    return tables


def will_cache(config, objective, strategy: str) -> bool:
    """Whether this run serves reference log-probs from a cache (``ref_cache`` auto/on/off); reads the config only."""
    c = config  # resolved (alignkit.config.resolve): ref_cache is auto, on or off; ref_cache_file not with off
    if c.ref_cache_file and strategy == "none":
        raise ConfigError(f"ref_cache_file is set but objective {objective.name} reads no reference")
    if strategy == "none" or c.ref_cache == "off":
        return False
    if objective.needs_token_logps:
        if c.ref_cache == "on" or c.ref_cache_file:
            raise ConfigError(f"objective {objective.name} reads per-token reference log-probs; "
                             "the sequence-level cache cannot serve it (use ref_cache=off)")
        return False
    return True


def load_key(model, dtype: str) -> str:
    """How the reference was loaded, as part of its cache key: dtype and the resolved attention backend."""
    return f"|dtype={dtype}|attn={unwrap(model).config._attn_implementation}"


def cached_references(c, acc, strategy: str, policy, scorer, load_kwargs: dict, train_data, eval_data,
                      extras, pad_token_id: int, layout: str,
                      output_dir: Path) -> tuple[CachedReference, CachedReference | None]:
    """(train, eval) cached references of a run (config ``c``, accelerator ``acc``; the reference of ``strategy``
    built from the initial ``policy`` only when some table is missing, and released when this returns; ``scorer``
    the prepared policy it shares sharded weights with; ``extras`` the objective's executor extras)."""

    built: list = []

    def reference():
        if not built:
            built.append(build_reference(strategy, policy, c.ref_model, acc.device, c.chunk_size, load_kwargs,
                                         for_cache=True))
            share_sharded_scorer(built[0], scorer, acc)
        return built[0]

    weights = files_digest(c.ref_model if strategy == "path" else c.model)
    if weights is None:  # not a local folder: digest the tensors of the loaded reference
        ref_scorer = getattr(reference(), "scorer", None)
        weights = weights_digest(policy if ref_scorer is None else ref_scorer.model)
    weights += load_key(policy, c.dtype)
    cache_dir = Path(c.ref_cache_dir) if c.ref_cache_dir else output_dir / "ref_cache"
    splits = {"train": train_data, **({"eval": eval_data} if eval_data else {})}
    if c.ref_cache_file:  # every process checks it first: a refusal must not leave others waiting at a barrier
        settings = record_settings(c, extras)
        load_table(c.ref_cache_file, cache_meta(weights, train_data, acc.mixed_precision, settings))
    # the main process computes and writes, the others read; same precision as the training forward. Under
    # FSDP the policy's forward is collective: every process computes (the same values), the main one writes
    order = contextlib.nullcontext() if sharding(acc) == "fsdp" else acc.main_process_first()
    with order, acc.autocast():
        tables = cached_tables(splits, weights, acc.mixed_precision, cache_dir, c.ref_cache_file, reference,
                               pad_token_id, layout, c.max_row_tokens, c.batch_size, acc.device,
                               progress=c.progress and acc.is_main_process, write=acc.is_main_process)
    if not built:
        logger.info("every reference log-prob came from the cache: no reference model was loaded")
    return CachedReference(tables["train"]), (CachedReference(tables["eval"]) if "eval" in tables else None)
