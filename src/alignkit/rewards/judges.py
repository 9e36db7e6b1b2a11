"""Judges: who decides which of two answers is better.

* `RuleJudge` — a Python function returning a score (e.g. the demo world's known reward
  ``alignkit.worlds.reviews:reward``); higher wins.
* `RewardModelJudge` — a trained reward model (`alignkit.executor.reward_model.load_reward_model`, scored by
  `alignkit.rewards.rm_scores.model_scores`); higher wins.
* `LLMJudge` — a local causal LM asked a pairwise question (`DEFAULT_TEMPLATE`). The verdict is read from
  the next-token distribution: ``P(first better) = P("A") / (P("A") + P("B"))``, each label's probability
  summed over its spellings (``"A"`` and ``" A"``). Deterministic: nothing is sampled.

Pointwise judges (rule, reward model) score every answer once; a comparison is then free. A pairwise
judge is asked every comparison **in both orders** (`Comparison`): with ``p_ab = P(A better | A shown
first)`` and ``p_ba = P(B better | B shown first)`` the verdict for A in each order is ``v_ab = [p_ab > ½]``
and ``v_ba = [p_ba < ½]`` (½ on exact ties), and the outcome used everywhere is their average — a judge
that always picks the first position says ``v_ab = 1, v_ba = 0`` and gets ½: a tie, not a win.
`position_bias` reports the consistency rate (``v_ab == v_ba``) and the first-position win rate.

With ``portia`` set, a pairwise judge re-asks the comparisons whose verdict flips with the order, both
answers split into aligned parts and interleaved (`alignkit.rewards.portia`); the comparison keeps the plain
verdicts in ``p_ab`` / ``p_ba`` (for the position-bias figures) and PORTIA's in ``extra["portia"]``, and
its outcomes are PORTIA's.

`make_judge` builds one from a command-line spec: ``rule:module:function``, ``reward_model:PATH`` (or
``rm:PATH``) or ``llm:PATH``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from alignkit.data.schema import Text
from alignkit.errors import ConfigError, ModelError
from alignkit.executor.reward_model import load_reward_model
from alignkit.generation import completion_record, prompt_ids
from alignkit.models.load import load_model, load_tokenizer
from alignkit.rewards.portia import correct, merge
from alignkit.rewards.rm_scores import model_scores
from alignkit.user_code import load_function

Values = Tensor | Sequence[float]

DEFAULT_TEMPLATE = (
    "Here is a question and two answers, A and B. Which answer is better? Reply with one letter, A or B.\n\n"
    "Question: {prompt}\n\n"
    "Answer A: {answer_a}\n\n"
    "Answer B: {answer_b}\n\n"
    "Better answer:"
)
PORTIA_TEMPLATE = (
    "Here is a question and two answers, A and B, each cut into parts shown side by side. Which answer is better? "
    "Reply with one letter, A or B.\n\n"
    "Question: {prompt}\n\n"
    "{answers}\n\n"
    "Better answer:"
)


def score_vector(x: Values, name: str) -> Tensor:
    """``x`` as a flat float64 CPU tensor; a non-finite value is a ValueError naming ``name``."""
    t = (x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)).detach().double().flatten().cpu()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values; every comparison needs a finite {name}")
    return t


def outcomes(scores_a: Values, scores_b: Values) -> list[float]:
    """Outcome of each comparison of two scored answers: 1 where A scores higher, ½ on a tie, else 0."""
    a, b = score_vector(scores_a, "scores_a"), score_vector(scores_b, "scores_b")
    if a.numel() != b.numel():
        raise ValueError(f"scores_a has {a.numel()} values but scores_b has {b.numel()}; give one each per comparison")
    return ((a > b).double() + 0.5 * (a == b).double()).tolist()


def plain(text: Text) -> str:
    """A prompt or answer as plain text (a chat's message contents joined with newlines)."""
    return text if isinstance(text, str) else "\n".join(f"{m['role']}: {m['content']}" for m in text)


def verdict(p_first: float) -> float:
    """1 if the first-shown answer is preferred (``p > ½``), ½ on an exact tie, else 0."""
    return 1.0 if p_first > 0.5 else 0.5 if p_first == 0.5 else 0.0


@dataclass
class Comparison:
    """Comparisons of A with B. ``outcomes[i]`` ∈ {1, ½, 0} from A's side (order-averaged for a pairwise judge).

    ``scores_a`` / ``scores_b``: a pointwise judge's scores; ``p_ab`` / ``p_ba``: a pairwise judge's
    ``P(first shown is better)`` with A first and with B first."""

    outcomes: list[float]
    scores_a: list[float] | None = None
    scores_b: list[float] | None = None
    p_ab: list[float] | None = None
    p_ba: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def position_bias(self) -> dict[str, Any] | None:
        return None if self.p_ab is None else position_bias(self.p_ab, self.p_ba)


def order_averaged(p_ab: Sequence[float], p_ba: Sequence[float]) -> list[float]:
    """Outcomes for A from both orders: ``(v_ab + v_ba) / 2`` with ``v_ab = verdict(p_ab)``, ``v_ba = 1 − verdict(p_ba)``."""
    if len(p_ab) != len(p_ba):
        raise ValueError(f"{len(p_ab)} verdicts with A first but {len(p_ba)} with B first; ask both orders of each pair")
    return [(verdict(a) + 1.0 - verdict(b)) / 2 for a, b in zip(p_ab, p_ba)]


def position_bias(p_ab: Sequence[float], p_ba: Sequence[float]) -> dict[str, Any]:
    """Consistency and position preference of a pairwise judge asked each comparison in both orders.

    Returns ``{"n", "consistency"`` (share of comparisons whose winner does not depend on the order),
    ``"first_position_win_rate"`` (share of all 2n verdicts won by the answer shown first; ½ = unbiased),
    ``"win_rate_a_first"``, ``"win_rate_a_second"`` (A's win rate in each order), ``"order_averaged_win_rate"``,
    ``"mean_p_a"`` (A's soft probability of winning, ``(p_ab + 1 − p_ba) / 2``, averaged)}.
    """
    v_ab = [verdict(p) for p in p_ab]
    v_ba = [1.0 - verdict(p) for p in p_ba]
    n = len(v_ab)
    if n == 0 or n != len(v_ba):
        raise ValueError(f"position_bias needs the same number (> 0) of verdicts in each order, got {n} and {len(v_ba)}")
    first = [verdict(p) for p in list(p_ab) + list(p_ba)]
    avg = order_averaged(p_ab, p_ba)
    return {"n": n, "consistency": sum(a == b for a, b in zip(v_ab, v_ba)) / n,
            "first_position_win_rate": sum(first) / (2 * n), "win_rate_a_first": sum(v_ab) / n,
            "win_rate_a_second": sum(v_ba) / n, "order_averaged_win_rate": sum(avg) / n,
            "mean_p_a": sum((a + 1 - b) / 2 for a, b in zip(p_ab, p_ba)) / n}


class Judge:
    """A judge. Pointwise judges implement `score`; pairwise judges `prefer_first`. ``calls`` counts the
    judge's work: answers scored (pointwise) or prompts read (pairwise, two per comparison)."""

    name = "judge"
    pointwise = True
    portia = False  # pairwise judges: re-ask order-dependent comparisons split and merged (PORTIA)
    portia_parts = 3

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompts: Sequence[Text], completions: Sequence[str]) -> list[float]:
        """One score per (prompt, completion); higher is better."""
        raise NotImplementedError(f"{type(self).__name__} is a pairwise judge: it has no score of one answer")

    def prefer_first(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """``P(first answer is better)`` for each prompt."""
        raise NotImplementedError(f"{type(self).__name__} is a pointwise judge: compare scores instead")

    def prefer_first_parts(self, prompts: Sequence[Text], parts_first: Sequence[Sequence[str]],
                           parts_second: Sequence[Sequence[str]]) -> list[float]:
        """``P(first answer is better)`` with both answers cut into parts and interleaved (PORTIA)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read answers split into parts (PORTIA)")

    def compare(self, prompts: Sequence[Text], a: Sequence[str], b: Sequence[str]) -> Comparison:
        """Compare answers ``a[i]`` and ``b[i]`` to ``prompts[i]`` (both orders for a pairwise judge)."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"compare needs one answer of each per prompt: {len(prompts)}, {len(a)}, {len(b)}")
        if self.pointwise:
            sa, sb = self.score(prompts, a), self.score(prompts, b)
            return Comparison(outcomes(sa, sb), scores_a=sa, scores_b=sb)
        p_ab = self.prefer_first(prompts, a, b)
        p_ba = self.prefer_first(prompts, b, a)
        if not self.portia:
            return Comparison(order_averaged(p_ab, p_ba), p_ab=p_ab, p_ba=p_ba)

        fixed = correct(self, prompts, a, b, p_ab, p_ba, parts=self.portia_parts)
        return Comparison(order_averaged(fixed["p_ab"], fixed["p_ba"]), p_ab=p_ab, p_ba=p_ba, extra={"portia": fixed})


def load_callable(spec: str, role: str = "judge") -> Callable:
    """``module:function`` (or ``module.function``) → the function (`alignkit.user_code.load_function`: the
    current directory first, standard-library modules refused, the resolved file logged)."""
    return load_function(spec, role)


class RuleJudge(Judge):
    """A rule: ``fn(completion)`` or, for a function of two or more arguments, ``fn(prompt, completion)``."""

    def __init__(self, fn: Callable | str, name: str | None = None) -> None:
        super().__init__()
        self.fn = load_callable(fn) if isinstance(fn, str) else fn
        self.name = name or f"rule:{fn if isinstance(fn, str) else getattr(fn, '__name__', 'fn')}"
        try:
            params = [p for p in inspect.signature(self.fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
            self.with_prompt = len(params) >= 2
        except (TypeError, ValueError):  # builtins without a signature: one argument
            self.with_prompt = False

    def score(self, prompts, completions):
        self.calls += len(completions)
        out = [float(self.fn(p, c) if self.with_prompt else self.fn(c)) for p, c in zip(prompts, completions)]
        return out


class RewardModelJudge(Judge):
    """A reward model (a path, or ``(model, tokenizer)``); one-output heads only."""

    def __init__(self, model: str | tuple, batch_size: int = 32, dtype: str = "float32", name: str | None = None):
        super().__init__()
        if isinstance(model, str):
            self.name = name or f"reward_model:{model}"
            self.tokenizer = load_tokenizer(model)
            self.model = load_reward_model(model, dtype=dtype)
        else:
            self.model, self.tokenizer = model
            self.name = name or "reward_model"
        self.batch_size = batch_size

    def score(self, prompts, completions):
        records = [completion_record(p, [c]) for p, c in zip(prompts, completions)]
        rows = model_scores(self.model, self.tokenizer, records, self.batch_size, progress=False)
        if rows and isinstance(rows[0][0], list):
            raise ModelError(f"{self.name} has {len(rows[0][0])} outputs; a judge needs a one-output reward model")
        self.calls += len(completions)
        return [float(r[0]) for r in rows]


class LLMJudge(Judge):
    """A causal LM asked ``template`` (with ``{prompt}``, ``{answer_a}``, ``{answer_b}``); see the module docstring.

    ``chat_template``: ``"auto"`` wraps the question as a user turn when the tokenizer has a chat template;
    ``"always"`` / ``"never"`` force it. ``portia``: re-ask order-dependent comparisons with the answers
    cut into ``portia_parts`` aligned parts, interleaved into ``portia_template`` (``{prompt}``, ``{answers}``).
    """

    pointwise = False

    def __init__(self, model: str | tuple, template: str = DEFAULT_TEMPLATE, labels: tuple[str, str] = ("A", "B"),
                 chat_template: str = "auto", batch_size: int = 16, dtype: str = "float32", name: str | None = None,
                 portia: bool = False, portia_parts: int = 3, portia_template: str = PORTIA_TEMPLATE):
        super().__init__()
        for key in ("{prompt}", "{answers}"):
            if key not in portia_template:
                raise ValueError(f"the PORTIA template has no {key}; it needs {{prompt}} and {{answers}}")
        self.portia, self.portia_parts, self.portia_template = portia, portia_parts, portia_template
        if isinstance(model, str):
            self.name = name or f"llm:{model}"
            self.tokenizer, self.model = load_tokenizer(model), load_model(model, dtype=dtype)
        else:
            self.model, self.tokenizer = model
            self.name = name or "llm"
        for key in ("{prompt}", "{answer_a}", "{answer_b}"):
            if key not in template:
                raise ConfigError(f"the judge template has no {key}; it needs {{prompt}}, {{answer_a}} and {{answer_b}}")
        self.template, self.batch_size = template, batch_size
        if chat_template == "auto":
            chat_template = "always" if getattr(self.tokenizer, "chat_template", None) else "never"
        self.chat_template = chat_template
        self.labels = tuple(labels)
        self.label_ids = [self._variants(label) for label in labels]
        if set(self.label_ids[0]) & set(self.label_ids[1]):
            raise ConfigError(f"labels {labels} are the same token in this tokenizer; choose labels that differ")

    def _variants(self, label: str) -> list[int]:
        """Token ids of the label's one-token spellings (``"A"``, ``" A"``)."""
        encoded = [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in (label, " " + label)]
        ids = sorted({e[0] for e in encoded if len(e) == 1})
        if not ids:
            raise ConfigError(f"label {label!r} is not one token in this tokenizer (with or without a leading space); "
                             "choose one-token labels")
        return ids

    def question(self, prompt: Text, first: str, second: str) -> str:
        return self.template.format(prompt=plain(prompt), answer_a=first, answer_b=second)

    def prefer_first(self, prompts, firsts, seconds):
        return self._p_first([self.question(p, f, s) for p, f, s in zip(prompts, firsts, seconds)])

    def prefer_first_parts(self, prompts, parts_first, parts_second):
        return self._p_first([self.portia_template.format(prompt=plain(p), answers=merge(f, s, self.labels))
                              for p, f, s in zip(prompts, parts_first, parts_second)])

    @torch.no_grad()
    def _p_first(self, questions: list[str]) -> list[float]:
        """``P(first label) / (P(first) + P(second))`` at the next token after each question."""
        ids = [prompt_ids(self.tokenizer, q, self.chat_template) for q in questions]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        too_long = [i for i, x in enumerate(ids) if limit and len(x) > limit]
        if too_long:
            raise ConfigError(f"judge question {too_long[0]} has {len(ids[too_long[0]])} tokens, more than the judge's "
                             f"{limit}; shorten the template or use --max-new-tokens to keep answers shorter")
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        try:
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start:start + self.batch_size]
                width = max(len(x) for x in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(input_ids)
                for i, x in enumerate(chunk):
                    input_ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                last = logits[torch.arange(len(chunk)), torch.tensor([len(x) - 1 for x in chunk])].float()
                logp = last.log_softmax(-1).cpu()
                la = torch.logsumexp(logp[:, self.label_ids[0]], -1)
                lb = torch.logsumexp(logp[:, self.label_ids[1]], -1)
                out += torch.sigmoid(la - lb).tolist()
        finally:
            self.model.train(was_training)
        self.calls += len(ids)
        return out


def make_judge(spec: str | Judge | Callable, *, template: str | None = None, batch_size: int = 32,
               dtype: str = "float32") -> Judge:
    """A judge from ``rule:module:function``, ``reward_model:PATH`` / ``rm:PATH``, ``llm:PATH``, a `Judge`
    (returned as is) or a plain callable (a rule)."""
    if isinstance(spec, Judge):
        return spec
    if callable(spec):
        return RuleJudge(spec)
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ConfigError(f"judge {spec!r}: write rule:module:function, reward_model:PATH or llm:PATH")
    if kind == "rule":
        return RuleJudge(rest)
    if kind in ("reward_model", "rm"):
        return RewardModelJudge(rest, batch_size=batch_size, dtype=dtype)
    if kind == "llm":
        return LLMJudge(rest, template=template or DEFAULT_TEMPLATE, batch_size=batch_size, dtype=dtype)
    raise ConfigError(f"judge {spec!r}: unknown kind {kind!r}; use rule, reward_model (rm) or llm")
