"""Quality- and diversity-aware selection for `alignkit data select`: Deita and MIG.

**Deita** (Liu et al. 2024, "What makes good data for alignment?", https://arxiv.org/abs/2312.15685). Each
record gets a *complexity* score c (of its instruction) and a *quality* score q (of its response) from scorer
language models: the scorer reads a fixed prompt ending in ``##Complexity:`` / ``##Quality:`` and the score
is the expected value ``Σ_{i=1..6} i · softmax(logits of the tokens "1".."6")_i`` of its next-token
distribution (`digit_expectation`). Deita's released scorers are ``hkust-nlp/deita-complexity-scorer`` and
``hkust-nlp/deita-quality-scorer`` (``--scorer`` / ``--quality-scorer``; any causal LM folder runs, but only
scorers trained on these prompts give meaningful numbers). The record's score is ``c · q``; records whose meta
already holds ``complexity`` and ``quality`` (scored elsewhere) use those and need no scorer. Selection is
Deita's *score-first, diversity-aware* pass (`diverse_order`): in decreasing score, a record is kept unless
its embedding's cosine similarity to one already kept is ≥ the threshold (Deita: 0.9); embeddings are the
mean of the last hidden states of ``--embedder`` (default: the complexity scorer) over the record's text.
For a preference record the instruction is its prompt and the response its best-ranked one (the chosen).

**MIG** (Chen et al. 2025, "MIG: automatic data selection for instruction tuning by maximizing information
gain in semantic space", https://arxiv.org/abs/2504.13835). Each record carries labels (``meta.tags``, e.g.
InsTag's) and a quality s (``meta[quality_key]``, default 1). A record is the vector ``v = s · l / |l|`` over the
label set (``l`` its 0/1 label indicator), propagated over a label graph ``v P`` (``P`` = the graph's weighted
adjacency ``W`` with off-diagonal weights times ``prop_weight``, columns normalised; ``W`` = cosine similarities
of the labels' ``--embedder`` embeddings where ≥ ``label_threshold``, else the identity: no graph). The
information of a selection S is ``E(S) = Σ_j Φ(Σ_{x∈S} (v_x P)_j)`` with the concave ``Φ(m) = (m + a)^b``
(b = 0.8, a = 1e-6); records are added greedily by the largest exact gain ``E(S ∪ {x}) − E(S)``
(`mig_order`; the paper's sampler ranks by the first-order gain ``(v_x P) · Φ'(m)``). A label seen often
gains less each time, so the selection spreads over the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignkit.data.schema import PreferenceRecord
from alignkit.data.tools.common import plain, prompt_text
from alignkit.errors import ConfigError, DataError
from alignkit.models.load import load_model, load_tokenizer

COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                     "\n##Query: {instruction}  \n##Complexity: ")
QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                  "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
DIGITS = ("1", "2", "3", "4", "5", "6")


def digit_expectation(digit_logits: Tensor) -> Tensor:
    """``Σ_i i · softmax(digit_logits)_i`` over the last dimension (6 logits, for the scores 1..6)."""
    values = torch.arange(1, digit_logits.shape[-1] + 1, dtype=torch.float64)
    return (torch.softmax(digit_logits.double(), -1) * values).sum(-1)


def load_scorer(spec) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a model folder or Hub id, or ``spec`` itself if already a pair."""
    if isinstance(spec, tuple):
        return spec
    return load_model(spec).eval(), load_tokenizer(spec)


def digit_ids(tokenizer) -> list[int]:
    """Token ids of "1".."6" (each must be one token)."""
    ids = [tokenizer.encode(d, add_special_tokens=False) for d in DIGITS]
    if any(len(i) != 1 for i in ids):
        raise ConfigError(f"the scorer's tokenizer splits a digit 1-6 into several tokens ({ids}): not a Deita scorer")
    return [i[0] for i in ids]


@torch.no_grad()
def llm_scores(model, tokenizer, texts: Sequence[str]) -> list[float]:
    """`digit_expectation` of the next token after each text (scored one at a time, no padding)."""
    ids, device, out = digit_ids(tokenizer), next(model.parameters()).device, []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt").input_ids.to(device)
        out.append(float(digit_expectation(model(input_ids=enc).logits[0, -1, ids].cpu())))
    return out


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], max_length: int = 512) -> Tensor:
    """Unit-norm mean of the last hidden states over each text's tokens, ``[N, H]``."""
    device, rows = next(model.parameters()).device, []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids.to(device)
        hidden = model(input_ids=enc, output_hidden_states=True).hidden_states[-1][0].float().mean(0)
        rows.append(torch.nn.functional.normalize(hidden, dim=0).cpu())
    return torch.stack(rows)


def diverse_order(scores: Sequence[float], embeddings: Tensor | None, threshold: float, keep: int) -> list[int]:
    """Indices in Deita's selection order: by decreasing score (ties: earlier first), skipping a record whose
    cosine similarity to a kept one is ≥ ``threshold`` until ``keep`` are kept; the skipped ones follow, by score.
    ``embeddings`` (unit rows) may be None when ``threshold`` >= 1 (no filter)."""
    by_score = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if threshold >= 1 or embeddings is None:
        return by_score
    kept: list[int] = []
    for i in by_score:
        if len(kept) == keep:
            break
        if not kept or float((embeddings[kept] @ embeddings[i]).max()) < threshold:
            kept.append(i)
    chosen = set(kept)
    return kept + [i for i in by_score if i not in chosen]


def _instruction_output(r: PreferenceRecord) -> tuple[str, str]:
    best = min(range(r.k), key=lambda k: r.ranks[k]) if r.ranks else \
        max(range(r.k), key=lambda k: r.scores[k]) if r.scores and not isinstance(r.scores[0], list) else 0
    return prompt_text(r), plain(r.responses[best])


def deita_scores(records: list[PreferenceRecord], scorer=None, quality_scorer=None) -> tuple[list[float], str]:
    """(``complexity · quality`` per record, where the two came from): meta values if every record has both."""
    if all(r.meta.get("complexity") is not None and r.meta.get("quality") is not None for r in records):
        return [float(r.meta["complexity"]) * float(r.meta["quality"]) for r in records], "meta complexity × quality"
    if scorer is None:
        raise ConfigError("select: method deita needs --scorer MODEL (a Deita complexity scorer), or records whose "
                          "meta has complexity and quality")
    pairs = [_instruction_output(r) for r in records]
    c_model, c_tok = load_scorer(scorer)
    q_model, q_tok = load_scorer(quality_scorer) if quality_scorer is not None else (c_model, c_tok)
    c = llm_scores(c_model, c_tok, [COMPLEXITY_PROMPT.format(instruction=i) for i, _ in pairs])
    q = llm_scores(q_model, q_tok, [QUALITY_PROMPT.format(instruction=i, output=o) for i, o in pairs])
    for r, ci, qi in zip(records, c, q):
        r.meta.update(complexity=round(ci, 6), quality=round(qi, 6))
    return [ci * qi for ci, qi in zip(c, q)], "scorer models"


def propagation(w: Tensor, prop_weight: float = 1.0) -> Tensor:
    """MIG's propagation matrix: ``W`` with off-diagonal entries times ``prop_weight``, columns summing to 1."""
    eye = torch.eye(w.shape[0], dtype=torch.float64)
    p = w.double() * eye + w.double() * (1 - eye) * prop_weight
    return p / p.sum(0, keepdim=True)


def mig_order(vectors: Tensor, p: Tensor, keep: int, b: float = 0.8, a: float = 1e-6) -> tuple[list[int], list[float]]:
    """Greedy information gain: (indices in selection order — the first ``keep`` picked greedily, the rest by their
    gain after that — and each index's gain when picked or at the end). ``vectors`` ``[N, L]``, ``p`` ``[L, L]``."""
    if not 0 < b <= 1:
        raise ConfigError(f"select: the MIG exponent must be in (0, 1], got {b}")
    v = vectors.double() @ p.double()
    mass = torch.zeros(v.shape[1], dtype=torch.float64)
    left = list(range(v.shape[0]))
    order, gains = [], [0.0] * v.shape[0]

    def gain() -> Tensor:
        return ((mass + v[left] + a) ** b - (mass + a) ** b).sum(-1)

    while left and len(order) < keep:
        g = gain()
        j = int(torch.argmax(g))  # the first maximum: ties keep the earlier record
        i = left.pop(j)
        order.append(i)
        gains[i] = float(g[j])
        mass += v[i]
    if left:
        g = gain().tolist()
        for i, gi in zip(left, g):
            gains[i] = gi
        order += [i for _, i in sorted(zip((-x for x in g), left))]
    return order, gains


def label_vectors(records: list[PreferenceRecord], tags_key: str, quality_key: str | None) -> tuple[Tensor, list[str]]:
    """``[N, L]`` rows ``s · l / |l|`` and the sorted label names, from each record's ``meta[tags_key]``."""
    tags = []
    for n, r in enumerate(records):
        t = r.meta.get(tags_key)
        if not isinstance(t, list) or not t or not all(isinstance(x, str) for x in t):
            raise DataError(f"{r.origin or f'record {n}'}: meta field '{tags_key}' must be a non-empty list of labels "
                            "(e.g. InsTag tags) for method mig")
        tags.append(sorted(set(t)))
    names = sorted({x for t in tags for x in t})
    index = {x: j for j, x in enumerate(names)}
    out = torch.zeros(len(records), len(names), dtype=torch.float64)
    for n, (r, t) in enumerate(zip(records, tags)):
        s = float(r.meta[quality_key]) if quality_key and r.meta.get(quality_key) is not None else 1.0
        for x in t:
            out[n, index[x]] = s / len(t)
    return out, names


def label_graph(names: list[str], embedder, threshold: float) -> Tensor:
    """``W``: cosine similarities of the labels' embeddings where ≥ ``threshold`` (diagonal 1), or the identity."""
    if embedder is None:
        return torch.eye(len(names), dtype=torch.float64)
    e = embed(*load_scorer(embedder), names).double()
    w = e @ e.T
    w = torch.where(w >= threshold, w, torch.zeros_like(w))
    w.fill_diagonal_(1.0)
    return w
