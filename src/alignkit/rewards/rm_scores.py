"""Scoring responses with one or several trained reward models (`alignkit score`, `alignkit eval-rm`).

`score_records` runs each reward model over every response of every record, in batches, through the same
executor as training (`executor/reward_model.RewardScorer`: shared-prompt packing, the reward read at the
last completion token) and returns one score per response — a float for a one-output head, a list for an
m-output head. With several models (an ensemble) the members' scalar scores are aggregated
(`alignkit.rewards.aggregate.aggregate`: mean, min, or mean − λ·std) and the spread across members is
returned as the uncertainty.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from alignkit.data.dataset import STEP_SEPARATOR, TokenizedDataset
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig
from alignkit.errors import ModelError
from alignkit.executor.logprobs import supports_packing
from alignkit.executor.reward_model import RewardScorer
from alignkit.models.hub import resolve_model
from alignkit.objectives.personal import table_weights
from alignkit.objectives.reward_structured import prm_outcome
from alignkit.rewards.aggregate import aggregate as combine


@torch.no_grad()
def model_scores(model, tokenizer, records: list[PreferenceRecord], batch_size: int = 32,
                 tokenize: TokenizeConfig | None = None, progress: bool = True, desc: str = "score") -> list[list]:
    """``out[i][k]``: the reward of response k of record i: a float (one output, or a gated model whose
    prompt gate mixes its outputs, Σ_h g_h(x) r_h(x, y)), or a list for multi-output heads."""
    from tqdm.auto import tqdm


    data = TokenizedDataset.build(records, tokenizer, tokenize or TokenizeConfig(max_length=None), "score data")
    scorer = RewardScorer(model)
    layout = "auto" if supports_packing(model) else "padded"
    device = next(model.parameters()).device
    model.eval()
    out: list[list] = []
    total = sum(r.k for r in records)
    t0 = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="resp", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = data.collate(idx, tokenizer.pad_token_id, layout, 256).to(device)
            rewards, gate = scorer(batch)
            if gate is not None:  # mixture / gated heads: the prompt gate mixes the outputs into one reward
                rewards = (rewards * gate[:, None, :]).sum(-1, keepdim=True)
            rewards = rewards.float().cpu()
            for row, i in enumerate(idx):
                vals = rewards[row, : records[i].k]
                out.append([float(v) for v in vals[:, 0]] if vals.shape[-1] == 1 else vals.tolist())
                bar.update(records[i].k)
    scorer.seconds = time.perf_counter() - t0
    return out


def reward_info(path: str) -> dict:
    """What `alignkit train` wrote about a reward model (``alignkit_reward.json``): its objective and
    hyper-parameters; ``{}`` for a reward model trained elsewhere (read as a plain scalar head)."""


    meta = Path(resolve_model(path, weights=False)) / "alignkit_reward.json"  # a Hub id: its cached snapshot
    return json.loads(meta.read_text()) if meta.is_file() else {}


@torch.no_grad()
def process_scores(model, tokenizer, records: list[PreferenceRecord], aggregate: str = "min", batch_size: int = 32,
                   tokenize: TokenizeConfig | None = None, progress: bool = True) -> list[list[float]]:
    """Outcome scores of a process reward model: each response is split into steps at the step separator,
    scored at every step's last token, and aggregated (`prm_outcome`: the weakest step, or the product)."""

    flat = []
    for r in records:
        for resp in r.responses:
            steps = [s for s in resp.split(STEP_SEPARATOR) if s.strip()] or [resp]
            flat.append(PreferenceRecord(prompt=r.prompt, system=r.system, responses=steps,
                                         labels=[True] * len(steps)))
    data = TokenizedDataset.build(flat, tokenizer, tokenize or TokenizeConfig(max_length=None), "score data",
                                  extras=("step_mask", "step_labels"))
    scorer, device = RewardScorer(model), next(model.parameters()).device
    model.eval()
    outcomes: list[float] = []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(data), batch_size), desc="score (process)", disable=not progress):
        idx = list(range(start, min(start + batch_size, len(data))))
        batch = data.collate(idx, tokenizer.pad_token_id, "padded", 256).to(device)
        logits, _ = scorer(batch)
        outcomes += prm_outcome(logits[:, 0], batch.extra["step_mask"][:, 0], aggregate).float().cpu().tolist()
    out, pos = [], 0
    for r in records:
        out.append(outcomes[pos:pos + r.k])
        pos += r.k
    return out


def score_records(models: list, tokenizer, records: list[PreferenceRecord], batch_size: int = 32,
                  aggregate: str = "mean", lam: float = 1.0, tokenize: TokenizeConfig | None = None,
                  progress: bool = True, infos: list[dict] | None = None) -> tuple[list[list], list[list] | None]:
    """(scores, uncertainty): one model gives its own scores and no uncertainty; several give the
    aggregated scalar score and the members' standard deviation for every response. ``infos`` (from
    `reward_info`) marks process reward models, scored by their aggregated step rewards."""
    infos = infos or [{} for _ in models]
    per_model = []
    for j, (m, info) in enumerate(zip(models, infos)):
        desc = f"score {j + 1}/{len(models)}" if len(models) > 1 else "score"
        if info.get("objective") == "prm":
            agg = info.get("hparams", {}).get("aggregate", "min")
            per_model.append(process_scores(m, tokenizer, records, agg, batch_size, tokenize, progress))
        else:
            per_model.append(model_scores(m, tokenizer, records, batch_size, tokenize, progress, desc=desc))
    if len(per_model) == 1:
        return per_model[0], None

    if any(isinstance(s, list) for rows in per_model for row in rows for s in row):
        raise ModelError("ensembles aggregate one-output reward models; these have vector outputs")
    flat = torch.tensor([[s for row in rows for s in row] for rows in per_model], dtype=torch.float64)
    score, spread = combine(flat, mode=aggregate, lam=lam)
    scores, unc, pos = [], [], 0
    for r in records:
        scores.append([float(x) for x in score[pos:pos + r.k]])
        unc.append([float(x) for x in spread[pos:pos + r.k]])
        pos += r.k
    return scores, unc


def personal_scores(scores: list[list], records: list[PreferenceRecord], info: dict
                    ) -> tuple[list[list], set[str], int]:
    """A personalised model's scores (``pal``: K prototype rewards per response, and a table of user weights in
    its ``info``) as each record's user's reward ``Σ_k w_uk·r_k`` (the objective's reward). Returns (scores,
    the users the model never saw, how many records have no user): both scored with the population mixture.
    Any other model's scores come back as they are."""
    table = info.get("users")
    if not table:
        return scores, set(), 0
    out, unseen, anonymous = [], set(), 0
    for record, row in zip(records, scores, strict=True):
        name = record.meta.get("user")
        w, known = table_weights(table, name)
        if not known and name is not None:
            unseen.add(name)
        anonymous += name is None
        out.append([float(sum(a * b for a, b in zip(w, s, strict=True))) if isinstance(s, list) else s for s in row])
    return out, unseen, anonymous


def scored_record(record: PreferenceRecord, scores: list, uncertainty: list | None = None) -> dict[str, Any]:
    """The record with ``scores`` replacing its labels (the old labels move to ``meta``), ready for the
    ``pairs`` transform and DPO."""
    meta = dict(record.meta)
    kind = record.label_kind
    if kind != "scores" or "original_scores" in meta:
        meta[f"original_{kind}"] = getattr(record, kind)
    else:
        meta["original_scores"] = record.scores
    if uncertainty is not None:
        meta["score_std"] = uncertainty
    out = dataclasses.replace(record, ranks=None, labels=None, scores=scores, meta=meta)
    return out.to_dict()


def expand_members(paths: list[str]) -> list[str]:
    """Reward-model paths with every ensemble folder replaced by its members."""
    out = []
    for p in paths:
        manifest = Path(p) / "ensemble.json"
        out.extend(json.loads(manifest.read_text())["members"] if manifest.is_file() else [p])
    return out
