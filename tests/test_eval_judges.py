"""Judges (`alignkit.rewards.judges`): position bias and its correction, rules, reward models, LLM judges."""

import pytest
import torch

from alignkit.rewards.judges import (
    Judge,
    LLMJudge,
    RewardModelJudge,
    RuleJudge,
    make_judge,
    order_averaged,
    position_bias,
)

PROMPTS = ["Review: The plot was", "Review: The cast is"] * 5


class AlwaysFirst(Judge):
    """A simulated pairwise judge that always prefers the answer shown first (position A)."""

    pointwise = False

    def prefer_first(self, prompts, firsts, seconds):
        self.calls += len(prompts)
        return [0.9] * len(prompts)


class Fair(Judge):
    """A simulated pairwise judge that prefers the longer answer wherever it is shown."""

    pointwise = False

    def prefer_first(self, prompts, firsts, seconds):
        self.calls += len(prompts)
        return [0.8 if len(f) > len(s) else 0.2 for f, s in zip(firsts, seconds)]


def test_a_judge_that_always_prefers_position_a_is_inconsistent_and_corrected_to_half():
    a = [" great!"] * 10
    b = [" dull and boring and bland."] * 10
    judge = AlwaysFirst()
    comp = judge.compare(PROMPTS, a, b)
    bias = comp.position_bias
    assert bias["consistency"] == 0.0  # the winner flips with the order every time
    assert bias["first_position_win_rate"] == 1.0
    assert bias["win_rate_a_first"] == 1.0 and bias["win_rate_a_second"] == 0.0
    assert comp.outcomes == [0.5] * 10  # order averaging turns each verdict into a tie
    assert bias["order_averaged_win_rate"] == 0.5
    assert judge.calls == 20  # both orders asked


def test_a_consistent_judge_keeps_its_verdicts():
    a = [" great and superb and fun!"] * 10
    b = [" dull."] * 10
    comp = Fair().compare(PROMPTS, a, b)
    assert comp.position_bias["consistency"] == 1.0
    assert comp.position_bias["first_position_win_rate"] == 0.5
    assert comp.outcomes == [1.0] * 10
    assert comp.position_bias["mean_p_a"] == pytest.approx(0.8)


def test_order_averaged_verdicts():
    # A first: 0.7 (A wins); B first: 0.6 (B, shown first, wins) → inconsistent → ½
    assert order_averaged([0.7, 0.7, 0.5], [0.6, 0.3, 0.5]) == [0.5, 1.0, 0.5]
    assert position_bias([0.7], [0.3])["consistency"] == 1.0
    with pytest.raises(ValueError, match="both orders"):
        order_averaged([0.7], [])


def test_rule_judge_calls_one_or_two_argument_functions():
    from alignkit.worlds import reviews

    one = make_judge("rule:alignkit.worlds.reviews:reward")
    assert one.pointwise and not one.with_prompt
    assert one.score(["Review: The plot was"], [" superb but dull."]) == [0.0]
    comp = one.compare(["x", "x"], [" great!", " dull."], [" dull.", " dull."])
    assert comp.outcomes == [1.0, 0.5] and comp.scores_a == [1.0, -1.0]
    two = RuleJudge(lambda prompt, completion: reviews.reward(prompt + completion) + len(prompt))
    assert two.with_prompt and two.score(["ab"], [" great"]) == [3.0]
    assert one.calls == 5


def test_make_judge_errors_name_the_spec():
    with pytest.raises(ValueError, match="unknown kind"):
        make_judge("oracle:x")
    with pytest.raises(ValueError, match="rule:module:function"):
        make_judge("nothing")
    with pytest.raises(ValueError, match="cannot load"):
        make_judge("rule:alignkit.worlds.reviews:no_such_function")


def test_llm_judge_reads_label_probabilities_deterministically(tiny):
    model, tok = tiny
    judge = LLMJudge((model, tok), batch_size=3)
    assert judge.chat_template == "always"  # the tiny tokenizer has a chat template
    a, b = [" good."] * 4, [" terrible, awful."] * 4
    p1 = judge.prefer_first(PROMPTS[:4], a, b)
    assert p1 == judge.prefer_first(PROMPTS[:4], a, b)  # no sampling
    assert all(0 < p < 1 for p in p1)
    # the probability is P(A) / (P(A) + P(B)) over the label spellings, from one forward pass
    from alignkit.generation import prompt_ids

    ids = prompt_ids(tok, judge.question(PROMPTS[0], a[0], b[0]), "always")
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    la, lb = torch.logsumexp(logp[judge.label_ids[0]], 0), torch.logsumexp(logp[judge.label_ids[1]], 0)
    assert p1[0] == pytest.approx(float(torch.sigmoid(la - lb)), abs=1e-5)
    comp = judge.compare(PROMPTS[:4], a, b)
    assert comp.p_ab == p1 and len(comp.p_ba) == 4 and judge.calls == 16


def test_llm_judge_template_needs_its_fields(tiny):
    with pytest.raises(ValueError, match="answer_b"):
        LLMJudge(tiny, template="{prompt} {answer_a}")


def test_reward_model_judge_scores_like_model_scores(tiny_path):
    from alignkit.data.schema import PreferenceRecord
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards.rm_scores import model_scores

    torch.manual_seed(0)
    model, tok = load_reward_model(tiny_path, num_outputs=1), load_tokenizer(tiny_path)
    judge = RewardModelJudge((model, tok))
    got = judge.score(["The movie was", "The plot is"], [" great.", " dull."])
    rec = PreferenceRecord(prompt="The movie was", responses=[" great."], ranks=[0])
    assert got[0] == pytest.approx(model_scores(model, tok, [rec], progress=False)[0][0], abs=1e-6)
    assert judge.score(["The movie was"], [""])[0] == judge.score(["The movie was"], [""])[0]  # empty answers work
