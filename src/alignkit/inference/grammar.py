"""``grammar``: grammar-constrained decoding (GCD) and grammar-aligned decoding with ASAp (Park et al. 2024,
"Grammar-Aligned Decoding", https://arxiv.org/abs/2405.21047).

The grammar is a regular expression (``regex``, syntax of the ``regex`` package, a transformers dependency)
over the completion text: the language L is the set of texts it *fully* matches. The prefix automaton is
``regex``'s partial matching: a text u is *viable* when ``fullmatch(pattern, u, partial=True)``
succeeds, i.e. some extension of u is in L. Or it is a context-free grammar (``lark``, Lark's EBNF; an
incremental LALR parser decides viability and membership: `alignkit.inference.cfg`, needs the optional
package ``lark``). After a generated prefix with text u the allowed next tokens are

* every non-special token whose decoded piece s is non-empty and makes ``u + s`` viable (pieces are
  each token decoded on its own, so a grammar over text that tokens split inside a multi-byte character
  cannot be matched: keep to grammars whose characters are whole tokens' text, e.g. ASCII; pieces concatenate
  to the decoded text for byte-level BPE tokenizers — GPT-2 / Qwen / Llama-3 style — but not for a
  SentencePiece tokenizer that drops a token's leading space when it is decoded alone);
* the model's stop tokens (`alignkit.generation.eos_ids`) when u itself is in L.

After ``max_new_tokens`` tokens only a stop token is allowed. The target is the LM conditioned on the
language, over token sequences: ``P(y | x, y ∈ L) ∝ Π_t p_t(y_t)`` for stop-terminated y with text in L
and at most ``max_new_tokens`` tokens before the stop, where ``p_t = softmax(logits / T)`` (top-p cut) is
the base sampler at ``settings.temperature``. A text with several tokenisations gets their summed mass.

* ``mode=gcd`` — sample ``q_t(v) ∝ p_t(v) · 1[v allowed]``. This is not the target: it ignores how much
  grammatical mass lies *after* each token, so it over-samples prefixes whose grammatical completions the
  model finds unlikely.
* ``mode=asap`` — Adaptive Sampling with Approximate expected futures. Every prefix w seen is a node of
  a trie holding ``p(v | w)`` for its allowed v and an estimate ``c̃(w ⊕ v)`` of the expected future
  grammaticality ``c(w') = P(the model continues w' into L | w')``. Unseen children start at 1 (GCD's
  optimistic guess: they are viable), a stop child is exactly 1. A sample draws
  ``q(v | w) ∝ p(v | w) · c̃(w ⊕ v)``; afterwards, from its last prefix back to the root, each visited
  node's estimate becomes ``c̃(w) = Σ_v p(v | w) · c̃(w ⊕ v)`` — the mass of grammatical continuations
  discovered so far. Estimates only decrease towards c (they are upper bounds) and are exact once a
  subtree is fully explored, so the sampler converges to the target (exactly, for a finite language).
  The first sample equals GCD's.

A draw that reaches a prefix with no allowed token (only possible when ``max_new_tokens`` cuts every
grammatical completion, or a string of L is not reachable by token pieces) restarts from the root; ASAp
first records that prefix's estimate as 0. ``iterations`` samples are drawn per prompt (ASAp refines its
trie between them); the last is returned and all texts are in ``extra["samples"]``.

KL estimate (``kl``): ``Σ_t KL(q_t ‖ p_t) = Σ_t (Σ_v q_t(v) log c̃(w ⊕ v) − log Z_t)`` along the returned
sample (``Z_t = Σ_v p_t(v) c̃(w ⊕ v)``): an unbiased estimate of the sequence KL from the sampler that drew
it to the base sampler (GCD: ``Σ_t −log Z_t``, the mask's lost mass). For the exact target the KL is
``−log P(L | x)``; ``extra["p_language"]`` is ASAp's current estimate c̃(root) of P(L | x) (an upper
bound; GCD: None). ``reward`` is ``reward_fn`` of the returned text when one is given (not counted).
Cost: ``calls`` = forward passes (one per new trie node, full recompute), ``tokens`` = tokens processed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import regex
import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.generation import eos_ids, prompt_ids
from alignkit.generation.decoding import check_sampling, sampling_logprobs
from alignkit.inference.base import InferenceOutput, InferenceSettings, register

MODES = ("asap", "gcd")


@dataclass
class GrammarOptions:
    regex: str = ""  # the language: texts this regular expression fully matches
    lark: str = ""  # or a context-free language: a Lark grammar (text or a .lark file), rule `start`
    mode: str = "asap"  # asap (grammar-aligned) | gcd (plain constrained decoding)
    iterations: int = 1  # samples drawn per prompt; ASAp refines between them, the last is returned


class RegexGrammar:
    """A regular language over text with its prefix test (``viable``) and membership test (``complete``)."""

    def __init__(self, pattern: str):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("grammar needs a regular expression: --set regex='(yes|no)' (regex package syntax), "
                              "or a context-free grammar: --set lark='start: \"a\" start \"b\" | \"ab\"'")
        try:
            self.pattern = regex.compile(pattern)
        except regex.error as e:
            raise ConfigError(f"grammar regex {pattern!r} does not compile: {e}") from None

    def viable(self, text: str) -> bool:
        return self.pattern.fullmatch(text, partial=True) is not None

    def complete(self, text: str) -> bool:
        return self.pattern.fullmatch(text) is not None

    def extends(self, text: str, piece: str) -> bool:
        return self.viable(text + piece)


def make_grammar(options: GrammarOptions) -> RegexGrammar:
    """The language of ``options``: exactly one of ``regex`` (`RegexGrammar`) or ``lark``
    (`alignkit.inference.cfg.CfgGrammar`, which has the same ``extends`` / ``complete`` interface)."""
    if options.regex and options.lark:
        raise ConfigError("grammar takes one language: --set regex=... or --set lark=..., not both")
    if options.lark:
        from alignkit.inference.cfg import CfgGrammar

        return CfgGrammar(options.lark)
    return RegexGrammar(options.regex)


class TokenMask:
    """Allowed next tokens after a prefix text (module docstring), memoised per text."""

    def __init__(self, tokenizer, grammar: RegexGrammar, eos: list[int]):
        special = set(tokenizer.all_special_ids) | set(eos)
        self.pieces = [(i, tokenizer.decode([i])) for i in range(len(tokenizer)) if i not in special]
        self.pieces = [(i, s) for i, s in self.pieces if s]
        self.grammar, self.eos, self.memo = grammar, eos, {}

    def allowed(self, text: str, room: bool) -> list[int]:
        key = (text, room)
        if key not in self.memo:
            ids = [i for i, s in self.pieces if self.grammar.extends(text, s)] if room else []
            self.memo[key] = ids + (list(self.eos) if self.grammar.complete(text) else [])
        return self.memo[key]


@dataclass
class Node:
    """A trie node (a generated prefix): its allowed tokens, their log p, and the children's c̃."""

    tokens: list[int]
    logp: Tensor  # [A] float64, log p_T(v | prefix) normalised over the whole vocabulary
    efg: Tensor  # [A] float64, c̃(prefix ⊕ v)
    children: dict[int, Node] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """``c̃(prefix) = Σ_v p(v) c̃(prefix ⊕ v)``."""
        return float((self.logp.exp() * self.efg).sum())


class GrammarSampler:
    """GCD / ASAp sampling of one prompt (module docstring); ``calls`` / ``tokens`` count its forward passes."""

    def __init__(self, model, tokenizer, prompt_tokens: list[int], grammar: RegexGrammar,
                 settings: InferenceSettings, asap: bool):
        self.model, self.tokenizer, self.prompt, self.s, self.asap = model, tokenizer, prompt_tokens, settings, asap
        self.eos = eos_ids(model, tokenizer)
        self.mask = TokenMask(tokenizer, grammar, self.eos)
        self.device = next(model.parameters()).device
        self.calls, self.tokens, self.restarts = 0, 0, 0
        self.root = self._node([])

    @torch.no_grad()
    def _node(self, prefix: list[int]) -> Node:
        allowed = self.mask.allowed(self.tokenizer.decode(prefix, skip_special_tokens=True),
                                    len(prefix) < self.s.max_new_tokens)
        x = torch.tensor([self.prompt + prefix], device=self.device)
        logits = self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()
        self.calls, self.tokens = self.calls + 1, self.tokens + x.shape[1]
        logq = sampling_logprobs(logits[None], self.s.temperature, self.s.top_p)[0].double().cpu()
        idx = torch.tensor(allowed, dtype=torch.long)
        return Node(allowed, logq[idx], torch.ones(len(allowed), dtype=torch.float64))

    def _update(self, path: list[tuple[Node, int]], last: float) -> None:
        """ASAp: set each visited child's c̃ from the end of ``path`` back to the root."""
        for node, j in reversed(path):
            node.efg[j] = last
            last = node.value

    def draw(self, gen: torch.Generator) -> tuple[list[int], float]:
        """One sample: ``(tokens without the stop token, Σ_t KL(q_t ‖ p_t))``; ASAp then updates the trie."""
        while True:
            node, prefix, path, kl = self.root, [], [], 0.0
            while True:
                w = node.logp.exp() * node.efg
                z = float(w.sum())
                if z <= 0:  # dead end: no allowed continuation with any mass left
                    break
                q = w / z
                j = int(torch.multinomial(q.float(), 1, generator=gen))
                kl += float((q * node.efg.clamp_min(1e-300).log()).sum()) - math.log(z)  # q = 0 where c̃ = 0
                path.append((node, j))
                tok = node.tokens[j]
                if tok in self.eos:
                    if self.asap:
                        self._update(path, 1.0)
                    return prefix, kl
                prefix = prefix + [tok]
                if tok not in node.children:
                    node.children[tok] = self._node(prefix)
                node = node.children[tok]
            self.restarts += 1
            if self.asap:
                self._update(path, 0.0)
            if (self.restarts > 1000 and not self.asap) or self.root.value <= 0:
                raise ConfigError("grammar: no grammatical completion is reachable (the language may need more than "
                                 "max_new_tokens tokens, or strings the tokenizer's pieces cannot spell)")


def grammar_samples(model, tokenizer, prompt, pattern, n: int, settings: InferenceSettings | None = None,
                    mode: str = "asap") -> tuple[list[list[int]], GrammarSampler]:
    """``n`` consecutive GCD / ASAp samples (token ids, stop token excluded) of one prompt, and the sampler.
    ``pattern``: a regular expression, or a grammar object (`RegexGrammar`, `alignkit.inference.cfg.CfgGrammar`)."""
    settings = settings or InferenceSettings()
    _check(mode, n, settings)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    try:
        sampler = GrammarSampler(model, tokenizer, prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs),
                                 RegexGrammar(pattern) if isinstance(pattern, str) else pattern, settings,
                                 mode == "asap")
        with torch.no_grad():
            return [sampler.draw(gen)[0] for _ in range(n)], sampler
    finally:
        model.train(was_training)


def _check(mode: str, iterations: int, settings: InferenceSettings) -> None:
    if mode not in MODES:
        raise ConfigError(f"grammar mode must be one of {MODES}, got {mode!r}")
    if iterations < 1:
        raise ConfigError(f"grammar iterations must be >= 1, got {iterations}")
    check_sampling(settings.temperature, settings.top_p, settings.max_new_tokens)
    if settings.temperature == 0:
        raise ConfigError("grammar samples: set temperature > 0 (GCD and ASAp draw from the model)")


@register("grammar", GrammarOptions, summary="grammar-aligned sampling (ASAp) or constrained decoding (GCD) "
          "from a regular expression or a context-free (Lark) grammar over the output")
@torch.no_grad()
def grammar(model, tokenizer, prompts, rows, settings, options: GrammarOptions, reward_fn=None, helper=None):
    """GCD / ASAp (module docstring): ``iterations`` samples per prompt from one seeded generator."""
    _check(options.mode, options.iterations, settings)
    grammar_ = make_grammar(options)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt, row in zip(prompts, rows):
            sampler = GrammarSampler(model, tokenizer, prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs),
                                     grammar_, settings, options.mode == "asap")
            draws = [sampler.draw(gen) for _ in range(options.iterations)]
            ids, kl = draws[-1]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            reward = None if reward_fn is None else float(reward_fn([prompt], [text], [row])[0])
            out.append(InferenceOutput(
                prompt=prompt, text=text, token_ids=ids, finished=True, reward=reward, calls=sampler.calls,
                tokens=sampler.tokens, kl=kl,
                extra={"p_language": sampler.root.value if sampler.asap else None, "restarts": sampler.restarts,
                       "samples": tokenizer.batch_decode([d[0] for d in draws], skip_special_tokens=True)}))
    finally:
        model.train(was_training)
    return out
