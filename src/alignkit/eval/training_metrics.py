"""Generation-based metrics for evaluation during training (``eval_every``): one call, a flat dict of floats.

`generation_metrics` samples from the policy and the reference on the same prompts, judges both, and
returns the mean judge score of each, the policy's win rate over the reference (Wilson interval) and
KL(π ‖ π_ref) from the policy's samples (k1, k3 with 95% CIs) — ready to be logged like any other metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from alignkit.data.prompts import read_prompt_rows
from alignkit.data.schema import Text
from alignkit.engine.score import score_logps
from alignkit.eval.kl import kl_estimates, mean_ci
from alignkit.eval.rm_report import wilson_interval
from alignkit.eval.winrate import outcomes
from alignkit.generation import generate
from alignkit.models.load import load_model
from alignkit.rewards.judges import Judge, make_judge
from alignkit.user_code import collect, record


def generation_metrics(policy, reference, tokenizer, prompts: Sequence[Text], judge: str | Judge | Callable | None,
                       samples: int = 2, seed: int = 0, *, max_new_tokens: int = 64, batch_size: int = 32
                       ) -> dict[str, float]:
    """Sample ``samples`` answers per prompt from ``policy`` (and ``reference``), judge them, estimate the KL.

    Args:
        policy, reference: causal LMs sharing ``tokenizer`` (``reference`` may be None: no KL, no win rate).
        prompts: the held-out prompts (strings or chats).
        judge: a `Judge`, a judge spec (``rule:module:function``, ``reward_model:PATH``, ``llm:PATH``), a callable
            ``score(completion)``, or None (no reward, no win rate). Build a model judge once (`make_judge`)
            and pass the `Judge`: a spec string loads the model on every call.
        seed: the sampling seed (fix it across steps so every evaluation sees comparable samples).

    Returns:
        Floats: ``reward``, ``reward_ci`` (policy's mean judge score, pointwise judges), ``ref_reward``;
        ``win_rate``, ``win_rate_low``, ``win_rate_high`` (policy over reference, ties ½, Wilson 95%; for a
        pairwise judge also ``judge_consistency``); ``kl_k1``, ``kl_k1_ci``, ``kl_k3``, ``kl_k3_ci``;
        ``mean_tokens``, ``unfinished`` (share cut at ``max_new_tokens``). Keys that do not apply are absent.
        Policy and reference train/eval modes are restored.
    """
    prompts = list(prompts)
    j = make_judge(judge) if judge is not None else None
    gen = dict(k=samples, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    pol = generate(policy, tokenizer, prompts, **gen)
    flat_p = [p for p, row in zip(prompts, pol.texts) for _ in row]
    flat_a = [c for row in pol.texts for c in row]
    out: dict[str, float] = {
        "mean_tokens": sum(len(ids) for row in pol.token_ids for ids in row) / len(flat_a),
        "unfinished": pol.num_unfinished / len(flat_a),
    }
    ref = generate(reference, tokenizer, prompts, **gen) if reference is not None else None
    if j is not None and j.pointwise:
        scores = j.score(flat_p, flat_a)
        out["reward"], out["reward_ci"] = mean_ci(scores)
    if ref is not None:
        flat_b = [c for row in ref.texts for c in row]
        if j is not None:
            if j.pointwise:
                ref_scores = j.score(flat_p, flat_b)
                out["ref_reward"] = mean_ci(ref_scores)[0]

                ys = outcomes(scores, ref_scores)
            else:
                comp = j.compare(flat_p, flat_a, flat_b)
                ys = comp.outcomes
                out["judge_consistency"] = comp.position_bias["consistency"]
            rate = sum(ys) / len(ys)
            out["win_rate"] = rate
            out["win_rate_low"], out["win_rate_high"] = wilson_interval(rate * len(ys), len(ys))
        lp = score_logps(policy, tokenizer, prompts, pol.texts, pol.finished, batch_size=batch_size)
        lr = score_logps(reference, tokenizer, prompts, pol.texts, pol.finished, batch_size=batch_size)
        kl = kl_estimates(lp, lr)
        out.update({f"kl_{k}": float(kl[k]) for k in ("k1", "k1_ci", "k3", "k3_ci")})
    return {k: float(v) for k, v in out.items()}


def metrics_summary(metrics: dict[str, Any]) -> str:
    """A one-line console summary of `generation_metrics`' output."""
    parts = []
    if "reward" in metrics:
        parts.append(f"reward {metrics['reward']:.3f} ± {metrics['reward_ci']:.3f}")
    if "win_rate" in metrics:
        parts.append(f"win rate {metrics['win_rate']:.3f} [{metrics['win_rate_low']:.3f}, {metrics['win_rate_high']:.3f}]")
    if "kl_k1" in metrics:
        parts.append(f"KL k1 {metrics['kl_k1']:.3f} ± {metrics['kl_k1_ci']:.3f}")
    return ", ".join(parts) or "no judge and no reference"


class TrainingEvaluator:
    """``eval_prompts=FILE eval_judge=SPEC`` in a training config: `generation_metrics` on those prompts,
    with the judge and the reference (``ref_model``, else the starting ``model``) loaded once, on first use."""

    def __init__(self, config, tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.prompts = [r["prompt"] for r in read_prompt_rows(config.eval_prompts)]
        with collect() as code:
            self.judge = make_judge(config.eval_judge) if config.eval_judge else None
        record(config.output_dir, code)  # <output_dir>/code.json: which file the judge came from
        self.reference = None

    def __call__(self, policy) -> dict[str, float]:
        c = self.config
        if self.reference is None:
            self.reference = load_model(c.ref_model or c.model, dtype=c.dtype).to(next(policy.parameters()).device)
        out = generation_metrics(policy, self.reference, self.tokenizer, self.prompts, self.judge,
                                 samples=c.eval_samples, seed=c.seed, max_new_tokens=c.max_new_tokens)
        return {f"eval/gen/{k}": v for k, v in out.items()}
