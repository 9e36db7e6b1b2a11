"""Magpie-style synthesis of instructions and responses (`alignkit data synthesize`).

Magpie (Xu et al. 2024, https://arxiv.org/abs/2406.08464): an aligned chat model given only its chat
template's opening of a user turn — the *pre-query template*, e.g. ``"<|im_start|>user\\n"`` — writes a
plausible user instruction and stops with its end-of-turn token. The instruction is then sent as a
normal chat turn and the model answers it.

`pre_query_template` derives that opening from any tokenizer's chat template: it renders a
conversation whose user message is a sentinel string and cuts the text just before the sentinel.
`synthesize` samples instructions from it, drops empty, unfinished (hit the token limit: overlong) and
duplicate ones, answers the rest (``k`` responses each, empty / unfinished / repeated responses dropped)
and returns records ``{prompt: [user message], responses: [...k], ranks: [0, ...]}`` — all tied, no
preference yet, like `alignkit generate`'s output: score them (`alignkit score`) and build pairs, or
train SFT on them. Every drop is counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.tools.common import normalize, progress
from alignkit.errors import ConfigError, ModelError
from alignkit.generation import generate

SENTINEL = "\u27e6ALIGNKIT-MAGPIE-QUERY\u27e7"


def pre_query_template(tokenizer, system: str | None = None) -> str:
    """The chat template's text up to where a user message's content starts (with ``system`` if given)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelError("synthesize needs a chat model: the tokenizer has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    at = text.find(SENTINEL)
    if at < 0:
        raise ModelError("the chat template does not render the user message's content verbatim; "
                         "cannot find where a user turn starts")  # fmt: skip
    return text[:at]


def post_query_marker(tokenizer, system: str | None = None) -> str:
    """The first line of template text that follows a user message's content (e.g. ``" [/INST]"``)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return text[text.find(SENTINEL) + len(SENTINEL) :].strip().split("\n")[0]


def _plain_prompt(tokenizer, text: str) -> str:
    """``text`` as a plain prompt: `generate` encodes it with the tokenizer's special tokens, so a BOS the
    template already wrote is removed from the text when the tokenizer adds its own."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        adds = tokenizer("", add_special_tokens=True)["input_ids"]
        if tokenizer.bos_token_id in adds:
            return text[len(bos) :]
    return text


@dataclass
class Synthesis:
    records: list[PreferenceRecord]
    report: dict[str, Any]


def _instructions(model, tokenizer, template: str, n: int, marker: str, opts: dict[str, Any],
                  dropped: Counter, show: bool) -> list[str]:  # fmt: skip
    prompt, kept, seen = _plain_prompt(tokenizer, template), [], set()
    for start in progress(range(0, n, opts["batch_size"]), show, "instructions", -(-n // opts["batch_size"])):
        size = min(opts["batch_size"], n - start)
        gen = generate(model, tokenizer, [prompt] * size, k=1, max_new_tokens=opts["max_instruction_tokens"],
                       temperature=opts["temperature"], top_p=opts["top_p"], seed=opts["seed"] + start,
                       batch_size=size, chat_template="never")  # fmt: skip
        for texts, done in zip(gen.texts, gen.finished):
            text, finished = texts[0], done[0]
            if marker and marker in text:  # the end of the user turn is not a special token
                text, finished = text[: text.index(marker)], True
            text, key = text.strip(), normalize(text)
            reason = ("overlong_instruction" if not finished and not opts["keep_unfinished"] else
                      "empty_instruction" if not text else "duplicate_instruction" if key in seen else None)  # fmt: skip
            if reason:
                dropped[reason] += 1
                continue
            seen.add(key)
            kept.append(text)
    return kept


def _answer(model, tokenizer, instructions: list[str], system: str | None, opts: dict[str, Any],
            dropped: Counter, show: bool) -> list[PreferenceRecord]:  # fmt: skip
    records, k, bs = [], opts["k"], opts["batch_size"]
    for start in progress(range(0, len(instructions), bs), show, "responses", -(-len(instructions) // bs)):
        chunk = instructions[start : start + bs]
        chats = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
                 for q in chunk]  # fmt: skip
        gen = generate(model, tokenizer, chats, k=k, max_new_tokens=opts["max_response_tokens"],
                       temperature=opts["response_temperature"], top_p=opts["top_p"],
                       seed=opts["seed"] + 1_000_003 + start, batch_size=bs)  # fmt: skip
        for q, texts, done in zip(chunk, gen.texts, gen.finished):
            kept: list[str] = []
            for t, finished in zip(texts, done):
                reason = ("overlong_response" if not finished and not opts["keep_unfinished"] else
                          "empty_response" if not t.strip() else "duplicate_response" if t in kept else None)  # fmt: skip
                if reason:
                    dropped[reason] += 1
                else:
                    kept.append(t)
            if not kept:
                dropped["instructions_without_response"] += 1
                continue
            records.append(PreferenceRecord(prompt=[{"role": "user", "content": q}], responses=kept,
                                            ranks=[0] * len(kept), system=system, id=f"magpie-{len(records)}",
                                            meta={"source": "magpie"}))  # fmt: skip
    return records


def synthesize(model, tokenizer, n: int, *, k: int = 1, system: str | None = None, max_instruction_tokens: int = 128,
               max_response_tokens: int = 512, temperature: float = 1.0, top_p: float = 1.0,
               response_temperature: float | None = None, keep_unfinished: bool = False, seed: int = 0,
               batch_size: int = 16, show_progress: bool = False) -> Synthesis:  # fmt: skip
    """Sample ``n`` instructions from the pre-query template and answer each ``k`` times (see the module
    docstring). ``response_temperature`` defaults to 0 (greedy) for ``k == 1`` and 1 otherwise;
    ``keep_unfinished`` keeps texts cut at the token limit instead of dropping them as overlong."""
    if n < 1 or k < 1 or batch_size < 1:
        raise ConfigError(f"synthesize: n, k and batch_size must be >= 1, got {n}, {k}, {batch_size}")
    if response_temperature is None:
        response_temperature = 0.0 if k == 1 else 1.0
    if k > 1 and response_temperature == 0:
        raise ConfigError("synthesize: k > 1 with greedy responses gives k identical copies; set a temperature")
    template, marker = pre_query_template(tokenizer, system), post_query_marker(tokenizer, system)
    opts = {"k": k, "batch_size": batch_size, "max_instruction_tokens": max_instruction_tokens,
            "max_response_tokens": max_response_tokens, "temperature": temperature, "top_p": top_p,
            "response_temperature": response_temperature, "keep_unfinished": keep_unfinished, "seed": seed}  # fmt: skip
    dropped: Counter = Counter()
    instructions = _instructions(model, tokenizer, template, n, marker, opts, dropped, show_progress)
    records = _answer(model, tokenizer, instructions, system, opts, dropped, show_progress)
    report = {"pre_query_template": template, "instructions_sampled": n, "instructions_kept": len(instructions),
              "records": len(records), "responses": sum(r.k for r in records), "dropped": dict(sorted(dropped.items()))}  # fmt: skip
    return Synthesis(records, report)
