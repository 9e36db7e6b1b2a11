"""Sampling completions from a causal LM.

* `generate` — batched ``model.generate`` with left padding: K samples per prompt, stopping at EOS or
  at a stop string, reproducible for a given seed. It returns token ids, texts and how each sample ended.
* `sample` — the same, texts only: ``list[list[str]]`` of B prompts x K completions.
* `generate_conditioned` — `generate` at a chosen trade-off for a model trained with ``condition_weights``.

Scoring the samples under a model (``s(y)`` as the trainer computes it) is `alignkit.engine.score.score_logps`.

Prompts are plain strings, or chats (lists of ``{"role", "content"}`` messages) rendered with the
tokenizer's chat template — the same rendering `alignkit.data.tokenize` uses, so a sampled completion
is scored in exactly the context it was sampled in. A sample stops at the tokenizer's EOS, the model's
generation-config EOS ids, or the chat template's end-of-turn token (Gemma's ``<end_of_turn>``, Phi-3's
``<|end|>``; `alignkit.data.chat_template`), so sampled completions end where training completions end.
The stop token is not part of a sample's text; `score_logps` scores it (as the trainer does) unless told
the sample was cut at ``max_new_tokens``.

Texts are re-tokenized for scoring. For a model that emits the tokenizer's own segmentation (any model
trained on tokenized text, almost always) this is the sampled token sequence; a sample written with an
unusual segmentation of the same text is scored by the canonical one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.data.chat_template import turn_end_ids
from alignkit.data.schema import PreferenceRecord, Text
from alignkit.data.tokenize import (
    TokenizeConfig,
    encode,
    render,
)
from alignkit.data.transforms_condition import WEIGHTS_TEMPLATE, conditioned_prompt
from alignkit.errors import ConfigError, DataError


@dataclass
class Generation:
    """B prompts x K samples. ``token_ids[b][k]`` excludes padding and the stop token (EOS or the chat
    template's end of turn); ``finished[b][k]`` says whether the sample stopped at one of those or at a stop
    string (False: cut at ``max_new_tokens``).

    A sample that ended at a stop string keeps, in ``token_ids``, every sampled token up to and
    including the one that completed the stop string (the ids whose log-probs training needs), while its
    text ends just before the stop string; ``stop_strings[b][k]`` names the stop string (else None)."""

    prompts: list[Text]
    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    finished: list[list[bool]]
    stop_ids: list[list[int | None]] | None = None  # the stop token each sample ended with (None: cut or stop string)
    stop_strings: list[list[str | None]] | None = None  # the stop string each sample ended at (None: EOS or cut)

    @property
    def num_unfinished(self) -> int:
        return sum(not f for row in self.finished for f in row)

    @property
    def ended_with_eos(self) -> list[list[bool]]:
        """Whether each sample ended with a stop token — the ``finished`` that `score_logps` wants (it appends
        and scores the end token); a sample that ended at a stop string is rescored from its text without one."""
        if self.stop_ids is None:
            return self.finished
        return [[s is not None for s in row] for row in self.stop_ids]


def completion_record(prompt: Text, completions: list[str]) -> PreferenceRecord:
    """A ranks record of ``prompt`` and sampled ``completions`` to tokenize and score (not a training record:
    a completion may be empty, EOS first)."""
    return PreferenceRecord(prompt=prompt, responses=list(completions), ranks=[0.0] * len(completions), sampled=True)


def prompt_ids(tokenizer, prompt: Text, chat_template: str = "auto", chat_template_kwargs: dict | None = None
               ) -> list[int]:
    """Token ids of a prompt as the trainer and `score_logps` see it (chat template for message lists)."""
    config = TokenizeConfig(chat_template=chat_template, chat_template_kwargs=chat_template_kwargs)
    text, _, used_template = render(completion_record(prompt, [""]), tokenizer, config, responses=False)
    return encode(tokenizer, text, used_template)


def left_pad(chunk: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token id lists -> left-padded ``input_ids`` and ``attention_mask`` [B, max length] (generation pads left)."""
    width = max(len(ids) for ids in chunk)
    input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, ids in enumerate(chunk):
        if not ids:
            raise DataError(f"row {i} has no tokens: a prompt must encode to at least one token")
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    return input_ids, mask


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a sample: the tokenizer's EOS, the chat template's end of turn, the model's EOS ids."""
    ids = {tokenizer.eos_token_id, *turn_end_ids(tokenizer)}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def eos_and_pad(model, tokenizer) -> tuple[list[int], int]:
    """The ids that end a sample (the tokenizer's EOS, the chat template's end-of-turn token and the model's
    generation-config EOS ids) and the pad id (the tokenizer's, else the first of those)."""
    eos = eos_ids(model, tokenizer)
    return eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


class _StopStrings:
    """A transformers stopping criterion: a row is done once its decoded completion (the tokens after
    ``width``, special tokens skipped) contains one of ``stop``. ``cut[row]`` records how many completion
    tokens it had then. Rows that sampled an EOS are left alone (their stop is the EOS)."""

    def __init__(self, tokenizer, stop: list[str], width: int, eos: list[int]):
        self.tokenizer, self.stop, self.width, self.eos = tokenizer, list(stop), width, eos
        self.cut: dict[int, int] = {}
        self.eos_seen: set[int] = set()

    def __call__(self, input_ids: Tensor, scores=None, **kwargs) -> Tensor:
        last = input_ids[:, -1].tolist()
        open_rows = []
        for row, tok in enumerate(last):
            if tok in self.eos and row not in self.cut:
                self.eos_seen.add(row)
            if row not in self.cut and row not in self.eos_seen:
                open_rows.append(row)
        if open_rows:
            texts = self.tokenizer.batch_decode(input_ids[open_rows, self.width:], skip_special_tokens=True)
            for row, text in zip(open_rows, texts):
                if any(s in text for s in self.stop):
                    self.cut[row] = input_ids.shape[1] - self.width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[list(self.cut)] = True
        return done


def first_stop(text: str, stop: list[str]) -> tuple[int, str | None]:
    """Where the earliest stop string starts in ``text`` and which one (``len(text)``, None: none)."""
    hits = [(text.find(s), s) for s in stop if s in text]
    return min(hits, key=lambda h: (h[0], -len(h[1]))) if hits else (len(text), None)


def split_samples(seqs: list[list[int]], eos: list[int], cuts: dict[int, int], tokenizer, stop: list[str]) -> list:
    """Sampled rows -> (token ids, text, stop token id, stop string) each. ``cuts``: row -> the number of tokens
    at which the stop criterion fired (the token that completed the stop string is kept). All rows are decoded
    in one batch call (the tokenizer's batch decode, not one call per sample)."""
    eos_set, parts = set(eos), []
    for r, seq in enumerate(seqs):
        end = next((t for t, tok in enumerate(seq) if tok in eos_set), None)
        cut = cuts.get(r)
        if cut is not None and (end is None or cut <= end):
            parts.append((seq[:cut], None, True))
        else:
            parts.append((seq if end is None else seq[:end], None if end is None else seq[end], False))
    texts = tokenizer.batch_decode([ids for ids, _, _ in parts], skip_special_tokens=True) if parts else []
    out = []
    for (ids, stop_id, was_cut), text in zip(parts, texts):
        if was_cut:
            start, hit = first_stop(text, stop)
            out.append((ids, text[:start], None, hit))
        else:
            out.append((ids, text, stop_id, None))
    return out


@contextlib.contextmanager
def seeded(device: torch.device, seed: int):
    """Run the block with the torch RNG of the CPU (and of ``device`` when it is a GPU) seeded with ``seed``,
    restoring the previous states after (`torch.random.fork_rng`). Seeds only those generators:
    `torch.manual_seed` seeds every device type and costs milliseconds per call."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def check_stop(stop) -> list[str]:
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"stop must be a list of non-empty strings, got {stop!r}")
    return list(stop)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[Text],
    k: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    chat_template: str = "auto",
    stop: list[str] | tuple[str, ...] = (),
    chat_template_kwargs: dict | None = None,
) -> Generation:
    """Sample ``k`` completions for each prompt (``temperature=0``: greedy, and ``k`` identical copies).

    ``stop`` (e.g. ``["\\n\\n", "Question:"]``): a sample also ends, ``finished``, as soon as its decoded
    completion contains one of these strings. Its ``token_ids`` end with the token that completed the
    stop string (so training scores exactly what was sampled, no EOS appended); its text excludes the
    stop string and anything after it. Other samples are exactly those drawn without ``stop``. The
    check decodes each running sample's completion after every new token (special tokens skipped), so a
    stop string may span several tokens; a batch ends early once every sample has stopped.

    Sampling is pure ancestral sampling from ``softmax(logits / temperature)`` restricted to the top-p
    nucleus (no top-k, no repetition penalty), so at ``temperature=1, top_p=1`` the samples are exact
    draws from the model — what unbiased KL and reward estimates need. ``batch_size`` prompts are
    generated together (left-padded); the torch RNG is seeded with ``seed`` inside a forked RNG
    state, so results depend only on the arguments and the global RNG is left untouched.
    """
    from transformers import GenerationConfig

    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    stop = check_stop(stop)
    eos, pad = eos_and_pad(model, tokenizer)
    greedy = temperature == 0
    gen_config = GenerationConfig(
        do_sample=not greedy, max_new_tokens=max_new_tokens, num_return_sequences=1 if greedy else k,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None,
        **({} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}),
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list = []
    try:
        with seeded(device, seed):
            for start in range(0, len(prompts), batch_size):
                chunk = [prompt_ids(tokenizer, p, chat_template, chat_template_kwargs)
                         for p in prompts[start:start + batch_size]]
                input_ids, mask = left_pad(chunk, pad)
                width = input_ids.shape[1]
                criterion = _StopStrings(tokenizer, stop, width, eos) if stop else None
                out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gen_config,
                                     **({"stopping_criteria": [criterion]} if criterion else {}))
                cuts = criterion.cut if criterion else {}
                got = split_samples(out[:, width:].tolist(), eos, cuts, tokenizer, stop)
                rows += [row for row in got for _ in range(k)] if greedy else got
    finally:
        model.train(was_training)
    return grouped(prompts, rows, k)


def grouped(prompts: list[Text], rows: list, k: int) -> Generation:
    """`split_samples`' rows (``k`` per prompt, in prompt order) as a `Generation`."""
    per = [rows[b * k:(b + 1) * k] for b in range(len(prompts))]
    return Generation(prompts=list(prompts), texts=[[r[1] for r in m] for m in per],
                      token_ids=[[r[0] for r in m] for m in per],
                      finished=[[r[2] is not None or r[3] is not None for r in m] for m in per],
                      stop_ids=[[r[2] for r in m] for m in per], stop_strings=[[r[3] for r in m] for m in per])


def sample(
    model,
    tokenizer,
    prompts: list[Text],
    k: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[str]]:
    """``k`` sampled completions (text, without EOS) per prompt: ``out[b][j]``. See `generate`."""
    return generate(model, tokenizer, prompts, k, max_new_tokens, temperature, top_p, seed, batch_size).texts


def generate_conditioned(
    model,
    tokenizer,
    prompts: list[Text],
    weights: list[float],
    template: str | None = None,
    digits: int = 2,
    **kwargs,
) -> Generation:
    """`generate` from a model trained with the ``condition_weights`` transform, at the trade-off
    ``weights`` (a point of the simplex, one entry per objective): each prompt is conditioned exactly as
    in training (`alignkit.data.conditioned_prompt`, same ``template`` and ``digits``). ``kwargs`` go to
    `generate`; the returned ``prompts`` are the conditioned ones."""
    conditioned = [conditioned_prompt(p, list(weights), template or WEIGHTS_TEMPLATE, digits) for p in prompts]
    return generate(model, tokenizer, conditioned, **kwargs)
