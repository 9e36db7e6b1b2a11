"""Row layouts: detection, per-layout parsing, conversation splitting, column mapping, field errors."""

import math

import pytest

from alignkit.data import LayoutError, RecordError, detect_layout, explain_layout, parse_row
from alignkit.data.layouts import layout_for_columns, split_conversation


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# ----------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    "columns, layout",
    [
        (["prompt", "chosen", "rejected"], "paired"),
        (["prompt", "chosen", "rejected", "margin", "id"], "paired"),
        (["chosen", "rejected"], "conversation"),
        (["prompt", "completion", "label"], "unpaired"),
        (["prompt", "completions", "ranks"], "ranked"),
        (["prompt", "completions", "scores"], "scored"),
        (["prompt", "responses", "ranks"], "native"),
        (["prompt", "responses", "labels", "system", "meta"], "native"),
        (["prompt", "responses", "scores", "weight"], "native"),
    ],
)
def test_detect_each_layout(columns, layout):
    assert detect_layout(columns) == layout


def test_explain_layout_says_why():
    assert explain_layout(["prompt", "chosen", "rejected", "x"]) == (
        "detected layout 'paired' from columns prompt, chosen, rejected"
    )
    assert explain_layout(["prompt", "completions", "scores"]) == (
        "detected layout 'scored' from columns prompt, completions, scores"
    )
    assert "no 'prompt' column" in explain_layout(["chosen", "rejected"])


def test_messages_only_is_not_preference_data():
    with pytest.raises(LayoutError, match="not preference data"):
        detect_layout(["messages"])


def test_unknown_columns_error_lists_columns_and_layouts():
    with pytest.raises(LayoutError) as e:
        detect_layout(["question", "good", "bad"])
    assert "question, good, bad" in str(e.value) and "columns=" in str(e.value)
    with pytest.raises(LayoutError, match="'completions' needs a 'ranks', 'scores' or 'labels'"):
        detect_layout(["prompt", "completions"])


def test_layout_for_columns_with_mapping():
    layout, reason = layout_for_columns(["question", "good", "bad"], {"prompt": "question", "chosen": "good",
                                                                      "rejected": "bad"})  # fmt: skip
    assert layout == "paired"
    assert reason.endswith("(after columns=prompt<-question, chosen<-good, rejected<-bad)")
    with pytest.raises(LayoutError, match="prompt->'query'"):
        layout_for_columns(["question", "good", "bad"], {"prompt": "query"})


# --------------------------------------------------------------------------------------- paired
def test_paired_with_extras_and_meta():
    row = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2, "score_chosen": 0.9,
           "system": "be terse", "id": 17, "weight": 0.5, "group": "u1", "source": "web",
           "meta": {"lang": "en"}}  # fmt: skip
    rec = parse_row(row, "paired")
    assert rec.to_dict() == {
        "prompt": "2+2?",
        "responses": ["4", "5"],
        "ranks": [0.0, 1.0],
        "system": "be terse",
        "id": "17",
        "group": "u1",
        "weight": 0.5,
        "meta": {"lang": "en", "margin": 2, "score_chosen": 0.9, "source": "web"},
    }


def test_paired_chat_prompt_and_message_responses():
    row = {"prompt": [u("hi")], "chosen": [a("hello!")], "rejected": [a("go away")]}
    rec = parse_row(row, "paired")
    assert rec.is_chat and rec.prompt == [u("hi")]
    assert rec.responses == [[a("hello!")], [a("go away")]]


def test_paired_field_errors_name_the_column():
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "chosen": "c", "rejected": "  "}, "paired")
    assert (e.value.field, e.value.reason) == ("rejected", "empty_field")
    assert str(e.value) == "field 'rejected': an empty string"
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "chosen": "c"}, "paired")
    assert (e.value.field, e.value.reason) == ("rejected", "missing_field")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "chosen": 3, "rejected": "r"}, "paired")
    assert (e.value.field, e.value.reason) == ("chosen", "wrong_type")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "chosen": "c", "rejected": "r", "score_rejected": math.inf}, "paired")
    assert (e.value.field, e.value.reason) == ("score_rejected", "nan_score")


def test_explicit_column_mapping_and_error_uses_user_column():
    cols = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    rec = parse_row({"question": "q", "good": "yes", "bad": "no", "extra": 1}, "paired", columns=cols)
    assert rec.to_dict() == {"prompt": "q", "responses": ["yes", "no"], "ranks": [0.0, 1.0], "meta": {"extra": 1}}
    with pytest.raises(RecordError) as e:
        parse_row({"question": "q", "good": "yes", "bad": ""}, "paired", columns=cols)
    assert e.value.field == "bad" and str(e.value) == "field 'bad': an empty string"


# ------------------------------------------------------------------------------------- unpaired
@pytest.mark.parametrize(
    "label, expected",
    [(True, True), (False, False), (1, True), (0, False), ("desirable", True), ("Undesirable", False),
     ("true", True), ("FALSE", False), ("1", True)],
)  # fmt: skip
def test_unpaired_labels(label, expected):
    rec = parse_row({"prompt": "p", "completion": "c", "label": label}, "unpaired")
    assert rec.k == 1 and rec.labels == [expected] and rec.responses == ["c"]


def test_unpaired_bad_label():
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completion": "c", "label": "maybe"}, "unpaired")
    assert (e.value.field, e.value.reason) == ("label", "wrong_value")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completion": "c", "label": 2}, "unpaired")
    assert (e.value.field, e.value.reason) == ("label", "wrong_type")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completion": "", "label": True}, "unpaired")
    assert (e.value.field, e.value.reason) == ("completion", "empty_field")


# ------------------------------------------------------------------------------ ranked / scored
def test_ranked_and_scored():
    rec = parse_row({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 0, 1]}, "ranked")
    assert rec.ranks == [1.0, 0.0, 1.0] and rec.responses == ["a", "b", "c"]
    rec = parse_row({"prompt": "p", "completions": ["a", "b"], "scores": [[1, 2], [3, 4]]}, "scored")
    assert rec.scores == [[1.0, 2.0], [3.0, 4.0]]


def test_ranked_errors():
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1]}, "ranked")
    assert (e.value.field, e.value.reason) == ("ranks", "k_mismatch")
    assert str(e.value) == "field 'ranks': has 2 entries but there are 3 responses"
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completions": ["a", ""], "scores": [0, 1]}, "scored")
    assert (e.value.field, e.value.reason) == ("completions[1]", "empty_field")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completions": ["a", "b"], "scores": [0, float("nan")]}, "scored")
    assert (e.value.field, e.value.reason) == ("scores[1]", "nan_score")
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "completions": ["a", "b"], "scores": [0, 1]}, "ranked")
    assert (e.value.field, e.value.reason) == ("ranks", "missing_field")


def test_native_label_kind_conflict():
    with pytest.raises(RecordError) as e:
        parse_row({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1], "labels": [True, False]}, "native")
    assert e.value.reason == "label_kind" and e.value.field == "labels"


def test_native_ignores_null_columns():
    row = {"prompt": "p", "responses": ["a"], "ranks": None, "scores": None, "labels": [True], "system": None}
    assert parse_row(row, "native").to_dict() == {"prompt": "p", "responses": ["a"], "labels": [True]}


# --------------------------------------------------------------------------------- conversation
def test_conversation_single_turn_hh_style():
    chosen = [u("How do I bake bread?"), a("Mix flour, water, yeast, salt; knead; proof; bake.")]
    rejected = [u("How do I bake bread?"), a("Buy it.")]
    rec = parse_row({"chosen": chosen, "rejected": rejected}, "conversation")
    assert rec.prompt == [u("How do I bake bread?")]
    assert rec.responses == [[a("Mix flour, water, yeast, salt; knead; proof; bake.")], [a("Buy it.")]]
    assert rec.ranks == [0.0, 1.0]


def test_conversation_multi_turn_prefix_with_assistant_turns():
    shared = [{"role": "system", "content": "be kind"}, u("hi"), a("hello, how can I help?"), u("a joke?")]
    chosen = [*shared, a("Why did the chicken..."), u("ha"), a("glad you liked it")]
    rejected = [*shared, a("no.")]
    prompt, c, r = split_conversation(chosen, rejected)
    assert prompt == shared
    assert c == [a("Why did the chicken..."), u("ha"), a("glad you liked it")]
    assert r == [a("no.")]


def test_conversation_prefix_ending_in_assistant_backs_off_to_last_user_turn():
    chosen = [u("q1"), a("a1"), u("q2"), a("same start"), u("follow-up A"), a("x")]
    rejected = [u("q1"), a("a1"), u("q2"), a("same start"), u("follow-up B"), a("y")]
    prompt, c, r = split_conversation(chosen, rejected)
    assert prompt == [u("q1"), a("a1"), u("q2")]
    assert c == [a("same start"), u("follow-up A"), a("x")]
    assert r == [a("same start"), u("follow-up B"), a("y")]


def test_conversation_from_hh_rlhf_text():
    chosen = "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant: 6"
    rejected = "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant: 7"
    rec = parse_row({"chosen": chosen, "rejected": rejected}, "conversation")
    assert rec.prompt == [u("What is 2+2?"), a("4"), u("And 3+3?")]
    assert rec.responses == [[a("6")], [a("7")]]


def test_conversation_errors():
    same = [u("q"), a("x")]
    with pytest.raises(RecordError, match="same conversation") as e:
        parse_row({"chosen": same, "rejected": list(same)}, "conversation")
    assert e.value.reason == "no_split"
    with pytest.raises(RecordError) as e:
        parse_row({"chosen": [u("q1"), a("x")], "rejected": [u("q2"), a("y")]}, "conversation")
    assert e.value.reason == "no_split" and e.value.field == "chosen"
    with pytest.raises(RecordError) as e:
        parse_row({"chosen": [u("q"), a("x")], "rejected": "just text"}, "conversation")
    assert (e.value.field, e.value.reason) == ("rejected", "wrong_type")
    with pytest.raises(RecordError) as e:
        parse_row({"chosen": [u("q"), {"role": "assistant"}], "rejected": [u("q"), a("y")]}, "conversation")
    assert (e.value.field, e.value.reason) == ("chosen", "wrong_type")


# ------------------------------------------------------------------------------------ CSV cells
def test_text_cells_decode_json_where_a_list_is_needed():
    row = {"prompt": '[{"role": "user", "content": "hi"}]', "completions": '["a", "b"]', "ranks": "[0, 1]",
           "weight": "2.5", "system": "", "note": "[1, 2]"}  # fmt: skip
    rec = parse_row(row, "ranked", text_cells=True)
    assert rec.prompt == [u("hi")] and rec.responses == ["a", "b"] and rec.ranks == [0.0, 1.0]
    assert rec.weight == 2.5 and rec.system is None and rec.meta == {"note": "[1, 2]"}
    plain = parse_row({"prompt": "[not json", "chosen": '["x"]', "rejected": "r"}, "paired", text_cells=True)
    assert plain.prompt == "[not json" and plain.responses == ['["x"]', "r"]


def test_unknown_layout_and_mapping_field():
    with pytest.raises(LayoutError, match="allowed: paired"):
        parse_row({}, "pairs")
    with pytest.raises(LayoutError, match="unknown alignkit field"):
        parse_row({"q": 1}, "paired", columns={"question": "q"})


def test_paired_whole_conversations_are_split_ultrafeedback_style():
    row = {"prompt": "Name a color.", "chosen": [u("Name a color."), a("Blue.")],
           "rejected": [u("Name a color."), a("Seven.")], "score_chosen": 9.0, "score_rejected": 2.0}  # fmt: skip
    rec = parse_row(row, "paired")
    assert rec.prompt == [u("Name a color.")]
    assert rec.responses == [[a("Blue.")], [a("Seven.")]]
    assert rec.meta == {"score_chosen": 9.0, "score_rejected": 2.0}
    # assistant-only message lists are ordinary responses
    rec = parse_row({"prompt": [u("q")], "chosen": [a("x")], "rejected": [a("y")]}, "paired")
    assert rec.prompt == [u("q")] and rec.responses == [[a("x")], [a("y")]]
