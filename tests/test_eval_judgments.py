"""Precomputed judgments (`alignkit eval --judgments FILE`, `alignkit.eval.judgments`): the same report as
``alignkit eval`` from verdicts someone already has, soft verdicts included, and bad rows named like bad
training rows."""

import csv
import json

import pytest

from alignkit.cli import main
from alignkit.data.io import BadRowError, SourceError
from alignkit.eval.judgments import evaluate_judgments, read_judgments
from alignkit.eval.rm_report import wilson_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest


def _row(prompt, a, b, oa, ob, **verdict):
    return {"prompt": prompt, "system_a": a, "system_b": b, "output_a": oa, "output_b": ob, **verdict}


ROWS = [
    _row("p1", "dpo", "sft", "a long answer", "short", outcome=1, subset="chat"),
    _row("p1", "sft", "dpo", "short", "a long answer", outcome=1, subset="chat"),  # p1 again, the other order
    _row("p2", "dpo", "sft", "fine", "also fine", outcome=0.5, subset="chat"),
    _row("p3", "sft", "dpo", "no", "yes indeed", p_a=0.2, subset="math"),
    _row("p4", "dpo", "sft", "four", "4", p_a=0.9, subset="math"),
    _row("p4", "sft", "dpo", "4", "four", p_a=0.3, subset="math"),
    _row("p1", "ppo", "sft", "meh", "short", outcome=0),
    _row("p2", "sft", "ppo", "also fine", "great", outcome=0),
    _row("p3", "ppo", "dpo", "yes!", "yes indeed", outcome=1),
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_hand_computed_report_from_judgments(tmp_path):
    res = evaluate_judgments(_jsonl(tmp_path / "j.jsonl", ROWS), n_boot=200, rating_boot=20,
                             out_dir=tmp_path / "out")
    assert res["baseline"] == "sft"  # in the most comparisons (6)
    j = res["judgments"]
    assert (j["rows"], j["read"], j["comparisons"], j["in_both_orders"], j["soft"]) == (9, 9, 7, 2, 3)
    wr = {w["name"]: w for w in res["win_rates"]}
    dpo = wr["dpo"]["win_rate"]
    # p1: (1 + 1 − 1)/2 = ½ (each order's first answer won); p2: ½; p3: 1 − 0.2; p4: (0.9 + 1 − 0.3)/2 = 0.8
    assert dpo["win_rate"] == pytest.approx((0.5 + 0.5 + 0.8 + 0.8) / 4)
    assert (dpo["n"], dpo["wins"], dpo["ties"], dpo["losses"], dpo["soft"]) == (4, 2, 2, 0, 2)
    assert dpo["wilson"] == pytest.approx(list(wilson_interval(2.6, 4)))
    assert dpo["subsets"]["chat"]["win_rate"] == 0.5 and dpo["subsets"]["math"]["win_rate"] == pytest.approx(0.8)
    assert "soft outcomes" in dpo["ci_methods"]["wilson"] and "whole prompts" in dpo["ci_methods"]["bootstrap"]
    assert wr["ppo"]["win_rate"]["win_rate"] == 0.5  # lost p1, won p2
    # position bias from the two comparisons seen both ways: p1 flips with the order, p4 does not
    bias = wr["dpo"]["position_bias"]
    assert (bias["n"], bias["consistency"], bias["first_position_win_rate"]) == (2, 0.5, 0.75)
    assert res["position_bias"]["consistency"] == 0.5 and wr["ppo"]["position_bias"] is None
    lc = dpo["length_controlled"]
    assert 0 < lc["win_rate"] < 1 and lc["regulariser"] == "pooled systems"
    t = res["tournament"]
    assert t["format"] == "given" and t["matches"] == 3 and t["comparisons"] == 7
    assert {r["system"] for r in t["ratings"]["leaderboard"]} == {"dpo", "sft", "ppo"}
    assert t["ratings"]["bt"]["sft"] == 0.0  # anchored at the baseline
    assert {s["name"]: s["answers"] for s in res["systems"]} == {"dpo": 4, "sft": 4, "ppo": 3}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Judgments" in html and "consistency with PORTIA" not in html  # no PORTIA column: nothing re-judged
    assert json.loads((tmp_path / "out" / "results.json").read_text())["judgments"]["soft"] == 3


def test_csv_and_parquet_judgments_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["prompt", "system_a", "system_b", "output_a", "output_b", "outcome", "p_a", "subset"]
    with open(tmp_path / "j.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in ROWS:
            w.writerow([r.get(c, "") for c in cols])
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in ROWS]), tmp_path / "j.parquet")
    base = read_judgments(_jsonl(tmp_path / "j.jsonl", ROWS)).rows
    for path in ("j.csv", "j.parquet"):
        rows = read_judgments(tmp_path / path).rows
        assert [(r.prompt, r.system_a, r.p_a, r.subset) for r in rows] == [(r.prompt, r.system_a, r.p_a, r.subset)
                                                                           for r in base]


BAD = [
    ({"prompt": "p", "system_a": "x", "system_b": "y", "output_a": "a", "output_b": "b"}, "outcome", "missing_field"),
    ({**_row("p", "x", "y", "a", "b"), "outcome": 2}, "outcome", "wrong_value"),
    ({**_row("p", "x", "y", "a", "b"), "outcome": "won"}, "outcome", "wrong_type"),
    ({**_row("p", "x", "y", "a", "b"), "p_a": 1.5}, "p_a", "wrong_value"),
    ({**_row("p", "x", "y", "a", "b"), "p_a": 0.5, "outcome": 1}, "p_a", "wrong_value"),
    ({**_row("p", "x", "x", "a", "b"), "outcome": 1}, "system_b", "wrong_value"),
    ({**_row(" ", "x", "y", "a", "b"), "outcome": 1}, "prompt", "empty_field"),
    ({**_row("p", "x", "y", "a", "b"), "outcome": 1, "output_b": None}, "output_b", "missing_field"),
    ({**_row("p", "x", "y", "a", 7), "outcome": 1}, "output_b", "wrong_type"),
]


@pytest.mark.parametrize("row,field,reason", BAD)
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, row, field, reason):
    path = _jsonl(tmp_path / "j.jsonl", ROWS[:2] + [row])
    with pytest.raises(BadRowError) as e:
        read_judgments(path)
    assert (e.value.row, e.value.field, e.value.reason) == (3, field, reason)
    assert str(e.value).startswith(f"j.jsonl line 3, field '{field}': ")


def test_skip_counts_bad_rows_and_writes_them_out(tmp_path, capsys):
    path = tmp_path / "j.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ["", "{not json", json.dumps(BAD[1][0]), json.dumps(BAD[3][0])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match="line 11: invalid JSON"):
        read_judgments(path)
    res = read_judgments(path, on_bad_row="skip")
    assert len(res.rows) == 9 and res.n_rows == 13
    assert dict(res.skipped) == {"blank_line": 1, "bad_json": 1, "wrong_value": 2}
    rejects = [json.loads(x) for x in res.rejects_path.read_text().splitlines()]
    assert [r["row"] for r in rejects] == [11, 12, 13] and rejects[2]["field"] == "p_a"
    assert main(["eval", "--judgments", str(path), "--on-bad-row", "skip", "--bootstrap", "20",
                 "--rating-bootstrap", "0", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "judgments: 9 read from j.jsonl; skipped 1 blank_line, 1 bad_json, 2 wrong_value" in out
    assert "dpo" in out and "baseline" in out
    with pytest.raises(SourceError, match="no valid judgments in 2 rows"):
        read_judgments(_jsonl(tmp_path / "all_bad.jsonl", [BAD[1][0], BAD[3][0]]), on_bad_row="skip")


def test_cli_needs_models_or_judgments_not_both(tmp_path, capsys):
    path = _jsonl(tmp_path / "j.jsonl", ROWS)
    assert main(["eval", "--judgments", path, "--models", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs --models (systems to sample or read) or --judgments FILE, one of them" in err
    assert main(["eval", "--judgments", path, "--baseline", "nobody", "--out", str(tmp_path / "o")]) == 2
    assert "baseline 'nobody' is not one of the systems" in capsys.readouterr().err
    assert main(["eval", "--judgments", path, "--lc-anchors", "dpo_verbose", "--out", str(tmp_path / "o")]) == 2
    assert "--lc-anchors ['dpo_verbose']: name systems other than the baseline" in capsys.readouterr().err
