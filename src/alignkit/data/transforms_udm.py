"""`udm`: BCO's underlying distribution matching as a record transform (density-ratio weights on unpaired data).

The estimator and its formula: `alignkit.objectives.density_ratio`. Rules and options: ``docs/data_transforms.md``.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from typing import Any

import torch

from alignkit.data.schema import PreferenceRecord, Text
from alignkit.data.transforms_common import TransformError, derive, number, report, require, transform, where
from alignkit.objectives.density_ratio import clipped_ratio, fit_density_ratio

WORD = re.compile(r"\w+")


def prompt_text(prompt: Text) -> str:
    """A prompt as one string: a chat's message contents joined by newlines."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def ngram_features(texts: list[str], dims: int) -> torch.Tensor:
    """[N, dims] hashed word uni- and bigram features: ``log(1 + count)`` per bucket (CRC32 of the n-gram,
    stable across runs and processes), each row scaled to unit length."""
    out = torch.zeros(len(texts), dims, dtype=torch.float64)
    for i, text in enumerate(texts):
        words = WORD.findall(text.lower())
        grams = Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])])
        for g, c in grams.items():
            out[i, zlib.crc32(g.encode()) % dims] += c
    out = out.log1p()
    return out / out.norm(dim=1, keepdim=True).clamp(min=1e-12)


def embedding_features(records: list[PreferenceRecord], field: str) -> torch.Tensor:
    """[N, D] from each record's ``meta[field]`` (a list of numbers of one length, e.g. a prompt embedding)."""
    rows = []
    for i, rec in enumerate(records):
        v = rec.meta.get(field)
        ok = isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not ok or not all(math.isfinite(x) for x in v):
            raise TransformError(f"udm: {where(i, rec)} has no usable meta['{field}'] (a list of finite numbers, "
                                 f"the prompt's embedding); got {str(v)[:40]}")
        if rows and len(v) != len(rows[0]):
            raise TransformError(f"udm: {where(i, rec)} has an embedding of length {len(v)}, record 0's has "
                                 f"{len(rows[0])}")
        rows.append(v)
    return torch.tensor(rows, dtype=torch.float64)


@transform
def udm(records: list[PreferenceRecord], *, embedding: str | None = None, dims: int = 1024, l2: float = 1e-3,
        min_ratio: float = 0.5, max_ratio: float = 10.0, sample_size: int = 4096,
        seed: int = 0) -> tuple[list[PreferenceRecord], dict[str, Any]]:  # fmt: skip
    """BCO's underlying distribution matching (https://arxiv.org/abs/2404.04656): each undesirable record's
    ``weight`` is multiplied by ``r(x) = p_D(x)/p_U(x)``, clipped to ``[min_ratio, max_ratio]``.

    The ratio comes from a class-balanced logistic classifier of desirable vs undesirable prompts
    (`alignkit.objectives.density_ratio.fit_density_ratio`), fitted on up to ``sample_size`` records of
    each class (a seeded sample) and applied to every undesirable record. Prompt features: hashed word
    uni/bigrams in ``dims`` buckets, or, with ``embedding``, the vector in each record's ``meta[embedding]``
    (e.g. a sentence-embedding column). Takes unpaired records (``labels``, K = 1; after ``to_unpaired``).
    Desirable records are unchanged; undesirable ones get ``meta["udm_ratio"]``. Nothing is dropped.
    Report: ``desirable``, ``undesirable``, ``classifier_accuracy`` (balanced, on the fitting sample),
    ``mean_ratio`` (undesirable records, after clipping), ``clipped_low``, ``clipped_high``.
    """
    number("udm", "dims", dims, low=1, integer=True)
    number("udm", "l2", l2, low=0.0)
    number("udm", "min_ratio", min_ratio, low=0.0)
    number("udm", "max_ratio", max_ratio, low=min_ratio, strict=True)
    number("udm", "sample_size", sample_size, low=1, integer=True)
    if embedding is not None and not isinstance(embedding, str):
        raise TransformError(f"udm: embedding must be the name of a meta field holding prompt vectors, got "
                             f"{embedding!r}")
    for i, rec in enumerate(records):
        require("udm", i, rec, ("labels",), "unpaired records (labels)", " (split pairs first: to_unpaired)")
        if rec.k != 1:
            raise TransformError(f"udm needs one response per record; {where(i, rec)} has K = {rec.k}")
    good = [i for i, r in enumerate(records) if r.labels[0]]
    bad = [i for i, r in enumerate(records) if not r.labels[0]]
    if not good or not bad:
        raise TransformError(f"udm needs desirable and undesirable records; got {len(good)} desirable and "
                             f"{len(bad)} undesirable")
    x = (embedding_features(records, embedding) if embedding is not None
         else ngram_features([prompt_text(r.prompt) for r in records], dims))
    rng = random.Random(seed)
    fit_good = sorted(rng.sample(good, min(len(good), sample_size)))
    fit_bad = sorted(rng.sample(bad, min(len(bad), sample_size)))
    model = fit_density_ratio(x[fit_good], x[fit_bad], l2=l2)
    accuracy = ((model.log_ratio(x[fit_good]) > 0).double().mean() + (model.log_ratio(x[fit_bad]) < 0).double().mean()) / 2
    raw = model.log_ratio(x[bad])
    ratio = clipped_ratio(raw, min_ratio, max_ratio).tolist()
    out = list(records)
    for i, r in zip(bad, ratio):
        out[i] = derive(records[i], {"udm_ratio": r}, weight=records[i].weight * r)
    return out, report("udm", len(records), out, desirable=len(good), undesirable=len(bad),
                       classifier_accuracy=round(float(accuracy), 4), mean_ratio=round(sum(ratio) / len(ratio), 4),
                       clipped_low=int((raw.exp() < min_ratio).sum()), clipped_high=int((raw.exp() > max_ratio).sum()))
