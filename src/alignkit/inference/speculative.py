"""Reward-guided speculative decoding (``rsd``, alias ``rps``): a cheap draft model proposes each step, a
reward decides whether to keep it or have the target model write that step instead.

RSD (Liao et al. 2025, "Reward-Guided Speculative Decoding for Efficient LLM Reasoning",
https://arxiv.org/abs/2501.19324). Notation: x the prompt, y the completion so far, P_m the draft model
(``--helper``, small or weak), P_M the target model (``--model``), r a reward of the partial completion
(a process reward in the paper; here any alignkit reward spec, scored on the text of y ⊕ z). One prompt
at a time, until a stop token or ``max_new_tokens``:

    1. the draft samples a step z ~ P_m(· | x, y): up to ``step`` tokens, ending early at a stop token
       or, with a ``delimiter`` (the paper's steps end at "\\n\\n"), after the first token whose step text
       contains it;
    2. r = reward(x, y ⊕ z);
    3. accept z with probability ω(r): the paper's optimal binary weighting ω(r) = 1[r ≥ δ]
       (``threshold`` δ, ``tau = 0``), or the smooth ω(r) = σ((r − δ)/τ) (``tau > 0``);
    4. on rejection the draft's step is discarded (its KV cache rewound) and the target samples the
       step instead, z ~ P_M(· | x, y), with the same step rule; both models then continue from y ⊕ z.

Each step is therefore drawn from the mixture (the paper's P_RSD)

    P_RSD(z | x, y) = ω(r(y ⊕ z)) · P_m(z | x, y) + ν(x, y) · P_M(z | x, y),
    ν(x, y) = 1 − E_{z' ~ P_m}[ω(r(y ⊕ z'))]  (the draft's rejection probability),

so δ = −inf is the draft model and δ = +inf the target model; in between, high-reward draft steps are
kept and the target is called only where the draft's step scores low. Samples are ancestral draws at
``settings.temperature`` / ``top_p`` (as `prefill.sample_shared`); all draws (draft tokens, acceptance
uniforms, target tokens) come from one ``torch.Generator`` seeded with ``settings.seed``, so a target
step never reuses the random numbers of the draft step it replaces. Exact limits (tested): δ = −inf
keeps every step without a uniform draw, so the target is not run and the draws are those of
``sample_shared(draft, n=1, batch_size=1)`` with the same seed — token for token the draft's samples;
δ = +inf keeps nothing, so the draft is not run and the output is token for token
``sample_shared(target)``'s.

Reward-shifted speculative sampling (SSS, Li et al. 2025, https://arxiv.org/abs/2508.15044) is the
other "reward-guided proposal" reading: an *aligned* draft and an unaligned target, with speculative
sampling's token-level acceptance and residual distribution modified so the output approximates the
RLHF optimum π_ref·exp(r/β) — no reward model at inference. It is not built here: RSD is the one that
takes a reward (alignkit's reward specs) to guide which proposals are kept, and SSS's weak-to-strong
setting is what ``interpolate`` / ``nudging`` already cover with an aligned ``--helper``.

Output: ``reward`` is the reward of the returned text (the last accepted step's score; when the target
wrote the last step, one extra reward call reports it, not counted in the cost). ``kl`` is None: the
mixture's step probabilities need the draft's acceptance mass ν, which only sampling estimates.
``extra``: ``acceptance`` (accepted draft steps / steps), ``steps``, ``accepted`` (per step, in order),
``target_calls`` (the target's forward passes: prefill, its own steps, and one pass per accepted step to
read the draft's tokens into its cache — the cost RSD saves). ``calls`` adds the draft's passes and one per
scored step; ``tokens`` both models' processed tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignkit.errors import ConfigError
from alignkit.generation import eos_and_pad, prompt_ids
from alignkit.generation.prefill import pick_token
from alignkit.inference.base import InferenceOutput, InferenceSettings, register
from alignkit.inference.blockwise import PrefixLM, per_prompt
from alignkit.inference.guided import scalar_rewards


@dataclass
class RsdOptions:
    threshold: float = 0.0  # δ: keep a draft step whose reward is >= δ (-.inf: always the draft; .inf: the target)
    step: int = 8  # tokens per step at most
    delimiter: str = ""  # a step also ends after the token that puts this string in its text ("\n\n": paper's steps)
    tau: float = 0.0  # 0: keep iff reward >= δ (the paper's binary ω); > 0: keep with probability σ((r − δ)/τ)


def acceptance_weight(reward: float, threshold: float, tau: float) -> float:
    """ω(r): ``1[r ≥ δ]`` for ``tau = 0``, else ``σ((r − δ)/τ)`` (1 at δ = −inf, 0 at δ = +inf)."""
    if tau == 0 or math.isinf(threshold):
        return float(reward >= threshold)
    return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, (reward - threshold) / tau))))


def draw_step(lm: PrefixLM, budget: int, final: bool, settings: InferenceSettings, eos: list[int],
              gen: torch.Generator, tokenizer, delimiter: str) -> tuple[list[int], bool]:
    """One step of ``lm`` (one row): ``(tokens, stopped)``, at most ``budget`` tokens, the stop token not
    included. Every drawn token is fed, so ``lm`` stands after the step, except a stop token and, when
    ``final`` (the step reaches ``max_new_tokens``), the last one — as `prefill.sample_shared` decodes."""
    out: list[int] = []
    for i in range(budget):
        tok = pick_token(lm.logits, settings.temperature, settings.top_p, gen)
        if int(tok[0]) in eos:
            return out, True
        out.append(int(tok[0]))
        if final and i == budget - 1:
            break
        lm.feed(tok[:, None], 1)
        if delimiter and delimiter in tokenizer.decode(out, skip_special_tokens=True):
            break
    return out, False


def _check(o: RsdOptions) -> None:
    if o.step < 1:
        raise ConfigError(f"rsd needs step >= 1 (tokens per step), got step={o.step}")
    if math.isnan(o.threshold) or not (o.tau >= 0 and math.isfinite(o.tau)):
        raise ConfigError(f"rsd needs a threshold (-.inf to .inf) and a finite tau >= 0, got threshold={o.threshold}, "
                          f"tau={o.tau}")


def _one_prompt(target, draft, tokenizer, prompt, row, settings: InferenceSettings, o: RsdOptions, reward_fn,
                gen: torch.Generator) -> InferenceOutput:
    eos, _ = eos_and_pad(target, tokenizer)
    ids = prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs)
    big = PrefixLM(target, ids) if o.threshold > -math.inf else None  # δ = −inf keeps every step: no target
    small = PrefixLM(draft, ids) if o.threshold < math.inf else None  # δ = +inf keeps none: no draft
    prefix: list[int] = []
    accepted: list[bool] = []
    finished, reward, scored = False, None, 0
    while not finished and len(prefix) < settings.max_new_tokens:
        budget = min(o.step, settings.max_new_tokens - len(prefix))
        final = len(prefix) + budget == settings.max_new_tokens
        keep = False
        if small is not None:
            mark = small.mark()
            z, stop = draw_step(small, budget, final, settings, eos, gen, tokenizer, o.delimiter)
            text = tokenizer.decode(prefix + z, skip_special_tokens=True)
            (reward,) = scalar_rewards(reward_fn([prompt], [text], [row]), 1)
            scored += 1
            w = acceptance_weight(reward, o.threshold, o.tau)
            keep = w == 1.0 or (w > 0.0 and float(torch.rand((), generator=gen, device=gen.device)) < w)
        if keep:
            if big is not None and z and not stop and len(prefix) + len(z) < settings.max_new_tokens:
                big.feed(torch.tensor([z]), len(z))  # the target reads the kept step (one parallel pass)
        else:
            if small is not None:
                small.rewind(mark)
            z, stop = draw_step(big, budget, final, settings, eos, gen, tokenizer, o.delimiter)
            reward = None
            if small is not None and z and not stop and len(prefix) + len(z) < settings.max_new_tokens:
                small.feed(torch.tensor([z]), len(z))
        accepted.append(keep)
        prefix, finished = prefix + z, stop
    text = tokenizer.decode(prefix, skip_special_tokens=True)
    if reward is None:  # the target wrote the last step (or nothing was scored): report the text's reward
        (reward,) = scalar_rewards(reward_fn([prompt], [text], [row]), 1)
    calls = sum(lm.calls for lm in (big, small) if lm is not None) + scored
    tokens = sum(lm.tokens for lm in (big, small) if lm is not None)
    return InferenceOutput(prompt=prompt, text=text, token_ids=prefix, finished=finished, reward=reward, calls=calls,
                           tokens=tokens, kl=None,
                           extra={"acceptance": sum(accepted) / len(accepted) if accepted else None,
                                  "steps": len(accepted), "accepted": accepted, "target_calls": big.calls if big else 0})


@register("rsd", RsdOptions, needs_reward=True, needs_helper=True,
          summary="reward-guided speculative decoding (alias rps): the draft (--helper) proposes each step, "
                  "kept if its reward >= threshold, else the target (--model) writes it")
@torch.no_grad()
def rsd(model, tokenizer, prompts, rows, settings, options: RsdOptions, reward_fn=None, helper=None):
    """RSD (module docstring): ``model`` the target, ``helper`` the draft; one prompt at a time."""
    _check(options)
    return per_prompt([model, helper], prompts, rows, settings,
                      lambda p, r, gen: _one_prompt(model, helper, tokenizer, p, r, settings, options, reward_fn, gen))
