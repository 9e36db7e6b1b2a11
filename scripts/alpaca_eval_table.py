"""alignkit's length-controlled win rate next to AlpacaEval 2's published one: print the table and write it into
docs/evaluation.md (between the ``alpaca-eval-table`` markers). ``tests/test_alpaca_eval_lc.py`` asserts the same.

    .venv/bin/python scripts/alpaca_eval_table.py              # ~10 s on 2 CPU cores; prints and writes the docs
    .venv/bin/python scripts/alpaca_eval_table.py --no-write   # print only
    .venv/bin/python scripts/alpaca_eval_table.py --extract GIT_DIR   # rebuild the fixture from a clone

``--extract`` reads a git clone of https://github.com/tatsu-lab/alpaca_eval (``git show HEAD:...``: no work
tree needed) and keeps numbers only: per system, the judge's preference and the answer length of every
comparison, the indices of missing instructions and the published leaderboard row; the baseline's lengths
once. No text is kept.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import torch

from alignkit.eval.alpaca_eval import compare, fixture_path, load_fixture, markdown, passes, summary_line

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation.md"
BEGIN, END = "<!-- alpaca-eval-table:begin -->", "<!-- alpaca-eval-table:end -->"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
LEADERBOARD = f"src/alpaca_eval/leaderboards/data_AlpacaEval_2/{ANNOTATOR}_leaderboard.csv"
BASELINE = "gpt4_1106_preview"


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "-C", git_dir, *args], capture_output=True, check=True, text=True).stdout


def extract(git_dir: str, out: Path) -> dict:
    commit = _git(git_dir, "rev-parse", "HEAD").strip()
    board = {r[""]: r for r in csv.DictReader(io.StringIO(_git(git_dir, "show", f"HEAD:{LEADERBOARD}")))}
    paths = [p for p in _git(git_dir, "ls-tree", "-r", "--name-only", "HEAD", "results/").split()
             if p.count("/") == 3 and p.endswith(f"/{ANNOTATOR}/annotations.json")]
    annotations, absent = {}, []
    for p in paths:
        name = p.split("/")[1]
        if name not in board:
            continue
        try:
            annotations[name] = json.loads(_git(git_dir, "show", f"HEAD:{p}"))
        except subprocess.CalledProcessError:  # a clone without large files (over 4 MiB) lacks some
            absent.append(name)
    order = [a["instruction"] for a in annotations[BASELINE]]
    index = {text: i for i, text in enumerate(order)}
    base_len = {a["instruction"]: len(a["output_1"]) for a in annotations[BASELINE]}
    systems = {}
    for name in sorted(annotations):
        rows = annotations[name]
        assert {a["generator_1"] for a in rows} == {BASELINE}, name
        positions = [index[a["instruction"]] for a in rows]
        assert positions == sorted(positions) and all(len(a["output_1"]) == base_len[a["instruction"]] for a in rows)
        pub = board[name]
        systems[name] = {
            "preference": [round(float(a["preference"]) - 1, 6) for a in rows],  # P(system beats the baseline)
            "length": [len(a["output_2"]) for a in rows], "missing": sorted(set(range(len(order))) - set(positions)),
            "published": {"lc": float(pub["length_controlled_winrate"]), "win_rate": float(pub["win_rate"]),
                          "n_total": int(pub["n_total"]), "avg_length": int(pub["avg_length"]), "mode": pub["mode"]}}
    fixture = {
        "provenance": {
            "repository": "https://github.com/tatsu-lab/alpaca_eval", "commit": commit, "licence": "Apache-2.0",
            "annotations": f"results/<system>/{ANNOTATOR}/annotations.json", "leaderboard": LEADERBOARD,
            "kept": "per comparison: preference − 1 (P(system wins), 6 decimals) and len(output_2) in characters; "
                    "per instruction: len(output_1) of the baseline; per system: missing instruction indices "
                    "(instructions in the order of the baseline's annotations) and its leaderboard row",
            "systems_without_public_annotations": sorted(set(board) - set(annotations) - set(absent)),
            "absent_from_the_clone": sorted(absent)},
        "baseline": BASELINE, "baseline_length": [base_len[t] for t in order], "systems": systems}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n", encoding="utf-8")
    return fixture


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extract", metavar="GIT_DIR", help="rebuild the fixture from a git clone of tatsu-lab/alpaca_eval")
    p.add_argument("--fixture", default=str(fixture_path()),
                   help="the extract (default: $ALIGNKIT_ALPACA_EVAL, else ../shared/alpaca_eval/: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/evaluation.md alone")
    args = p.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest (and several are slow on a busy machine)
    if args.extract:
        fx = extract(args.extract, Path(args.fixture))
        print(f"wrote {args.fixture}: {len(fx['systems'])} systems, {Path(args.fixture).stat().st_size} bytes")
    fixture = load_fixture(args.fixture)
    published = compare(fixture, keys="as_published")
    prompt = compare(fixture, keys="prompt")
    table = markdown(published, prompt)
    lines = ["Like for like (instruction keys as AlpacaEval used them): " + summary_line(published["summary"]) + ".",
             "Prompt-keyed (alignkit's own keys): " + summary_line(prompt["summary"]) + "."]
    print(table + "\n" + "\n".join(lines))
    print("thresholds met" if passes(published["summary"]) else "THRESHOLDS NOT MET")
    if not args.no_write:
        text = DOC.read_text(encoding="utf-8")
        start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
        prov = fixture["provenance"]
        note = (f"Generated by `scripts/alpaca_eval_table.py` from the extract of AlpacaEval's annotations "
                f"({prov['repository']} at {prov['commit'][:12]}, {prov['licence']}).")
        DOC.write_text(text[:start] + "\n" + note + "\n\n" + "\n\n".join(lines) + "\n\n" + table + text[stop:],
                       encoding="utf-8")
        print(f"wrote {DOC}")
    return 0 if passes(published["summary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
