"""`alignkit data` dedup / select / synthesize: planted duplicates, NCD limits, in-domain selection, Magpie."""

import json
import random
import string

import pytest
import torch

from alignkit import cli
from alignkit.data import pair, write_records
from alignkit.data.tools import (
    MinHash,
    compressed_size,
    dedup,
    jaccard,
    lsh_bands,
    ncd,
    pre_query_template,
    select,
    shingles,
    synthesize,
    zipfit_scores,
)
from alignkit.data.tools.duplicates import hashed
from alignkit.generation import Generation

NEAR_A = "Please explain how photosynthesis works in plants."
NEAR_B = "Please explain how photosynthesis works in green plants."


def char5(text):  # an independent reference: character 5-grams of the lower-cased text
    t = " ".join(text.lower().split())
    return {t[i : i + 5] for i in range(len(t) - 4)}


# ---------------------------------------------------------------------------------------- dedup
def test_planted_near_duplicate_is_found_and_distinct_prompts_kept():
    prompts = ["What is the capital of France?", NEAR_A, "Write a haiku about autumn leaves.", NEAR_B,
               "How do I reverse a list in Python?", "Name three primary colors."]  # fmt: skip
    records = [pair(p, "yes", "no", id=f"r{i}") for i, p in enumerate(prompts)]
    result = dedup(records, threshold=0.7)
    expected = len(char5(NEAR_A) & char5(NEAR_B)) / len(char5(NEAR_A) | char5(NEAR_B))  # 22/27 = 0.8148
    assert expected == pytest.approx(0.8148, abs=1e-4)
    assert [r.id for r in result.kept] == ["r0", "r1", "r2", "r4", "r5"]
    assert result.removed == [{"index": 3, "id": "r3", "reason": "near_prompt", "duplicate_of": 1,
                               "duplicate_of_id": "r1", "similarity": round(expected, 4), "prompt": NEAR_B,
                               "duplicate_of_prompt": NEAR_A}]  # fmt: skip
    assert result.report["removed"] == {"near_prompt": 1}
    assert dedup(records, threshold=0.85).removed == []  # below the threshold: kept


def test_exact_duplicates_normalised_and_whole_records():
    records = [pair("Write a poem", "a", "b"), pair("  write A   POEM ", "c", "d"), pair("Write a poem", "a", "b"),
               pair("Write a poem", "e", "f")]  # fmt: skip
    result = dedup(records, near=False)
    assert [(r["index"], r["reason"], r["duplicate_of"]) for r in result.removed] == [
        (1, "exact_prompt", 0), (2, "exact_record", 0), (3, "exact_prompt", 0)]  # fmt: skip
    # several pairs of one (identical) prompt are kept on request; the normalised variant still goes
    kept = dedup(records, near=False, keep_same_prompt=True)
    assert [(r["index"], r["reason"]) for r in kept.removed] == [(1, "exact_prompt"), (2, "exact_record")]
    assert [r.responses for r in kept.kept] == [["a", "b"], ["e", "f"]]


def test_shingles_minhash_and_bands():
    assert shingles("Ab  cd", "char", 3) == {"ab ", "b c", " cd"}
    assert shingles("one two three four", "word", 3) == {"one two three", "two three four"}
    assert shingles("hi", "char", 5) == {"hi"}
    a, b = hashed(shingles(NEAR_A)), hashed(shingles(NEAR_B))
    sig_a, sig_b = MinHash(512, seed=0).signature(a), MinHash(512, seed=0).signature(b)
    estimate = float((sig_a == sig_b).mean())  # P[min-hashes agree] = Jaccard
    assert estimate == pytest.approx(jaccard(a, b), abs=0.06)
    bands, rows = lsh_bands(0.8, 128)
    assert (bands, rows) == (25, 5)  # 1 - (1 - 0.8^5)^25 = 0.99995; six rows: 1 - (1 - 0.8^6)^21 = 0.9983
    assert 1 - (1 - 0.8**5) ** 25 >= 0.999 > 1 - (1 - 0.8**6) ** 21


def test_dedup_command_writes_kept_records_and_report(tmp_path, capsys):
    src = write_records([pair(NEAR_A, "a", "b"), pair(NEAR_B, "c", "d"), pair("Other", "e", "f")],
                        tmp_path / "prefs.jsonl")  # fmt: skip
    assert cli.main(["data", "dedup", str(src), "--out", str(tmp_path / "d.jsonl"), "--threshold", "0.75"]) == 0
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 2
    removed = [json.loads(x) for x in (tmp_path / "d.removed.jsonl").read_text().splitlines()]
    assert [(r["index"], r["reason"], r["duplicate_of"]) for r in removed] == [(1, "near_prompt", 0)]
    assert "dedup: 3 records in -> 2 out; removed: 1 near_prompt" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- select
def random_text(seed, n=2000):
    return "".join(random.Random(seed).choices(string.ascii_letters + string.digits, k=n))


def test_ncd_identical_near_zero_unrelated_near_one():
    from alignkit.models.tiny import default_corpus

    text = " ".join(default_corpus(60, seed=1))
    assert ncd(text, text) < 0.05
    assert 0.95 < ncd(random_text(1), random_text(2)) < 1.05
    assert compressed_size("abc") == compressed_size("abc")  # mtime=0: deterministic


CODE = ["def add(a, b):\n    return a + b", "for i in range(10):\n    print(i)", "import os\nprint(os.getcwd())",
        "def square(x):\n    return x * x", "while n > 0:\n    n -= 1"]  # fmt: skip
COOKING = ["Whisk two eggs with sugar until fluffy, then fold in the flour.",
           "Simmer the tomatoes with garlic and basil for twenty minutes.",
           "Knead the dough, let it rise for an hour, then bake until golden."]  # fmt: skip


def test_zipfit_prefers_in_domain_candidates():
    targets = ["def mul(a, b):\n    return a * b", "for x in items:\n    print(x)", "import sys\nprint(sys.argv)"]
    records = [pair(t, "ok", "no") for t in COOKING[:2] + CODE[:2] + COOKING[2:]]
    sel = select(records, method="zipfit", targets=targets, fraction=0.4, text="prompt")
    assert [r.prompt for r in sel.kept] == CODE[:2]  # both code candidates, in input order
    scores = zipfit_scores([CODE[0], COOKING[0]], targets)
    assert scores[0] > scores[1]
    assert sel.report["records_out"] == 2 and sel.report["dropped"] == 3


def test_random_and_length_baselines():
    records = [pair(f"p{i}", "x" * (i + 1), "y") for i in range(10)]
    longest = select(records, method="length", n=3, text="responses")
    assert [r.prompt for r in longest.kept] == ["p7", "p8", "p9"]
    first, again = select(records, method="random", fraction=0.3, seed=5), select(records, method="random",
                                                                                   fraction=0.3, seed=5)  # fmt: skip
    assert [r.prompt for r in first.kept] == [r.prompt for r in again.kept] and len(first.kept) == 3
    with pytest.raises(ValueError, match="exactly one of fraction"):
        select(records, method="random")
    with pytest.raises(ValueError, match="needs target texts"):
        select(records, fraction=0.5)


def test_select_command_with_txt_targets(tmp_path, capsys):
    src = write_records([pair(t, "ok", "no") for t in COOKING + CODE], tmp_path / "pool.jsonl")
    (tmp_path / "target.txt").write_text("def f(x):\n    return x - 1\nprint(len(xs))\n", encoding="utf-8")
    argv = ["data", "select", str(src), "--out", str(tmp_path / "picked.jsonl"), "--target",
            str(tmp_path / "target.txt"), "--n", "5", "--text", "prompt"]  # fmt: skip
    assert cli.main(argv) == 0
    picked = [json.loads(x)["prompt"] for x in (tmp_path / "picked.jsonl").read_text().splitlines()]
    assert picked == CODE
    rows = [json.loads(x) for x in (tmp_path / "picked.scores.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and [r["kept"] for r in rows] == [True] * 5 + [False] * 3
    assert "select (zipfit): 8 records in -> 5 kept, 3 not selected" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- synthesize
@pytest.fixture(scope="module")
def chat_model(tiny_path):
    """The tiny chat model with its EOS (= <|im_end|>, the end of a ChatML turn) made likely, so random
    weights still finish some turns within a few tokens."""
    from alignkit.models.load import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_path), load_model(tiny_path)
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 4.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model, tok


def test_pre_query_template_is_cut_from_the_chat_template(chat_model):
    _, tok = chat_model
    assert pre_query_template(tok) == "<|im_start|>user\n"
    assert pre_query_template(tok, system="Be nice.") == "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\n"


def test_pre_query_template_needs_a_chat_template(tiny_llama_path):
    from alignkit.models.load import load_tokenizer

    with pytest.raises(ValueError, match="no chat template"):
        pre_query_template(load_tokenizer(tiny_llama_path))


def test_synthesize_with_the_tiny_model_gives_well_formed_records(chat_model):
    model, tok = chat_model
    result = synthesize(model, tok, 8, k=2, max_instruction_tokens=8, max_response_tokens=8, seed=0, batch_size=8)
    rep = result.report
    instruction_drops = sum(v for k, v in rep["dropped"].items() if k.endswith("_instruction"))
    assert rep["instructions_kept"] + instruction_drops == 8
    assert rep["records"] + rep["dropped"].get("instructions_without_response", 0) == rep["instructions_kept"]
    assert rep["records"] > 0 and rep["responses"] == sum(r.k for r in result.records)
    for rec in result.records:
        assert rec.prompt == [{"role": "user", "content": rec.prompt[0]["content"]}] and rec.prompt[0]["content"]
        assert all(isinstance(x, str) and x.strip() for x in rec.responses)
        assert rec.ranks == [0.0] * rec.k and 1 <= rec.k <= 2
    again = synthesize(model, tok, 8, k=2, max_instruction_tokens=8, max_response_tokens=8, seed=0, batch_size=8)
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in result.records]  # seeded


def fake_generate(outputs):
    """`generate` stand-in returning scripted (text, finished) per call, to pin the filters' counts."""
    calls = iter(outputs)

    def gen(model, tokenizer, prompts, k=1, **kwargs):
        rows = next(calls)
        return Generation(prompts, [[t for t, _ in row] for row in rows], [[[] for _ in row] for row in rows],
                          [[f for _, f in row] for row in rows])  # fmt: skip

    return gen


def test_synthesize_filters_are_counted(chat_model, monkeypatch):
    _, tok = chat_model
    instructions = [[("What is 2+2?", True)], [("  ", True)], [("what is  2+2? ", True)], [("cut off", False)],
                    [("Name a color<|im_end|>", True)]]  # fmt: skip
    responses = [[("4", True), ("4", True)], [("", True), ("Red", False)]]
    monkeypatch.setattr("alignkit.data.tools.synthesis.generate", fake_generate([instructions, responses]))
    result = synthesize(None, tok, 5, k=2, batch_size=8)
    assert result.report["dropped"] == {"duplicate_instruction": 1, "duplicate_response": 1, "empty_instruction": 1,
                                        "empty_response": 1, "instructions_without_response": 1,
                                        "overlong_instruction": 1, "overlong_response": 1}  # fmt: skip
    assert [r.to_dict() for r in result.records] == [{"prompt": [{"role": "user", "content": "What is 2+2?"}],
                                                      "responses": ["4"], "ranks": [0.0], "id": "magpie-0",
                                                      "meta": {"source": "magpie"}}]  # fmt: skip


def test_synthesize_command(tiny_path, tmp_path, capsys):
    out = tmp_path / "magpie.jsonl"
    argv = ["data", "synthesize", "--model", tiny_path, "--n", "4", "--out", str(out), "--max-instruction-tokens",
            "6", "--max-response-tokens", "6", "--keep-unfinished", "--response-temperature", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all(r["prompt"][0]["role"] == "user" and r["ranks"] == [0.0] for r in rows)
    assert "pre-query template '<|im_start|>user\\n'; 4 instructions sampled" in capsys.readouterr().out
