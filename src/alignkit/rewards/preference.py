"""Pairwise preference functions ``P(a ≻ b | x)`` and the rewards self-play methods build from them.

A preference is a `Preference`: ``pref(prompts, firsts, seconds, rows) -> list[float]``, the
probability that ``firsts[i]`` is preferred to ``seconds[i]`` as an answer to ``prompts[i]``, and
``pref.matrix(prompts, groups, rows) -> Tensor [B, K, K]`` with ``M[b, i, j] = P(y_bi ≻ y_bj)`` over the
K completions of each prompt. `build_preference` makes one from a spec::

    rm:PATH            a trained reward model: Bradley–Terry σ(r_a − r_b); a GPM reward model (trained with
                       objective=gpm, read from alignkit_reward.json) gives σ(s(a, b)) with its skew-symmetric
                       score (objectives.reward_structured.gpm_score)
    bt:REWARD_SPEC     Bradley–Terry over any pointwise reward of rewards/functions.build_reward
                       (rule:..., module:function, rm:PATH), σ(r_a − r_b)
    llm:PATH           a local causal LM judge (rewards/judges.LLMJudge, template ``judge_template``), asked in
                       both orders; ``judge:PATH`` is the same
    module:function    a Python preference f(a, b), f(prompt, a, b), f(prompt, a, b, row) or the batched
                       f(prompts, firsts, seconds, rows) (named so), returning P(a ≻ b)

**Skew-symmetry.** Every matrix is made skew-symmetric, ``M ← (M + 1 − Mᵀ) / 2`` with ½ on the diagonal,
so ``P(a ≻ b) + P(b ≻ a) = 1`` exactly. For a pairwise judge this is the order-averaged soft verdict
``(p_ab + 1 − p_ba) / 2`` (position bias cancels); Bradley–Terry and GPM are skew-symmetric already
(unchanged); a Python preference is evaluated on all K(K − 1) ordered pairs and symmetrised likewise.
Pointwise preferences (BT, GPM) score each completion once (K model calls per prompt, not K²).

**Win rates** (`win_rates`): ``w_i = (1/(K − 1)) Σ_{j≠i} M[i, j]`` — a sample's mean probability of beating
the policy's other samples of the same prompt, an unbiased estimate of ``P(y_i ≻ π | x)`` (SPPO). For a
skew-symmetric M the group's win rates average exactly ½ (Σ_{i≠j} M_ij = K(K − 1)/2). A group of one
sample has no opponent and gets ½.

The reward ``winrate:PREF_SPEC`` is `WinRateReward`; the reward ``mixture:PREF_SPEC`` (Nash-MD,
rewards/opponents.py) compares each sample with one drawn from a policy/reference mixture. Both follow the
group protocol of rewards/protocol.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.executor.reward_model import load_reward_model
from alignkit.models.load import load_tokenizer
from alignkit.objectives.reward_structured import gpm_score
from alignkit.rewards.functions import build_reward, completion_records, model_reward
from alignkit.rewards.judges import LLMJudge, load_callable
from alignkit.rewards.protocol import GroupReward, RewardOutput
from alignkit.rewards.rm_scores import model_scores, reward_info

# The self-rewarding judge's question (iterative training with reward=judge:self); replace it with
# judge_template=FILE (a text file with {prompt}, {answer_a} and {answer_b}).
SELF_JUDGE_TEMPLATE = (
    "Here is a request and two responses, A and B. Judge which response is more helpful, accurate and "
    "appropriate. Reply with one letter, A or B.\n\n"
    "Request: {prompt}\n\n"
    "Response A: {answer_a}\n\n"
    "Response B: {answer_b}\n\n"
    "Better response:"
)


# ---------------------------------------------------------------- pure pieces
def bradley_terry(r_a: Tensor, r_b: Tensor) -> Tensor:
    """``P(a ≻ b) = σ(r_a − r_b)``, elementwise."""
    return torch.sigmoid(r_a - r_b)


def skew_symmetrize(m: Tensor) -> Tensor:
    """``(M + 1 − Mᵀ) / 2`` over the last two dimensions, ½ on the diagonal: then ``M + Mᵀ = 1``."""
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"a preference matrix must be [..., K, K], got shape {tuple(m.shape)}")
    out = (m + 1 - m.transpose(-1, -2)) / 2
    eye = torch.eye(m.shape[-1], dtype=torch.bool, device=m.device)
    return torch.where(eye, torch.full_like(out, 0.5), out)


def win_rates(m: Tensor) -> Tensor:
    """``w_i = (1/(K − 1)) Σ_{j≠i} M[..., i, j]`` ``[..., K]``; K = 1 gives ½ (no opponent)."""
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"a preference matrix must be [..., K, K], got shape {tuple(m.shape)}")
    k = m.shape[-1]
    if k == 1:
        return torch.full(m.shape[:-1], 0.5, dtype=m.dtype, device=m.device)
    eye = torch.eye(k, dtype=torch.bool, device=m.device)
    return torch.where(eye, torch.zeros_like(m), m).sum(-1) / (k - 1)


# ---------------------------------------------------------------- preferences
class Preference:
    """``P(first ≻ second | prompt)``; subclasses implement `__call__` (pairwise) or `embed` + `compare`."""

    name = "preference"

    def __call__(self, prompts: Sequence, firsts: Sequence[str], seconds: Sequence[str],
                 rows: Sequence[dict] | None = None) -> list[float]:
        raise NotImplementedError

    def pair(self, prompts, firsts, seconds, rows=None) -> list[float]:
        """Skew-symmetrised ``(P(a ≻ b) + 1 − P(b ≻ a)) / 2`` (both orders asked)."""
        rows = list(rows) if rows is not None else [{} for _ in prompts]
        ab, ba = self(prompts, firsts, seconds, rows), self(prompts, seconds, firsts, rows)
        return [(x + 1 - y) / 2 for x, y in zip(ab, ba)]

    def matrix(self, prompts: Sequence, groups: Sequence[Sequence[str]], rows: Sequence[dict] | None = None) -> Tensor:
        """``[B, K, K]`` skew-symmetric preferences among each prompt's K completions (all ordered pairs)."""
        k = _same_k(groups)
        rows = list(rows) if rows is not None else [{} for _ in prompts]
        idx = [(b, i, j) for b in range(len(groups)) for i in range(k) for j in range(k) if i != j]
        m = torch.full((len(groups), k, k), 0.5, dtype=torch.float64)
        if idx:
            p = self([prompts[b] for b, _, _ in idx], [groups[b][i] for b, i, _ in idx],
                     [groups[b][j] for b, _, j in idx], [rows[b] for b, _, _ in idx])
            _check_probs(p, self.name)
            for (b, i, j), v in zip(idx, p):
                m[b, i, j] = v
        return skew_symmetrize(m)


class PointwisePreference(Preference):
    """A preference through per-completion embeddings: ``P(a ≻ b) = compare(embed(a), embed(b))``."""

    def __init__(self, embed: Callable, compare: Callable[[Tensor, Tensor], Tensor], name: str):
        self.embed, self.compare, self.name = embed, compare, name

    def _embed(self, prompts, completions, rows) -> Tensor:
        e = torch.as_tensor(self.embed(list(prompts), list(completions), list(rows)), dtype=torch.float64)
        return e[:, None] if e.dim() == 1 else e

    def __call__(self, prompts, firsts, seconds, rows=None):
        rows = list(rows) if rows is not None else [{} for _ in prompts]
        e = self._embed(list(prompts) * 2, list(firsts) + list(seconds), rows * 2)
        return self.compare(e[: len(firsts)], e[len(firsts):]).tolist()

    def pair(self, prompts, firsts, seconds, rows=None):
        return self(prompts, firsts, seconds, rows)  # skew-symmetric already

    def matrix(self, prompts, groups, rows=None):
        k = _same_k(groups)
        rows = list(rows) if rows is not None else [{} for _ in prompts]
        e = self._embed([p for p in prompts for _ in range(k)], [y for g in groups for y in g],
                        [r for r in rows for _ in range(k)]).view(len(groups), k, -1)
        return skew_symmetrize(self.compare(e[:, :, None, :], e[:, None, :, :]))


def _bt_compare(e_a: Tensor, e_b: Tensor) -> Tensor:
    return bradley_terry(e_a[..., 0], e_b[..., 0])


def reward_preference(reward_fn: Callable, name: str = "bt") -> PointwisePreference:
    """Bradley–Terry ``σ(r_a − r_b)`` over a pointwise reward ``fn(prompts, completions, rows)``."""
    return PointwisePreference(reward_fn, _bt_compare, name)


def model_preference(path: str, device=None, batch_size: int = 32) -> PointwisePreference:
    """A trained reward model: GPM (``alignkit_reward.json`` says objective gpm) or Bradley–Terry."""

    info = reward_info(path)
    if info.get("objective") != "gpm":
        return reward_preference(model_reward(path, device, batch_size), f"bt:rm:{path}")

    hp = {k: v for k, v in info.get("hparams", {}).items() if k in ("beta", "normalize")}
    model, tokenizer = load_reward_model(path), load_tokenizer(path)
    if device is not None:
        model.to(device)

    def embed(prompts, completions, rows):
        records = completion_records(prompts, completions)
        return [s[0] for s in model_scores(model, tokenizer, records, batch_size, progress=False)]

    return PointwisePreference(embed, lambda a, b: torch.sigmoid(gpm_score(a, b, **hp)), f"gpm:{path}")


class JudgePreference(Preference):
    """A pairwise `alignkit.rewards.judges.LLMJudge`: ``P(first ≻ second)`` read from its next-token verdict."""

    def __init__(self, judge, name: str | None = None):
        self.judge, self.name = judge, name or judge.name

    def __call__(self, prompts, firsts, seconds, rows=None):
        return self.judge.prefer_first(list(prompts), list(firsts), list(seconds))


class FunctionPreference(Preference):
    """A Python preference (see the module docstring for the signatures it may have)."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        params = list(inspect.signature(fn).parameters)
        self.batched, self.arity = params[:1] == ["prompts"], len(params)
        if not self.batched and self.arity < 2:
            raise ConfigError(f"preference {name}: a function of (a, b), (prompt, a, b) or (prompt, a, b, row) "
                             f"is needed, got parameters {params}")

    def __call__(self, prompts, firsts, seconds, rows=None):
        rows = list(rows) if rows is not None else [{} for _ in prompts]
        if self.batched:
            return [float(x) for x in self.fn(list(prompts), list(firsts), list(seconds), rows)]
        args = {2: lambda p, a, b, r: (a, b), 3: lambda p, a, b, r: (p, a, b)}.get(self.arity, lambda *x: x)
        return [float(self.fn(*args(p, a, b, r))) for p, a, b, r in zip(prompts, firsts, seconds, rows)]


def read_template(template: str | None) -> str:
    """A judge template: None → `SELF_JUDGE_TEMPLATE`; text containing ``{prompt}`` → itself; else a file path."""
    if template is None:
        return SELF_JUDGE_TEMPLATE
    if "{prompt}" in template:
        return template
    path = Path(template)
    if not path.is_file():
        raise ConfigError(f"judge_template {template!r} is neither a template (with {{prompt}}, {{answer_a}}, "
                         "{answer_b}) nor an existing file")
    return path.read_text(encoding="utf-8")


def build_preference(spec, tokenizer=None, device=None, judge_template: str | None = None) -> Preference:
    """A `Preference` from a spec (module docstring), a `Preference` (returned as is) or a callable."""
    if isinstance(spec, Preference):
        return spec
    if callable(spec):
        return FunctionPreference(spec, getattr(spec, "__name__", "fn"))
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"preference spec {spec!r}: write rm:PATH, bt:REWARD_SPEC, llm:PATH or module:function")
    kind, _, rest = spec.partition(":")
    if kind == "rm":
        return model_preference(rest, device)
    if kind == "bt":

        return reward_preference(build_reward(rest, tokenizer, device), spec)
    if kind in ("llm", "judge"):

        judge = LLMJudge(rest, template=read_template(judge_template))
        if device is not None:
            judge.model.to(device)
        return JudgePreference(judge)

    return FunctionPreference(load_callable(spec, "preference"), spec)


# ---------------------------------------------------------------- the win-rate reward
class WinRateReward(GroupReward):
    """Reward ``winrate:PREF_SPEC``: each completion's win rate against the other K − 1 completions of its
    prompt (`win_rates`), over the groups it is given (the reward protocol, `alignkit.rewards.protocol`).
    Groups of one completion (the online trainer's ``eval/reward``) have no opponent and score ½: judge
    held-out quality with ``eval_judge`` instead."""

    def __init__(self, preference: Preference):
        self.preference = preference

    def matrices(self, prompts, groups, rows) -> dict[int, tuple[list[int], Tensor]]:
        """``{K: (prompt indices, [B_K, K, K] preferences)}``, one batched call per group size."""
        by_k: dict[int, list[int]] = {}
        for b, g in enumerate(groups):
            by_k.setdefault(len(g), []).append(b)
        return {k: (idx, self.preference.matrix([prompts[b] for b in idx], [list(groups[b]) for b in idx],
                                                [rows[b] for b in idx])) for k, idx in by_k.items()}

    def __call__(self, prompts, groups, rows, models=None) -> RewardOutput:
        rewards: list[list[float]] = [[] for _ in groups]
        for idx, m in self.matrices(prompts, groups, rows).values():
            for b, w in zip(idx, win_rates(m).tolist()):
                rewards[b] = [float(v) for v in w]
        return RewardOutput(rewards)


def _same_k(groups: Sequence[Sequence]) -> int:
    ks = {len(g) for g in groups}
    if len(ks) > 1:
        raise ValueError(f"every prompt needs the same number of completions here, got {sorted(ks)}")
    return ks.pop() if ks else 0


def _check_probs(p: Sequence[float], name: str) -> None:
    bad = [x for x in p if not 0.0 <= x <= 1.0]
    if bad:
        raise ConfigError(f"preference {name} returned {bad[0]!r}; a preference is a probability in [0, 1]")
