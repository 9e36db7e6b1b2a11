"""What alignkit reads off a tokenizer's chat template, once per tokenizer (and ``chat_template_kwargs``).

**End of turn.** A template closes an assistant turn with a special token: ChatML's ``<|im_end|>`` (Qwen),
Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``, Phi-3's ``<|end|>``, Mistral's ``</s>``, DeepSeek's
``<｜end▁of▁sentence｜>``. Some write more after it: a newline (ChatML, Gemma, Phi-3), Phi-3 an
``<|endoftext|>`` after the last turn. The model stops at the turn's end, so that token is the last one a
completion is trained on, and a stop token for sampling. It is found by rendering a probe conversation whose
assistant message is a sentinel and taking the first special token the template writes after it: one rule,
no table of families. (The tokenizer's ``eos_token`` is not that token for Gemma-3 and Phi-3.)

**Reproducible renders.** ``kwargs`` (the user's ``chat_template_kwargs``, e.g. ``enable_thinking``) go to every
``apply_chat_template`` call. A template that calls ``strftime_now`` writes today's date (Llama 3's system
header): the same record would tokenize differently each day, and a reference cache keyed by token ids
would go stale. Unless the user gives ``date_string``, it is pinned to ``26 Jul 2024`` (the Llama 3
template's own fallback) and said once; a template that calls ``strftime_now`` but ignores ``date_string``
cannot be pinned (transformers does not let callers replace ``strftime_now``), and that is warned once.

**Prompt prefix.** Exact boundaries need the prompt's render (with the generation prompt) to be a prefix of
the conversation's render; `check_prompt_prefix` refuses a record where the template renders the prompt
differently once the response follows (e.g. Mistral moves the system message into the *last* user turn, so
a response with a user turn of its own moves it), instead of silently scoring prompt tokens.

See docs/chat_templates.md for what each family's completions end with.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass, field

from alignkit.errors import DataError

logger = logging.getLogger("alignkit")

PINNED_DATE = "26 Jul 2024"  # the Llama 3 template's fallback when strftime_now is not defined
SENTINEL = "alignkit sentinel 7f3a"
_PROBE_USER = "alignkit probe"


@dataclass(frozen=True)
class ChatTemplate:
    """A tokenizer's template as alignkit uses it: the keyword arguments of every render, and the token that
    ends an assistant turn (None: the template writes no special token after an assistant message)."""

    kwargs: dict = field(default_factory=dict)
    end_of_turn: int | None = None


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(template, kwargs): ChatTemplate}


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_template(tokenizer, kwargs: dict | None = None) -> ChatTemplate:
    """The tokenizer's `ChatTemplate` under ``kwargs`` (``chat_template_kwargs``), probed once and cached."""
    kwargs = dict(kwargs or {})
    key = (str(tokenizer.chat_template), json.dumps(kwargs, sort_keys=True, default=str))
    per_tokenizer = _CACHE.setdefault(tokenizer, {})
    if key not in per_tokenizer:
        kwargs = _pin_date(tokenizer, kwargs)
        per_tokenizer[key] = ChatTemplate(kwargs, _end_of_turn(tokenizer, kwargs))
    return per_tokenizer[key]


def turn_end_ids(tokenizer) -> list[int]:
    """The end-of-turn token of the tokenizer's template as a stop id for sampling ([] without a template, or
    where it writes none)."""
    if not has_chat_template(tokenizer):
        return []
    end = chat_template(tokenizer).end_of_turn
    return [] if end is None else [end]


def render_chat(tokenizer, messages: list[dict], template: ChatTemplate, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                         **template.kwargs)


def check_prompt_prefix(prompt: str, full: str, where: str) -> None:
    """Refuse a record whose prompt render is not a prefix of its full render (one line, the first difference)."""
    if full.startswith(prompt):
        return
    i = next(i for i, (a, b) in enumerate(zip(prompt, full + "\0")) if a != b)
    raise DataError(
        f"{where}: the chat template renders the prompt differently once the response follows (from character "
        f"{i}: {prompt[i:i + 24]!r} alone, {full[i:i + 24]!r} with the response), so the completion would include "
        "prompt tokens; make the response the last assistant turn(s) after a prompt the template leaves unchanged "
        "(Mistral moves a system message into the last user turn), or use a template that renders the prompt "
        "the same way (chat_template=never: plain text)"
    )


def require_chat_template(tokenizer, what: str) -> None:
    if not has_chat_template(tokenizer):
        raise DataError(
            f"{what} but the tokenizer has no chat template; set chat_template=never to join message contents "
            "as plain text, or use a tokenizer with a chat template (e.g. the model's instruct version)"
        )


def _probe_render(tokenizer, kwargs: dict, generation_prompt: bool) -> str:
    messages = [{"role": "user", "content": _PROBE_USER}]
    if not generation_prompt:
        messages.append({"role": "assistant", "content": SENTINEL})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                         **kwargs)


def _pin_date(tokenizer, kwargs: dict) -> dict:
    if "strftime_now" not in str(tokenizer.chat_template) or "date_string" in kwargs:
        return kwargs
    pinned = {**kwargs, "date_string": PINNED_DATE}
    try:
        honoured = _probe_render(tokenizer, pinned, True) != _probe_render(tokenizer, {**kwargs, "date_string":
                                                                                       "01 Jan 2000"}, True)
    except Exception:  # a template that refuses the probe conversation: the real renders will say why
        honoured = False
    if not honoured:
        logger.warning("the chat template writes today's date (strftime_now) and ignores date_string: its renders, "
                       "and so the token ids and reference caches, change from day to day")
        return kwargs
    logger.info("the chat template writes today's date: renders use date_string=%r so that token ids are the "
                "same every day (chat_template_kwargs={date_string: ...} chooses another)", PINNED_DATE)
    return pinned


def _end_of_turn(tokenizer, kwargs: dict) -> int | None:
    try:
        text = _probe_render(tokenizer, kwargs, False)
    except Exception as exc:  # any template error: completions fall back to the tokenizer's EOS
        logger.warning("could not find the chat template's end-of-turn token (%s: %s); completions end with the "
                       "tokenizer's EOS", type(exc).__name__, exc)
        return None
    at = text.rfind(SENTINEL)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tail = tokenizer(text[at + len(SENTINEL):], add_special_tokens=False)["input_ids"]
    return next((i for i in tail if i in special), None)
