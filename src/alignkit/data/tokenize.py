"""Exact prompt/completion token boundaries.

The tokens of a completion are exactly those that follow the prompt in the tokenization of the
*full* text (prompt + completion), the sequence the model actually sees when it generates. A BPE
tokenizer may merge across the boundary ("Answer: " + "yes" -> [..., ":", "Ġyes"], while "Answer: "
alone ends with "Ġ"), so tokenizing the two parts separately and concatenating is wrong.

For each response k we tokenize the prompt alone and the full text, and take the longest common
prefix (LCP) of the two id lists: ``full[:n_k]`` are prompt tokens, ``full[n_k:]`` completion tokens.
Because ``full[:n_k] == prompt_ids[:n_k]``, the tokens before ``shared = min_k n_k`` are identical for
every response, which is what shared-prompt packing encodes once. A response whose boundary merged
(``n_k > shared``) carries its extra prompt tokens as unscored context at the start of its segment,
so every packed response reproduces ``tokenize(prompt + response)`` token for token.

Chat data (``messages``) is rendered with the tokenizer's chat template (``chat_template_kwargs`` passed to
every render): the prompt with ``add_generation_prompt=True``, the full text with the response as the final
assistant turn(s). The prompt's render must be a prefix of the full render (else a `DataError` names the
record). Renders already hold their special tokens (BOS included), so they are encoded with
``add_special_tokens=False``: never a second BOS.

Where a completion ends (`completion_end`): a chat completion ends right after the last end-of-turn token
the template writes (found once per tokenizer, `alignkit.data.chat_template`: ``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ``<|end|>``, ``</s>``…); what the template writes after it (ChatML's and Gemma's newline,
Phi-3's ``"\n<|endoftext|>"``) is dropped, since the model stops there. A plain-text completion ends with the
tokenizer's EOS, appended when the text does not contain it. docs/chat_templates.md has the per-family table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from alignkit.data.chat_template import chat_template as template_of
from alignkit.data.chat_template import check_prompt_prefix, render_chat, require_chat_template
from alignkit.data.schema import PreferenceRecord, Text
from alignkit.errors import ConfigError, DataError


@dataclass
class TokenizeConfig:
    max_length: int | None = None  # max tokens of prompt + one response
    max_prompt_length: int | None = None  # prompt budget when a sequence is too long (default: max_length // 2)
    prompt_truncation: str = "left"  # "left" keeps the end of the prompt, "right" keeps its start
    chat_template: str = "auto"  # "auto": use it for message prompts; "always": also wrap plain prompts; "never"
    chat_template_kwargs: dict | None = None  # passed to every apply_chat_template (e.g. enable_thinking, date_string)
    add_eos: bool = True  # end each completion with its end token (False: the full text's tokens as they are)


@dataclass
class TokenizedRecord:
    """One record as token ids: a shared prompt prefix and K response segments.

    ``segments[k][:score_start[k]]`` are prompt tokens that follow the shared prefix for this response
    only (boundary merges); ``segments[k][score_start[k]:]`` are its completion tokens (scored).
    """

    prompt_ids: list[int]
    segments: list[list[int]]
    score_start: list[int]
    index: int = 0
    aux: int = 0  # trailing segments that are not the record's responses (KTO's mismatched KL completion)
    shared: list[int] | None = None  # leading completion tokens each response shares with a sibling (trees)
    steps: list[int] | None = None  # completion positions of each step's last token (process reward models)
    step_labels: list[float] | None = None

    @property
    def k(self) -> int:
        return len(self.segments)

    def completion_ids(self, k: int) -> list[int]:
        return self.segments[k][self.score_start[k] :]

    def full_ids(self, k: int) -> list[int]:
        return self.prompt_ids + self.segments[k]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + sum(len(s) for s in self.segments)


@dataclass
class TokenizeReport:
    records: int = 0
    truncated: Counter = field(default_factory=Counter)  # "prompt", "completion"

    def summary(self) -> str:
        if not self.truncated:
            return f"tokenized {self.records} records; none truncated"
        parts = ", ".join(f"{n} {what}s" for what, n in sorted(self.truncated.items()))
        return f"tokenized {self.records} records; truncated to fit max_length: {parts}"


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _as_messages(text: Text, role: str) -> list[dict]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def uses_template(record: PreferenceRecord, config: TokenizeConfig) -> bool:
    return config.chat_template == "always" or (config.chat_template == "auto" and record.is_chat)


def render(record: PreferenceRecord, tokenizer, config: TokenizeConfig, index: int = 0,
           responses: bool = True) -> tuple[str, list[str], bool]:
    """Prompt text and full texts (prompt + response k). Returns (prompt, fulls, used_template);
    ``responses=False``: the prompt alone (fulls empty), as generation needs it."""
    if uses_template(record, config):
        where = f"record {record.id or index}"
        require_chat_template(tokenizer, f"{where} has a chat prompt")
        msgs = _as_messages(record.prompt, "user")
        if record.system is not None:
            if msgs[0]["role"] == "system" and msgs[0]["content"] != record.system:
                raise DataError(
                    f"{where}: 'system' is set and the chat prompt starts with a different system message; "
                    "keep one of them"
                )
            if msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": record.system}] + msgs
        template = template_of(tokenizer, config.chat_template_kwargs)
        prompt = render_chat(tokenizer, msgs, template, generation_prompt=True)
        fulls = [render_chat(tokenizer, msgs + _as_messages(r, "assistant"), template, generation_prompt=False)
                 for r in (record.responses if responses else [])]
        for k, full in enumerate(fulls):
            check_prompt_prefix(prompt, full, where if len(fulls) == 1 else f"{where}, response {k}")
        return prompt, fulls, True
    prompt = _plain(record.prompt)
    if record.system is not None:
        prompt = record.system + "\n\n" + prompt
    return prompt, [prompt + _plain(r) for r in record.responses], False


def _plain(text: Text) -> str:
    return text if isinstance(text, str) else "\n".join(m["content"] for m in text)


def encode(tokenizer, text: str, used_template: bool) -> list[int]:
    # Templates already contain their special tokens; plain text gets the tokenizer's (e.g. BOS).
    return list(tokenizer(text, add_special_tokens=not used_template)["input_ids"])


def completion_end(tokenizer, used_template: bool, config: TokenizeConfig) -> int | None:
    """The token a completion ends with: the chat template's end of turn for a template render (where the
    template writes one), else the tokenizer's EOS."""
    if used_template:
        end = template_of(tokenizer, config.chat_template_kwargs).end_of_turn
        if end is not None:
            return end
    return tokenizer.eos_token_id


def _end_completion(ids: list[int], start: int, end: int | None, add_eos: bool) -> list[int]:
    """``ids`` cut right after the last ``end`` token of the completion (``ids[start:]``), or with ``end``
    appended where the completion has none."""
    if end is None or not add_eos:
        return ids
    comp = ids[start:]
    if end in comp:
        last = len(comp) - 1 - comp[::-1].index(end)
        return ids[: start + last + 1]
    return ids + [end]


def tokenize_record(
    record: PreferenceRecord, tokenizer, config: TokenizeConfig, report: TokenizeReport | None = None, index: int = 0
) -> TokenizedRecord:
    prompt_text, fulls, used_template = render(record, tokenizer, config, index)
    prompt_ids = encode(tokenizer, prompt_text, used_template)
    end = completion_end(tokenizer, used_template, config)
    full_ids, bounds = [], []
    for text in fulls:
        ids = encode(tokenizer, text, used_template)
        n = _lcp(prompt_ids, ids)
        ids = _end_completion(ids, n, end, config.add_eos)
        if len(ids) <= n:
            raise DataError(f"response tokenizes to zero completion tokens (record {record.id or index})")
        full_ids.append(ids)
        bounds.append(n)
    shared = min(bounds)
    tr = TokenizedRecord(
        prompt_ids=prompt_ids[:shared],
        segments=[ids[shared:] for ids in full_ids],
        score_start=[n - shared for n in bounds],
        index=index,
    )
    if config.max_length is not None:
        _truncate(tr, config, report)
    if report is not None:
        report.records += 1
    return tr


def _truncate(tr: TokenizedRecord, config: TokenizeConfig, report: TokenizeReport | None) -> None:
    """Fit every prompt + response into max_length: cut the prompt (keep its end), then completion tails."""
    max_len = config.max_length
    longest = max(len(tr.prompt_ids) + len(s) for s in tr.segments)
    if longest <= max_len:
        return
    budget = config.max_prompt_length if config.max_prompt_length is not None else max_len // 2
    if len(tr.prompt_ids) > budget:
        cut = len(tr.prompt_ids) - budget
        tr.prompt_ids = tr.prompt_ids[cut:] if config.prompt_truncation == "left" else tr.prompt_ids[:budget]
        if report is not None:
            report.truncated["prompt"] += 1
    for k, seg in enumerate(tr.segments):
        room = max_len - len(tr.prompt_ids)
        if len(seg) > room:
            if room <= tr.score_start[k]:
                raise DataError(
                    f"max_length={max_len} leaves no room for the completion of record {tr.index}; "
                    "raise max_length or lower max_prompt_length"
                )
            tr.segments[k] = seg[:room]
            if report is not None:
                report.truncated["completion"] += 1


def tokenize_records(
    records: list[PreferenceRecord], tokenizer, config: TokenizeConfig | None = None
) -> tuple[list[TokenizedRecord], TokenizeReport]:
    config = config or TokenizeConfig()
    if config.prompt_truncation not in ("left", "right"):
        raise ConfigError(f"prompt_truncation must be 'left' or 'right', got {config.prompt_truncation!r}")
    if config.chat_template not in ("auto", "always", "never"):
        raise ConfigError(f"chat_template must be auto, always or never, got {config.chat_template!r}")
    chats = sum(uses_template(r, config) for r in records)
    if chats:  # once, before tokenizing anything
        what = "chat_template=always is set" if config.chat_template == "always" else \
            f"{chats} of {len(records)} records have chat prompts (message lists)"
        require_chat_template(tokenizer, what)
    report = TokenizeReport()
    out = [tokenize_record(r, tokenizer, config, report, i) for i, r in enumerate(records)]
    return out, report
