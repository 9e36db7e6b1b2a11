"""The teacher's top-k log-probs cached on disk: a second run reads them without loading the teacher and trains to
bit-identical losses; the cached values are the live teacher's; another k or another dataset is another file; a
damaged or foreign file is recomputed (said once), never reused."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alignkit.config import TrainConfig
from alignkit.engine import teacher as teacher_mod
from alignkit.engine import teachercache as tc
from alignkit.engine.trainer import Trainer
from alignkit.models.tiny import build_tiny


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return str(build_tiny(tmp_path_factory.mktemp("teacher"), seed=7))


def cfg(tiny_path, pairs_path, out, teacher, cache_dir, **kw):
    base = dict(model=tiny_path, data=pairs_path, objective="distill", teacher=teacher, teacher_top_k=8,
                batch_size=8, max_steps=3, lr=1e-3, output_dir=str(out), progress=False, seed=0, dtype="float32",
                teacher_cache_dir=str(cache_dir))
    return TrainConfig(**{**base, **kw})


def losses(config, n=3):
    t = Trainer(config)
    return [t.step()["loss"] for _ in range(n)], t


@pytest.fixture
def count_loads(monkeypatch):
    """Counts teacher-side model loads (every one goes through `engine.teacher.load_frozen`)."""
    calls = []
    real = teacher_mod.load_frozen

    def counted(name, *args, **kw):
        calls.append(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(tc, "load_frozen", counted)
    return calls


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (a copy: not mapped)


def cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.glob("*.safetensors"))


def test_second_run_reads_the_cache_without_the_teacher_and_gives_identical_losses(
        tiny_path, pairs_path, tmp_path, teacher_path, count_loads, monkeypatch):
    cache = tmp_path / "cache"
    first, _ = losses(cfg(tiny_path, pairs_path, tmp_path / "a", teacher_path, cache))
    assert count_loads == ["teacher"] and len(cache_files(cache)) == 1
    count_loads.clear()

    def no_model(*a, **k):
        raise AssertionError("a teacher model was loaded or called on a cache hit")

    monkeypatch.setattr(tc, "compute_tables", no_model)
    monkeypatch.setattr(teacher_mod, "load_model", no_model)
    second, t = losses(cfg(tiny_path, pairs_path, tmp_path / "b", teacher_path, cache))
    assert count_loads == [] and isinstance(t.teacher, tc.CachedTeacher)
    assert second == first  # bit-identical


def test_cached_values_are_the_live_teachers(tiny_path, pairs_path, tmp_path, teacher_path):
    """Training from the cache follows the run that scores every batch with the live teacher (teacher_cache=false),
    up to the rounding of other batch compositions."""
    cached, _ = losses(cfg(tiny_path, pairs_path, tmp_path / "a", teacher_path, tmp_path / "c"))
    live, t = losses(cfg(tiny_path, pairs_path, tmp_path / "b", teacher_path, tmp_path / "c", teacher_cache=False))
    assert isinstance(t.teacher, teacher_mod.Teacher)
    assert live == pytest.approx(cached, rel=1e-5)


def test_another_top_k_or_dataset_is_another_file(tiny_path, pairs_path, tmp_path, teacher_path, count_loads):
    cache = tmp_path / "cache"
    losses(cfg(tiny_path, pairs_path, tmp_path / "a", teacher_path, cache), n=1)
    losses(cfg(tiny_path, pairs_path, tmp_path / "b", teacher_path, cache, teacher_top_k=4), n=1)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(open(pairs_path).readlines()[:16]))
    losses(cfg(tiny_path, str(fewer), tmp_path / "c", teacher_path, cache), n=1)
    assert count_loads == ["teacher"] * 3 and len(cache_files(cache)) == 3
    with safe_open(str(next(cache.glob("*.safetensors"))), framework="pt") as f:
        assert {"offsets", "ids", "teacher_buckets"} == set(f.keys())
        assert f.get_tensor("ids").dtype == torch.int32


def test_a_damaged_or_foreign_file_is_recomputed_never_reused(tiny_path, pairs_path, tmp_path, teacher_path,
                                                              count_loads):
    cache = tmp_path / "cache"
    want, _ = losses(cfg(tiny_path, pairs_path, tmp_path / "a", teacher_path, cache), n=2)
    (path,) = cache.glob("*.safetensors")
    good = path.read_bytes()
    original = read(path)

    path.write_bytes(good[: len(good) // 2])  # truncated
    assert losses(cfg(tiny_path, pairs_path, tmp_path / "b", teacher_path, cache), n=2)[0] == want
    meta, tables = read(path)  # rewritten
    assert meta == original[0] and tables.keys() == original[1].keys()
    assert all(torch.equal(tables[k], original[1][k]) for k in tables)

    tables["ids"] = tables["ids"][:-1]  # same name and metadata, a table of another shape
    save_file(tables, str(path), metadata=meta)
    assert losses(cfg(tiny_path, pairs_path, tmp_path / "c", teacher_path, cache), n=2)[0] == want

    save_file(tables, str(path), metadata={**meta, "format": "alignkit-teacher-topk/0"})
    assert losses(cfg(tiny_path, pairs_path, tmp_path / "d", teacher_path, cache), n=2)[0] == want
    assert count_loads == ["teacher"] * 4


def test_unusable_tables_say_why():
    with pytest.raises(tc.UnusableCache, match="cannot be read"):
        tc.load_tables(__file__, {}, None, 4, 10, False)
