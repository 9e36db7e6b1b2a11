"""``urial``: in-context alignment of an untuned base model (URIAL, Lin et al. 2023, "The Unlocking Spell on
Base LLMs", https://arxiv.org/abs/2312.01552).

The prompt is placed as the final query of a fixed plain-text template — a system-style preamble and a
few stylistic question/answer examples — and the base model continues it; generation stops where the
model starts the next turn. No chat template is applied to the rendered text.

Template file (UTF-8; the shipped one is ``alignkit/inference/templates/urial.md``, ``template=PATH``
uses yours): header lines ``key: value``, a line ``---``, then the body, used verbatim except that its one
``{query}`` is replaced by the prompt. Header keys:

* ``stop`` (one or more lines, required) — the next-turn marker(s), e.g. ``# Query:``: a sample ends as
  soon as its text contains one (`alignkit.generation.generate`'s ``stop``), and its text is cut before it;
* ``strip`` (optional, repeatable) — a suffix removed from the answer (the shipped template closes each
  answer with a code fence: ``strip: `````).

The returned text is the completion before the first marker with trailing whitespace removed, then each
``strip`` suffix it ends with removed (and trailing whitespace again). A prompt is a string or a chat
whose only message is a user message (multi-turn chats are refused).

Sampling is `alignkit.generation.generate` at ``settings`` (temperature 0: greedy). ``reward`` is
``reward_fn`` of the returned text when one is given. KL estimate (``kl``, only at temperature 1 and
top_p 1, where the sample is an exact draw): ``log π(y | urial(x)) − log π(y | x)`` of the sampled
completion y (the raw text up to and including the marker), both by `alignkit.engine.score.score_logps` —
a one-sample unbiased estimate of KL(π(· | urial(x)) ‖ π(· | x)), the price of the context.
Cost: ``calls`` = the n forward passes of the n drawn tokens (+2 scoring passes with ``kl``);
``tokens`` = ``len(rendered) + n − 1`` (+ the scored sequences), each prompt counted as if decoded alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alignkit.engine.score import score_logps
from alignkit.errors import ConfigError, DataError
from alignkit.generation import generate, prompt_ids
from alignkit.inference.base import InferenceOutput, register


@dataclass
class UrialOptions:
    template: str = ""  # a template file (format: module docstring); empty: the shipped URIAL template


@dataclass(frozen=True)
class UrialTemplate:
    body: str
    stop: tuple[str, ...]
    strip: tuple[str, ...] = ()

    def render(self, query: str) -> str:
        return self.body.replace("{query}", query)

    def clean(self, text: str) -> str:
        """The answer: ``text`` without trailing whitespace and ``strip`` suffixes."""
        text = text.rstrip()
        for suffix in self.strip:
            if text.endswith(suffix):
                text = text[: len(text) - len(suffix)].rstrip()
        return text


def parse_template(text: str, source: str = "template") -> UrialTemplate:
    """A `UrialTemplate` from a template file's text (module docstring), with errors naming ``source``."""
    head, sep, body = text.partition("\n---\n")
    if not sep:
        raise ConfigError(f"{source}: a URIAL template needs header lines (stop: MARKER), a line '---', then the body")
    values: dict[str, list[str]] = {"stop": [], "strip": []}
    for n, line in enumerate(head.splitlines(), 1):
        key, colon, value = line.partition(": ")
        if not line.strip():
            continue
        if not colon or key not in values or not value:
            raise ConfigError(f"{source}: header line {n} {line!r} must be 'stop: MARKER' or 'strip: SUFFIX'")
        values[key].append(value)
    if not values["stop"]:
        raise ConfigError(f"{source}: the header needs at least one 'stop: MARKER' line (the next-turn marker)")
    if body.count("{query}") != 1:
        raise ConfigError(f"{source}: the body must contain '{{query}}' exactly once, found {body.count('{query}')}")
    return UrialTemplate(body, tuple(values["stop"]), tuple(values["strip"]))


def load_template(path: str = "") -> UrialTemplate:
    """The shipped template (``path`` empty) or the one at ``path``."""
    if not path:
        return parse_template(resources.files("alignkit.inference").joinpath("templates/urial.md").read_text("utf-8"),
                              "alignkit/inference/templates/urial.md")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"urial template {path!r} is not a file")
    return parse_template(p.read_text(encoding="utf-8"), str(p))


def query_text(prompt) -> str:
    """The query a prompt asks: the string itself, or the content of a chat's single user message."""
    if isinstance(prompt, str):
        return prompt
    msgs = list(prompt)
    if len(msgs) != 1 or msgs[0].get("role") != "user":
        raise DataError(f"urial takes a text prompt or a chat of one user message, got roles "
                         f"{[m.get('role') for m in msgs]}")
    return msgs[0]["content"]


def _kl(model, tokenizer, prompts, rendered, gen, settings) -> list[float | None]:
    if settings.temperature != 1 or settings.top_p != 1:
        return [None] * len(prompts)
    raw = [[tokenizer.decode(ids[0], skip_special_tokens=True)] for ids in gen.token_ids]
    eos_end = [[s[0] is not None] for s in gen.stop_ids]
    with_ctx = score_logps(model, tokenizer, rendered, raw, eos_end, chat_template="never")
    without = score_logps(model, tokenizer, prompts, raw, eos_end, chat_template=settings.chat_template,
                          chat_template_kwargs=settings.chat_template_kwargs)
    return [float(a - b) for a, b in zip(with_ctx[:, 0], without[:, 0])]


@register("urial", UrialOptions, summary="URIAL: untuned base model + fixed preamble and stylistic examples "
          "(plain text), stopping at the next-turn marker")
def urial(model, tokenizer, prompts, rows, settings, options: UrialOptions, reward_fn=None, helper=None):
    """URIAL (module docstring): render, sample with the template's stop markers, clean the answers."""
    tpl = load_template(options.template)
    rendered = [tpl.render(query_text(p)) for p in prompts]
    gen = generate(model, tokenizer, rendered, k=1, max_new_tokens=settings.max_new_tokens,
                   temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
                   batch_size=settings.batch_size, chat_template="never", stop=list(tpl.stop))
    texts = [tpl.clean(t[0]) for t in gen.texts]
    rewards = [None] * len(prompts) if reward_fn is None else [float(r) for r in reward_fn(prompts, texts, rows)]
    kls = _kl(model, tokenizer, prompts, rendered, gen, settings)
    out = []
    for i, prompt in enumerate(prompts):
        ids, drawn = gen.token_ids[i][0], len(gen.token_ids[i][0]) + (gen.stop_ids[i][0] is not None)
        p_len = len(prompt_ids(tokenizer, rendered[i], "never"))
        calls, tokens = drawn, p_len + drawn - 1
        if kls[i] is not None:
            calls += 2
            tokens += p_len + len(prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs)) + 2 * len(ids)
        out.append(InferenceOutput(prompt=prompt, text=texts[i], token_ids=ids, finished=gen.finished[i][0],
                                   reward=rewards[i], calls=calls, tokens=tokens, kl=kls[i],
                                   extra={"stopped_at": gen.stop_strings[i][0]}))
    return out
