"""Issue 18, atomic tool outputs: a failure part-way through writing leaves the previous file as it was."""

import json
import os

import pytest

from alignkit import cli
from alignkit.data import pair, write_records
from alignkit.data.tools.common import write_jsonl
from alignkit.io_atomic import atomic_path, atomic_write

GOOD = [pair(f"Review {i}: the movie was", " great.", " awful.") for i in range(40)]


def failing_dumps(monkeypatch, after: int):
    """json.dumps that raises OSError (a full disk, say) on its call number ``after + 1``."""
    real, calls = json.dumps, []

    def dumps(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(json, "dumps", dumps)


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_convert_failure_part_way_keeps_the_previous_output(tmp_path, monkeypatch):
    """The issue's case: `alignkit data convert` over a good 40-line file, failing after 5 rows, left 5 lines."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(GOOD, src)
    assert cli.main(["data", "convert", str(src), "--out", str(out)]) == 0
    before = out.read_bytes()
    assert len(before.splitlines()) == 40
    failing_dumps(monkeypatch, after=5)
    with pytest.raises(OSError, match="No space left"):
        cli.main(["data", "convert", str(src), "--out", str(out)])
    assert out.read_bytes() == before  # still the 40 good lines
    assert leftovers(tmp_path, {"in.jsonl", "out.jsonl"}) == []  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_write_records_replaces_the_file_only_when_done(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    write_records(GOOD, out)
    before = out.read_bytes()
    bad = GOOD[:5] + [pair("p", "a", "b", meta={"not json": {1, 2}})]  # a set: no writer can store it
    with pytest.raises(TypeError):
        write_records(bad, out)
    assert out.read_bytes() == before and leftovers(tmp_path, {out.name}) == []


def test_report_writers_are_atomic(tmp_path, monkeypatch):
    out = tmp_path / "removed.jsonl"  # dedup's and select's side outputs
    write_jsonl([{"i": i} for i in range(10)], out)
    failing_dumps(monkeypatch, after=3)
    with pytest.raises(OSError):
        write_jsonl([{"i": i} for i in range(10)], out)
    monkeypatch.undo()
    assert [json.loads(x)["i"] for x in out.read_text().splitlines()] == list(range(10))


def test_atomic_write_keeps_permissions_and_survives_interrupts(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n" and leftovers(tmp_path, {"f.txt"}) == []
    with atomic_write(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and (path.stat().st_mode & 0o777) == 0o640
    with atomic_path(tmp_path / "sub" / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path / "sub"  # savefig reads the format from it
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "plot.png").read_bytes() == b"png"
