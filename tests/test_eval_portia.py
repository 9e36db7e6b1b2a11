"""PORTIA (`alignkit.rewards.portia`, ``LLMJudge(portia=True)``): a scripted judge model with a known position
bias — it reads only the start of the question and picks the first answer when it cannot tell — is made
consistent again by splitting the answers into aligned parts and interleaving them."""

import re
from types import SimpleNamespace

import pytest
import torch

from alignkit.rewards.judges import LLMJudge
from alignkit.rewards.portia import cut, length_cuts, merge, semantic_cuts, split_points

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = "It is good. " * 6  # six good sentences
WORSE = "It is okay. " * 4 + "It is good. " * 2  # two, at the end
PROMPT = "Rate this."


class CharTokenizer:
    """One token per character (codes above 255 read as '?')."""

    pad_token_id, eos_token_id, chat_template = 0, None, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) if ord(c) < 256 else 63 for c in text]}


class ShortSightedJudge(torch.nn.Module):
    """Reads the first ``window`` characters of the answers (from the first "Answer A"); scores each answer's
    visible text by its count of "good"; says "A" or "B" for the higher score and "A" (the first shown) on a
    tie."""

    def __init__(self, window: int):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=None)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.window, self.questions = window, []

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 256)
        for i in range(input_ids.shape[0]):
            text = "".join(chr(c) for c, m in zip(input_ids[i].tolist(), attention_mask[i].tolist()) if m)
            self.questions.append(text)
            score = {"A": 0, "B": 0}
            start = text.index("Answer A")
            for label, body in re.findall(r"Answer ([AB])[^:]*:(.*?)(?=\n\nAnswer |\n\nBetter|$)",
                                          text[start:start + self.window], re.S):
                score[label] += body.count("good")
            pick = "B" if score["B"] > score["A"] else "A"
            logits[i, int(attention_mask[i].sum()) - 1, ord(pick)] = 8.0
        return SimpleNamespace(logits=logits)


def _judge(portia: bool) -> tuple[LLMJudge, ShortSightedJudge]:
    tok = CharTokenizer()
    probe = LLMJudge((ShortSightedJudge(10**6), tok), chat_template="never")
    q = probe.question(PROMPT, GOOD, WORSE)
    model = ShortSightedJudge(q.index("Answer B:") - q.index("Answer A") + len("Answer B:") + 12)  # one sentence of B
    return LLMJudge((model, tok), chat_template="never", portia=portia), model


def test_portia_restores_the_consistency_of_a_position_biased_judge():
    n = 6
    a, b = [GOOD, WORSE] * (n // 2), [WORSE, GOOD] * (n // 2)
    plain_judge, _ = _judge(portia=False)
    plain = plain_judge.compare([PROMPT] * n, a, b)
    # shown first, the worse answer (2 good, all visible) beats the better one's visible sentence (1 good)
    assert plain.position_bias["consistency"] == 0.0 and plain.position_bias["first_position_win_rate"] == 1.0
    assert plain.outcomes == [0.5] * n  # order averaging can only call it a tie
    judge, model = _judge(portia=True)
    comp = judge.compare([PROMPT] * n, a, b)
    fixed = comp.extra["portia"]
    assert comp.p_ab == plain.p_ab and comp.p_ba == plain.p_ba  # the plain verdicts are kept for the report
    assert (fixed["rejudged"], fixed["fixed"], fixed["calls"]) == (n, n, 2 * n)
    assert fixed["method"] == ["length"] * n  # the length-aligned split already settles it
    assert comp.outcomes == [1.0, 0.0] * (n // 2)  # the better answer wins in both orders
    assert judge.calls == 4 * n  # 2n plain questions + 2n merged ones
    merged = model.questions[-1]
    assert "Answer A, part 1 of 3: It is" in merged and merged.index("Answer B, part 1 of 3") < merged.index(
        "Answer A, part 2 of 3")


def test_only_order_dependent_comparisons_are_asked_again():
    judge, _ = _judge(portia=True)
    # 1: consistent (the short worse answer is fully visible either way) → not asked again;
    # 2: identical answers → the judge picks the first both ways, split or not → tried twice, still a tie;
    # 3: one sentence each → nothing to split
    a, b = [GOOD, GOOD, "It is good."], ["It is okay.", GOOD, "It is good."]
    comp = judge.compare([PROMPT] * 3, a, b)
    fixed = comp.extra["portia"]
    assert fixed["method"] == ["plain", "semantic", "unsplittable"]
    assert (fixed["rejudged"], fixed["fixed"], fixed["calls"]) == (1, 0, 4)  # length, then semantic, both orders
    assert comp.outcomes == [1.0, 0.5, 0.5]
    assert comp.position_bias["consistency"] == pytest.approx(1 / 3)
    assert judge.calls == 2 * 3 + 4


def test_split_points_cuts_and_alignment():
    text = "First sentence. Second one!\nThird line?\n```\ncode. more code.\n```\nLast."
    points = split_points(text)
    # after "First sentence. ", "Second one!\n", "Third line?\n" and the closing fence's newline; none inside the code
    assert points == [16, 28, 40, text.rindex("```") + 4]
    assert "".join(cut(text, points)) == text
    parts = cut(GOOD, length_cuts(GOOD, 3))
    assert [len(p) for p in parts] == [24, 24, 24] and "".join(parts) == GOOD
    # semantic alignment pairs the parts about the same thing even when their lengths differ
    a = "Cats purr and sleep all day long in the sun. Dogs bark. Fish swim."
    b = "Dogs bark loudly at night. Fish swim in circles in the tank all day. Cats purr."
    ca, cb = semantic_cuts(a, b, 2)
    assert cut(a, ca)[0].startswith("Cats") and cut(b, cb)[1].endswith("Cats purr.")
    assert merge(["x ", "y"], ["u", "v "]) == ("Answer A, part 1 of 2: x\n\nAnswer B, part 1 of 2: u\n\n"
                                             "Answer A, part 2 of 2: y\n\nAnswer B, part 2 of 2: v")


def test_eval_reports_consistency_with_and_without_portia(tmp_path):
    import json

    from alignkit.eval.evaluate import evaluate

    files = []
    for name, answer in (("good", GOOD), ("worse", WORSE)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"{PROMPT} {i}", "completion": answer}) + "\n" for i in range(4)))
        files.append(str(path))
    judge, _ = _judge(portia=False)
    res = evaluate(files, judge=judge, baseline="worse", portia=True, n_boot=50, out_dir=tmp_path / "out")
    bias = res["position_bias"]
    assert bias["consistency"] == 0.0 and bias["order_averaged_win_rate"] == 0.5  # plain: every verdict flips
    assert bias["portia"]["consistency"] == 1.0 and bias["portia"]["order_averaged_win_rate"] == 1.0
    assert (bias["portia"]["rejudged"], bias["portia"]["fixed"], bias["portia"]["calls"]) == (4, 4, 8)
    assert res["win_rates"][0]["win_rate"]["win_rate"] == 1.0  # outcomes are PORTIA's
    assert res["judge"]["portia"] is True and res["judge"]["calls"] == 16
    html = (tmp_path / "out" / "report.html").read_text()
    assert "consistency with PORTIA" in html and "made consistent" in html
