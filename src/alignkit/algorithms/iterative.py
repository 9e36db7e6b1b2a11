"""Iterative preference training: iterative (online) DPO and self-rewarding language models.

    alignkit train objective=dpo model=M prompts=P.jsonl reward=SPEC rounds=3 num_samples=4

Round r = 1..N starts from π_{r−1} (π_0 = ``model``) and

1. **samples** K = ``num_samples`` completions per prompt from π_{r−1} (``temperature``, ``top_p``,
   ``max_new_tokens``, ``stop``; seeded by (seed, r));
2. **labels** them with ``reward``: any reward spec of `alignkit.rewards.build_group_reward` (``rule:...``,
   ``rm:PATH``, ``module:function``, ``winrate:PREF_SPEC``), or an LLM judge — ``judge:PATH`` a local
   model, ``judge:self`` the policy π_{r−1} itself (self-rewarding, Yuan et al. 2024,
   https://arxiv.org/abs/2401.10020; I-SHEEP-style self-enhancement, https://arxiv.org/abs/2408.08072).
   A judge compares the K samples pairwise in both orders (`alignkit.rewards.judges.LLMJudge`, template
   ``judge_template``, default `alignkit.rewards.preference.SELF_JUDGE_TEMPLATE`) and each sample's
   score is its win rate among them (deviation: the self-rewarding paper asks a pointwise 5-point
   score);
3. **builds pairs**: objectives that take K scored responses (e.g. plackett_luce) train on the scored
   lists; pair objectives (dpo, ipo, ...) get the ``pairs`` transform, best vs worst (all-tied prompts
   dropped), before any ``transforms`` of the config;
4. **trains** the offline objective with the unchanged `Trainer` (every offline option applies) from
   π_{r−1}, whose frozen copy is the reference (``ref_model`` is not used: each round's reference is the
   previous round's policy, as in iterative DPO, Xu et al. 2023, https://arxiv.org/abs/2312.16682).

With ``objective=sppo`` and a win-rate reward (``reward=winrate:PREF_SPEC`` or ``judge:...``) the rounds are
SPPO's iterations as in its paper (π_t the reference of round t + 1, scored lists of K, no pairs).

Each round writes ``output_dir/round_{r}/``: ``samples.jsonl`` (the scored records it trained on), the
run folder of the round (``metrics.jsonl``, ``final/``). ``output_dir/rounds.jsonl`` logs per round:
``reward/mean``, ``reward/std``, ``reward/best`` (mean of each prompt's best score), ``response_length``
(characters), ``records`` (prompts with ≥ 2 non-empty samples), ``seconds``. A round whose
``final/`` exists is not trained again (re-running the command resumes after the last finished round); a
round that was interrupted continues from its checkpoint with ``resume_from=latest`` (or starts over with
``overwrite=true``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from alignkit.data.prompts import read_prompt_rows
from alignkit.engine.trainer import TrainResult
from alignkit.errors import ConfigError, DataError
from alignkit.generation import generate
from alignkit.io_atomic import atomic_write_text
from alignkit.models.load import load_model, load_tokenizer
from alignkit.objectives import build_objective
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.judges import LLMJudge
from alignkit.rewards.preference import JudgePreference, WinRateReward, build_preference, read_template
from alignkit.rewards.protocol import GroupReward
from alignkit.user_code import collect, record

logger = logging.getLogger("alignkit")


def check_rounds_config(c) -> None:
    """Raise a ValueError naming what iterative training is missing."""

    if not c.model or not c.prompts or c.reward is None:
        raise ConfigError("rounds=N needs model=PATH, prompts=FILE and reward=SPEC (e.g. reward=rm:PATH, "
                         "reward=module:function, reward=judge:self)")
    if c.num_samples < 2:
        raise ConfigError(f"rounds=N compares samples: num_samples must be >= 2, got {c.num_samples}")
    objective = build_objective(c.objective, **{"beta": c.beta, **c.hparams})
    if objective.inputs != "logps":
        raise ConfigError(f"rounds=N trains an offline policy objective each round (dpo, ipo, sppo, ...); "
                         f"{objective.name} is a {objective.inputs} objective")
    if c.data:
        raise ConfigError("rounds=N makes each round's data from prompts=; remove data=")


def needs_pairs(objective_spec, beta, hparams, k: int) -> bool:
    """Whether the objective needs best-vs-worst pairs (it cannot take K scored responses)."""

    obj = build_objective(objective_spec, **{"beta": beta, **hparams})
    try:
        obj.check_data("scores", 2, k, True)
        return False
    except ValueError:
        return True


def make_labeler(spec, model, tokenizer, judge_template: str | None, device=None) -> GroupReward:
    """The reward of one round, a reward of the protocol (`alignkit.rewards.protocol`; module docstring, step 2)."""
    if isinstance(spec, str) and spec.startswith("judge:"):
        if spec.partition(":")[2] == "self":
            judge = LLMJudge((model, tokenizer), template=read_template(judge_template), name="judge:self")
            return WinRateReward(JudgePreference(judge))
        return WinRateReward(build_preference(spec, tokenizer, device, judge_template))
    return build_group_reward(spec, tokenizer, device)


def scored_records(prompts: list, texts: list[list[str]], scores: list[list[float]]) -> list[dict]:
    """Records ``{prompt, responses, scores}`` of each prompt's non-empty samples; prompts left with fewer
    than 2 are skipped (nothing to compare)."""
    out = []
    for p, ts, ss in zip(prompts, texts, scores):
        keep = [(t, s) for t, s in zip(ts, ss) if t.strip()]
        if len(keep) >= 2:
            out.append({"prompt": p, "responses": [t for t, _ in keep], "scores": [float(s) for _, s in keep]})
    return out


def round_stats(scores: list[list[float]], texts: list[list[str]]) -> dict[str, float]:
    flat = [s for row in scores for s in row]
    lengths = [len(t) for row in texts for t in row]
    return {"reward/mean": statistics.fmean(flat), "reward/std": statistics.pstdev(flat),
            "reward/best": statistics.fmean(max(row) for row in scores), "response_length": statistics.fmean(lengths)}


@torch.no_grad()
def sample_and_label(policy_path: str, rows: list[dict], c, seed: int) -> tuple[list[dict], dict[str, float]]:
    """Step 1 and 2 of a round: (scored records, round statistics)."""

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(policy_path, trust_remote_code=c.trust_remote_code)
    model = load_model(policy_path, dtype=c.dtype, attn_implementation=c.attn_implementation,
                       trust_remote_code=c.trust_remote_code).to(device)
    model.eval()
    prompts, k = [r["prompt"] for r in rows], c.num_samples
    gen = generate(model, tokenizer, prompts, k=k, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                   top_p=c.top_p, seed=seed, chat_template=c.chat_template, stop=c.stop)
    with collect() as code:
        labeler = make_labeler(c.reward, model, tokenizer, c.judge_template, device)
    record(c.output_dir, code)  # <output_dir>/code.json: which file the reward function came from
    scores = labeler(prompts, gen.texts, rows).rewards
    records = scored_records(prompts, gen.texts, scores)
    del model
    return records, {**round_stats(scores, gen.texts), "records": float(len(records))}


def round_config(c, r: int, policy: str, data: str, pairs: bool):
    """The offline `TrainConfig` of round r: from ``policy``, on ``data``, reference = ``policy``."""
    transforms = ([{"name": "pairs", "strategy": "best_vs_worst"}] if pairs else []) + list(c.transforms)
    return dataclasses.replace(
        c, mode="offline", model=policy, data=data, prompts=None, reward=None, rounds=0, eval_data=None, transforms=transforms,
        output_dir=str(Path(c.output_dir) / f"round_{r}"), ref_model=None,
        resume_from="latest" if c.resume_from == "latest" else None,  # an interrupted round continues
        ref_strategy="auto" if c.ref_strategy == "path" else c.ref_strategy)


def train_rounds(config, train_fn: Callable) -> TrainResult:
    """Run ``config.rounds`` rounds (module docstring); ``train_fn(TrainConfig) -> TrainResult`` trains one."""
    c = config
    check_rounds_config(c)
    rows = read_prompt_rows(c.prompts)
    out = Path(c.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = needs_pairs(c.objective, c.beta, c.hparams, c.num_samples)
    policy, history, result = c.model, [], None
    for r in range(1, c.rounds + 1):
        t0 = time.perf_counter()
        rc = round_config(c, r, policy, str(out / f"round_{r}" / "samples.jsonl"), pairs)
        final = Path(rc.output_dir) / "final"
        if (final / "config.json").is_file():
            logger.info("round %d/%d: %s exists, skipped", r, c.rounds, final)
            policy = str(final)
            continue
        records, stats = sample_and_label(policy, rows, c, seed=c.seed * 1_000_003 + r)
        if not records:
            raise DataError(f"round {r}: no prompt has two non-empty samples to compare; raise max_new_tokens "
                             "or num_samples")
        Path(rc.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(rc.data, "".join(json.dumps(x) + "\n" for x in records))
        logger.info("round %d/%d: %d prompts, sample reward %.4f (best %.4f); training %s from %s", r, c.rounds,
                    len(records), stats["reward/mean"], stats["reward/best"], c.objective, policy)
        result = train_fn(rc)
        history += [{"round": r, **h} for h in result.history]
        if result.interrupted:  # no final/ (final_dir None): the last finished round's policy stands
            break
        policy = str(result.final_dir)
        with (out / "rounds.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"round": r, **stats, "seconds": time.perf_counter() - t0, "policy": policy}) + "\n")
    return TrainResult(output_dir=out, final_dir=Path(policy) if policy != c.model else None, history=history,
                       interrupted=bool(result and result.interrupted),
                       skipped_steps=result.skipped_steps if result else 0)
