"""``search``: DeAL-style reward-guided beam search with lookahead (Huang et al. 2024, "DeAL: Decoding-time
Alignment for Large Language Models", https://arxiv.org/abs/2402.06147).

Beam search over partial responses of the base model π, with candidates ranked by a heuristic reward on
top of the log-probability. Per prompt x, with K = ``beams`` running prefixes y (each carrying its
summed log-prob ``s(y) = Σ_t log π(y_t | x, y_<t)``, untempered):

    1. expand: every running y with its ``topk`` most likely next tokens v (default ``topk = 2K``);
    2. look ahead: complete y ⊕ v greedily under π for ``lookahead`` more tokens (or until a stop token),
       giving the text ``ŷ``; a candidate whose v is a stop token is scored on its own text;
    3. score: ``score(y ⊕ v) = s(y ⊕ v) + w · h(x, ŷ)`` with h = ``reward_fn`` on the completion text
       (a rule or a reward model); the 2K best candidates by score are kept, in order;
    4. of those 2K, a candidate that ended (its v is a stop token, or ``max_new_tokens`` is reached) and
       ranks in the first K becomes a finished hypothesis with final score
       ``s(y ⊕ v) / n^length_penalty + w · h`` (n = its generated tokens, the stop token included); the K
       best finished ones are kept. The K best candidates that did not end are the next running beams
       (their carried score stays ``s``: the heuristic is recomputed at every step, never accumulated);
    5. stop once K hypotheses have finished (or at ``max_new_tokens``) and return the best finished one.

With a constant heuristic (``w = 0``, no ``reward_fn``, or a reward that ignores its text) every score is
``s`` plus one constant, so the ranking, the kept beams and the returned text are exactly those of
transformers' ``generate(num_beams=K, do_sample=False, length_penalty=length_penalty,
early_stopping=True)`` (its vectorised beam search: top 2K continuations, only the top K may finish,
finished scores ``s / n^length_penalty``). Without a heuristic no lookahead is run.

Deterministic: ``settings.temperature`` / ``top_p`` / ``seed`` are not used and ``kl`` is None (the KL of
a point mass at y to π is ``−log π(y | x)``, i.e. ``−extra["logp"]``). ``reward`` is ``reward_fn`` of the
returned text (reporting only, not counted in the cost). Cost: ``calls`` = forward passes (one per beam step
over all beams, plus each lookahead's prefill and steps) + one per text the heuristic scored; ``tokens`` =
tokens those passes processed (no KV cache across beam steps: each step reprocesses the beams' full sequences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignkit.errors import ConfigError
from alignkit.generation import eos_ids, prompt_ids
from alignkit.generation.decoding import CachedLM
from alignkit.inference.base import InferenceOutput, InferenceSettings, register


@dataclass
class SearchOptions:
    beams: int = 4  # K running prefixes
    topk: int = 0  # next tokens expanded per beam (0: 2·beams, which contains every candidate beam search keeps)
    lookahead: int = 0  # greedy tokens appended before the heuristic scores a candidate
    w: float = 1.0  # heuristic weight: score = log π(y) + w · h(x, ŷ)
    length_penalty: float = 1.0  # finished score = log π(y) / n^length_penalty + w · h


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, the stop token excluded
    logp: float  # s(y), the stop token included when it ended with one
    h: float
    score: float
    stopped: bool


class Counter:
    def __init__(self):
        self.calls, self.tokens = 0, 0


def lookahead_texts(model, tokenizer, prefix: list[int], cands: list[list[int]], steps: int, eos: list[int],
                    cost: Counter) -> list[str]:
    """Each candidate's completion text after greedily extending it by ``steps`` tokens under ``model``
    (a row stops at a stop token). ``prefix``: the prompt's ids; ``cands``: generated ids, all one length."""
    if steps == 0:
        return tokenizer.batch_decode(cands, skip_special_tokens=True)
    rows = torch.tensor([prefix + c for c in cands])
    lm = CachedLM(model, rows, torch.ones_like(rows))
    logits, ext = lm.prefill(), [list(c) for c in cands]
    cost.calls, cost.tokens = cost.calls + 1, cost.tokens + rows.numel()
    live = [True] * len(cands)
    for t in range(steps):
        nxt = logits.argmax(-1).cpu()
        for i, tok in enumerate(nxt.tolist()):
            if live[i]:
                live[i] = tok not in eos
                if live[i]:
                    ext[i].append(tok)
        if not any(live) or t == steps - 1:
            break
        logits = lm.advance(nxt)
        cost.calls, cost.tokens = cost.calls + 1, cost.tokens + sum(live)
    return tokenizer.batch_decode(ext, skip_special_tokens=True)


def _heuristic(o: SearchOptions, reward_fn, prompt, row, texts: list[str], cost: Counter) -> list[float]:
    if reward_fn is None or o.w == 0:
        return [0.0] * len(texts)
    got = [float(v) for v in reward_fn([prompt] * len(texts), texts, [row] * len(texts))]
    if len(got) != len(texts) or not all(math.isfinite(v) for v in got):
        raise ConfigError(f"the reward function must return {len(texts)} finite rewards, got {got[:8]}")
    cost.calls += len(texts)
    return got


def _expand(model, ids: list[int], beams: list[tuple[list[int], float]], k: int, cost: Counter):
    """``(acc [R, k], tok [R, k])``: each beam's k best next tokens and ``s(y ⊕ v)`` (full recompute)."""
    x = torch.tensor([ids + b for b, _ in beams])
    logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, -1].float()
    cost.calls, cost.tokens = cost.calls + 1, cost.tokens + x.numel()
    base = torch.tensor([s for _, s in beams], dtype=torch.float32)[:, None]
    lp, tok = F.log_softmax(logits, -1).cpu().topk(k, dim=-1)
    return base + lp, tok


def beam_search(model, tokenizer, prompt, row, settings: InferenceSettings, o: SearchOptions, reward_fn,
                cost: Counter) -> Hypothesis:
    """The search of the module docstring for one prompt; returns the best finished hypothesis."""
    eos = eos_ids(model, tokenizer)
    ids = prompt_ids(tokenizer, prompt, settings.chat_template, settings.chat_template_kwargs)
    kk, k = o.beams, o.topk or 2 * o.beams
    guided = reward_fn is not None and o.w != 0
    running: list[tuple[list[int], float]] = [([], 0.0)]
    done: list[Hypothesis] = []
    for step in range(settings.max_new_tokens):
        last = step == settings.max_new_tokens - 1
        acc, tok = _expand(model, ids, running, min(k, model.config.vocab_size), cost)
        cands = [(float(acc[r, j]), r, int(tok[r, j])) for r in range(len(running)) for j in range(tok.shape[1])]
        seqs = [running[r][0] + ([] if t in eos else [t]) for _, r, t in cands]
        h = [0.0] * len(cands)
        if guided:
            open_ = [i for i, (_, _, t) in enumerate(cands) if t not in eos]
            ahead = lookahead_texts(model, tokenizer, ids, [seqs[i] for i in open_], 0 if last else o.lookahead,
                                    eos, cost) if open_ else []
            texts = tokenizer.batch_decode(seqs, skip_special_tokens=True)
            for i, text in zip(open_, ahead):
                texts[i] = text
            h = _heuristic(o, reward_fn, prompt, row, texts, cost)
        order = sorted(range(len(cands)), key=lambda i: -(cands[i][0] + o.w * h[i] if guided else cands[i][0]))
        top = order[:2 * kk]
        nxt = []
        for rank, i in enumerate(top):
            s, _, t = cands[i]
            ended = t in eos or last
            if ended and rank < kk:
                n = len(seqs[i]) + (t in eos)
                done.append(Hypothesis(seqs[i], s, h[i], s / n ** o.length_penalty + (o.w * h[i] if guided else 0.0),
                                       t in eos))
            elif not ended and len(nxt) < kk:
                nxt.append((seqs[i], s))
        done = sorted(done, key=lambda d: -d.score)[:kk]
        if len(done) == kk or not nxt:
            break
        running = nxt
    return done[0]


def _check(o: SearchOptions) -> None:
    if o.beams < 1 or o.topk < 0 or o.lookahead < 0:
        raise ConfigError(f"search needs beams >= 1, topk >= 0 and lookahead >= 0, got {o.beams}, {o.topk}, {o.lookahead}")
    if not (math.isfinite(o.w) and math.isfinite(o.length_penalty)):
        raise ConfigError(f"search needs finite w and length_penalty, got {o.w} and {o.length_penalty}")


@register("search", SearchOptions, summary="DeAL: beam search with lookahead, ranked by log π + w·reward")
@torch.no_grad()
def search(model, tokenizer, prompts, rows, settings, options: SearchOptions, reward_fn=None, helper=None):
    """DeAL beam search (module docstring), one prompt at a time."""
    _check(options)
    if settings.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt, row in zip(prompts, rows):
            cost = Counter()
            best = beam_search(model, tokenizer, prompt, row, settings, options, reward_fn, cost)
            text = tokenizer.decode(best.tokens, skip_special_tokens=True)
            # reporting only, not counted in the cost (as genarm, nudging, urial and grammar report theirs)
            reward = None if reward_fn is None else float(reward_fn([prompt], [text], [row])[0])
            out.append(InferenceOutput(prompt=prompt, text=text, token_ids=best.tokens, finished=best.stopped,
                                       reward=reward, calls=cost.calls, tokens=cost.tokens, kl=None,
                                       extra={"logp": best.logp, "score": best.score, "heuristic": best.h}))
    finally:
        model.train(was_training)
    return out
