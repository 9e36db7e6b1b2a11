"""Cached teacher log-probs: one no-grad pass over the data, then no teacher model at all.

For every completion token of every response the cache holds the teacher's top-k token ids and its k+1 bucket
log-probs (`alignkit.objectives.distill.topk_buckets`), and for objectives that weigh the teacher against a
``teacher_ref`` model that model's buckets at the same ids. One safetensors file per split (never pickle):

* ``offsets`` [records, slots] int64 — where each response's tokens start in the flat tables;
* ``ids`` [tokens, k] int32, ``teacher_buckets`` [tokens, k+1] float32 (and ``teacher_ref_buckets``).

The file name is a digest of what the numbers depend on, also kept in its metadata: the teacher's weights (a
digest of its weight files when it is a local folder, so a cache hit loads nothing; else of the loaded
tensors) with the load dtype and attention backend, the ``teacher_ref`` weights likewise, the exact token ids
of every prompt and response (`engine.refcache.data_digest`), and ``teacher_top_k``. Another dataset, teacher
or k is another file. A file that cannot be read, or whose metadata or tables do not fit the run (a truncated
or foreign file), is said in one warning and recomputed; it is never reused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from alignkit.data.collate import Batch
from alignkit.data.dataset import TokenizedDataset
from alignkit.engine.refcache import data_digest, files_digest, load_key, weights_digest
from alignkit.engine.teacher import (
    Teacher,
    TeacherSide,
    build_teacher,
    check_vocab,
    load_frozen,
    reads_teacher,
    reads_teacher_ref,
    teacher_cache_dir,
    teacher_ref_path,
    vocab_size,
)
from alignkit.io_atomic import atomic_path

logger = logging.getLogger("alignkit")

FORMAT = "alignkit-teacher-topk/1"
KEY_FIELDS = ("format", "teacher", "teacher_ref", "data", "top_k")


class UnusableCache(Exception):
    """A cache file that cannot serve this run (the message says why); it is recomputed."""


def token_offsets(data: TokenizedDataset) -> tuple[Tensor, int]:
    """[records, slots] start of each response's completion tokens in the flat tables, and the token count."""
    counts = torch.zeros(len(data), data.slots, dtype=torch.long)
    for i, tr in enumerate(data.items):
        for k in range(tr.k):
            counts[i, k] = len(tr.segments[k]) - tr.score_start[k]
    flat = counts.flatten()
    return (flat.cumsum(0) - flat).view_as(counts), int(flat.sum())


def flat_index(offsets: Tensor, batch: Batch) -> Tensor:
    """[N] row of each scored token of ``batch`` in the flat tables."""
    K = batch.shape[1]
    slot = batch.slot.cpu()
    record = torch.tensor(batch.indices, dtype=torch.long)[slot // K]
    return offsets[record, slot % K] + batch.token_pos.cpu()


class CachedTeacher(TeacherSide):
    """Serves a batch's teacher-side tensors from the tables of its split (by record index)."""

    def __init__(self, tables: dict[str, Tensor]):
        tables = dict(tables)
        self.offsets = tables.pop("offsets")
        self.tables = tables

    def targets(self, batch: Batch) -> dict[str, Tensor]:
        rows = flat_index(self.offsets, batch)
        out = {name: t.index_select(0, rows).to(batch.targets.device) for name, t in self.tables.items()}
        out["ids"] = out["ids"].long()
        return out


def compute_tables(teacher: Teacher, data: TokenizedDataset, pad_id: int, layout: str, max_row_tokens: int,
                   attn_weight: float, batch_size: int, device, progress: bool = False) -> dict[str, Tensor]:
    """The flat tables of ``data`` (`teacher.targets` batch by batch) and their ``offsets``."""
    from tqdm.auto import tqdm

    offsets, total = token_offsets(data)
    k = min(teacher.top_k, teacher.vocab)
    tables = {"ids": torch.zeros(total, k, dtype=torch.int32),
              "teacher_buckets": torch.zeros(total, k + 1, dtype=torch.float32)}
    if teacher.ref_scorer is not None:
        tables["teacher_ref_buckets"] = torch.zeros(total, k + 1, dtype=torch.float32)
    with tqdm(total=len(data), desc="teacher log-probs", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = data.collate(idx, pad_id, layout, max_row_tokens, attn_weight).to(device)
            rows = flat_index(offsets, batch)
            for name, values in teacher.targets(batch).items():
                tables[name][rows] = values.cpu().to(tables[name].dtype)
            bar.update(len(idx))
    return {"offsets": offsets, **tables}


def cache_meta(teacher: str, teacher_ref: str, data: TokenizedDataset, top_k: int) -> dict[str, str]:
    """What the tables depend on (`KEY_FIELDS`), plus the data's shape."""
    return {"format": FORMAT, "teacher": teacher, "teacher_ref": teacher_ref, "data": data_digest(data),
            "top_k": str(top_k), "records": str(len(data)), "slots": str(data.slots)}


def cache_path(cache_dir: Path, split: str, meta: dict[str, str]) -> Path:
    key = hashlib.sha256("\n".join(meta[f] for f in KEY_FIELDS).encode()).hexdigest()
    return Path(cache_dir) / f"{split}-{key[:24]}.safetensors"


def check_tables(tables: dict[str, Tensor], data: TokenizedDataset, top_k: int, vocab: int, with_ref: bool) -> None:
    """Raise `UnusableCache` unless the tables have the names, shapes, dtypes and ids this run needs."""
    offsets, total = token_offsets(data)
    names = {"offsets", "ids", "teacher_buckets"} | ({"teacher_ref_buckets"} if with_ref else set())
    if set(tables) != names:
        raise UnusableCache(f"it holds tables {sorted(tables)}, this run needs {sorted(names)}")
    if tables["offsets"].shape != offsets.shape or not torch.equal(tables["offsets"], offsets):
        raise UnusableCache("its token offsets do not match this data")
    k = min(top_k, vocab)
    ids = tables["ids"]
    if ids.shape != (total, k) or ids.dtype != torch.int32 or (ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab):
        raise UnusableCache(f"its ids are not [{total}, {k}] int32 token ids below {vocab}")
    for name in names - {"offsets", "ids"}:
        t = tables[name]
        if t.shape != (total, k + 1) or t.dtype != torch.float32 or bool(torch.isnan(t).any()):
            raise UnusableCache(f"its {name} are not [{total}, {k + 1}] float32 log-probs")


def load_tables(path: Path, meta: dict[str, str], data: TokenizedDataset, top_k: int, vocab: int,
                with_ref: bool) -> dict[str, Tensor]:
    """The tables at ``path``, checked (`UnusableCache` says why not); a teacher of another vocabulary than the
    policy's is a ConfigError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            have = f.metadata() or {}
            # copies, not views of a mapped file that a later run could rewrite under them
            tables = {name: f.get_tensor(name).clone() for name in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise UnusableCache(f"it cannot be read ({type(e).__name__}: {str(e)[:80]})") from e
    stale = [k for k in meta if have.get(k) != meta[k]]
    if stale:
        raise UnusableCache(f"its {', '.join(stale)} differ from this run's")
    if not have.get("vocab", "").isdigit():
        raise UnusableCache("it does not say the teacher's vocabulary size")
    check_vocab("teacher", have.get("teacher_path", "?"), int(have["vocab"]), vocab)
    check_tables(tables, data, top_k, vocab, with_ref)
    return tables


def store_tables(path: Path, tables: dict[str, Tensor], meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a unique temp file: concurrent runs never share one
        save_file({k: v.contiguous() for k, v in tables.items()}, tmp, metadata=meta)


def cached_teachers(c, acc, objective, policy, load_kwargs: dict, splits: dict[str, TokenizedDataset], pad_id: int,
                    layout: str, attn_weight: float, output_dir: Path) -> dict[str, CachedTeacher]:
    """``{split: CachedTeacher}`` of a run (config ``c``, accelerator ``acc``): each split's tables from its cache
    file, or computed by the teacher models (loaded only then) and stored by the main process."""
    with_ref = reads_teacher_ref(objective)
    loaded: dict[str, torch.nn.Module] = {}
    paths = {"teacher": c.teacher, "teacher_ref": teacher_ref_path(c)}

    def model(name: str):
        if name not in loaded:
            loaded[name] = load_frozen(name, paths[name], policy, acc.device, load_kwargs)
        return loaded[name]

    def key(name: str) -> str:
        return (files_digest(paths[name]) or weights_digest(model(name))) + load_key(policy, c.dtype)

    keys = {"teacher": key("teacher"), "teacher_ref": key("teacher_ref") if with_ref else ""}
    cache_dir, vocab = teacher_cache_dir(c, output_dir), vocab_size(policy)
    out = {}
    with acc.main_process_first():  # the main process computes and writes, the others read
        for split, data in splits.items():
            meta = cache_meta(keys["teacher"], keys["teacher_ref"], data, c.teacher_top_k)
            path = cache_path(cache_dir, split, meta)
            tables = _read(path, meta, data, c.teacher_top_k, vocab, with_ref)
            if tables is None:
                teacher = Teacher(model("teacher"), c.teacher_top_k, c.chunk_size,
                                  model("teacher_ref") if with_ref else None)
                tables = compute_tables(teacher, data, pad_id, layout, c.max_row_tokens, attn_weight, c.batch_size,
                                        acc.device, progress=c.progress and acc.is_main_process and split == "train")
                if acc.is_main_process:
                    store_tables(path, tables, {**meta, "vocab": str(vocab), "teacher_path": str(c.teacher)})
                    logger.info("%s: teacher log-probs cached in %s", split, path)
            out[split] = CachedTeacher(tables)
    if not loaded:
        logger.info("every teacher log-prob came from the cache: no teacher model was loaded")
    return out


def run_teachers(c, acc, objective, policy, load_kwargs: dict, train: TokenizedDataset,
                 eval_data: TokenizedDataset | None, pad_id: int, layout: str, attn_weight: float,
                 output_dir: Path) -> tuple[TeacherSide | None, TeacherSide | None]:
    """(train, eval or None) teacher sides of a run whose objective reads a teacher, else (None, None): cached
    per split, or with ``teacher_cache=false`` one live `Teacher` for both."""
    if not reads_teacher(objective):
        return None, None
    if not c.teacher_cache:
        return build_teacher(c, objective, policy, acc.device, load_kwargs), None
    splits = {"train": train, **({"eval": eval_data} if eval_data else {})}
    sides = cached_teachers(c, acc, objective, policy, load_kwargs, splits, pad_id, layout, attn_weight, output_dir)
    return sides["train"], sides.get("eval")


def _read(path: Path, meta: dict[str, str], data: TokenizedDataset, top_k: int, vocab: int,
          with_ref: bool) -> dict[str, Tensor] | None:
    """The checked tables at ``path``, or None when there is no file or it is unusable (said in a warning)."""
    if not path.exists():
        return None
    try:
        tables = load_tables(path, meta, data, top_k, vocab, with_ref)
    except UnusableCache as e:
        logger.warning("teacher cache %s is not used: %s; recomputing it", path, e)
        return None
    logger.info("teacher log-probs from cache %s", path)
    return tables
