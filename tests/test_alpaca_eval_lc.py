"""alignkit's length-controlled win rate against AlpacaEval 2's published one, on AlpacaEval 2's own judge
annotations for 56 systems (an extract with its provenance inside, `alignkit.eval.alpaca_eval.fixture_path`:
data from another repository, so not committed here; the test skips where the extract is not on the machine).
The table is in docs/evaluation.md (`scripts/alpaca_eval_table.py`)."""

import pytest

from alignkit.eval.alpaca_eval import THRESHOLDS, compare, fixture_path, load_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest


@pytest.fixture(scope="module")
def fixture():
    path = fixture_path()
    if not path.is_file():
        pytest.skip(f"the AlpacaEval extract is not at {path} (set ALIGNKIT_ALPACA_EVAL; "
                    "scripts/alpaca_eval_table.py --extract writes it from a clone of tatsu-lab/alpaca_eval)")
    assert path.stat().st_size < 2_000_000
    return load_fixture(path)


def test_the_fixture_is_alpaca_eval_2_and_its_raw_win_rates_are_the_published_ones(fixture):
    prov = fixture["provenance"]
    assert prov["repository"] == "https://github.com/tatsu-lab/alpaca_eval" and len(prov["commit"]) == 40
    assert prov["licence"] == "Apache-2.0"
    systems = {n: s for n, s in fixture["systems"].items() if n != fixture["baseline"]}
    assert len(systems) == 56 and len(fixture["baseline_length"]) == 805
    for name, s in systems.items():  # the leaderboard's win_rate is the mean preference (6-decimal extract)
        assert 100 * sum(s["preference"]) / len(s["preference"]) == pytest.approx(s["published"]["win_rate"], abs=1e-3)
        assert len(s["preference"]) == s["published"]["n_total"] == 805 - len(s["missing"]), name


def test_lc_matches_alpaca_eval_2_published_lc(fixture):
    result = compare(fixture, keys="as_published")
    s = result["summary"]
    by_name = {r["system"]: r for r in result["rows"]}
    assert s["systems"] == 56
    assert s["share_within"] >= THRESHOLDS["share_within"]  # within 1.5 points for >= 90% of systems
    assert s["spearman"] >= THRESHOLDS["spearman"]  # 0.98; the raw win rate ranks them far worse:
    assert s["spearman_raw_win_rate"] < 0.97
    gamed = by_name[THRESHOLDS["gamed"]]  # answers of ~68 characters: raw 3.7, AlpacaEval LC 12.2
    assert gamed["published_lc"] == pytest.approx(12.19, abs=0.01) and gamed["win_rate"] == pytest.approx(3.74, abs=0.01)
    assert abs(gamed["diff"]) <= THRESHOLDS["gamed_within"]
    assert by_name["NullModel"]["lc"] == pytest.approx(86.46, abs=1.5)  # AlpacaEval's published 86.46
    assert s["max_abs_diff"] < 2.5 and s["median_abs_diff"] < 0.5
