"""Personalised (pluralistic) reward models: one reward per user, mixed from K shared prototype rewards.

Records name who labelled them in a ``user`` column (``meta.user``, a string); the collator carries it as
``extra['user']`` [B], a stable 63-bit id of the string (:func:`user_id`, −1 for a record without one), so
the same user gets the same id in every batch, process and run.

``pal`` (PAL-B, Chen et al. 2024, https://arxiv.org/abs/2406.08469) trains a reward head of K outputs,
the prototype rewards ``r_k(x, y)``, and one weight vector per user ``w_u = softmax(z_u)`` on the simplex;
user u's reward is ``r_u(x, y) = Σ_k w_uk·r_k(x, y)`` (PAL's ideal-point model with the user's point a convex
combination of K prototypes). The user logits z are objective state (saved in checkpoints, and as a table in
the final model's ``alignkit_reward.json``), updated by a plain gradient step of their own learning rate on
every batch; the head learns with the model's optimiser. A user with no pairs (unseen) gets the population
mixture, the pair-count-weighted mean of the learned ``w_u`` (:func:`user_weights`).
"""

from __future__ import annotations

import copy
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.objectives.common import pair_metrics
from alignkit.objectives.registry import register
from alignkit.objectives.reward import PAIR, check_count, masked_rewards, reward_output, reward_pair
from alignkit.objectives.stats import LossOutput, SequenceStats

NO_USER = -1


def user_id(name: str) -> int:
    """The stable id of a user name: the first 63 bits of its sha256 (>= 0; a collision needs ~3e9 users)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") >> 1


def user_ids(names: list[str | None]) -> Tensor:
    """[B] int64 ids of ``names``; ``NO_USER`` (−1) for None."""
    return torch.tensor([NO_USER if n is None else user_id(n) for n in names], dtype=torch.long)


def user_weights(state: dict, users: Tensor, num_heads: int) -> Tensor:
    """``w`` [B, K]: each user's softmax weights from ``state``; unseen users (and ``NO_USER``) get the
    population mixture ``Σ_u n_u·w_u / Σ_u n_u`` (n_u: pairs seen of u; equal n_u before any is counted),
    uniform when the state holds no user."""
    known = state.get("users")
    out = torch.full((users.shape[0], num_heads), 1.0 / num_heads)
    if known is None or known.numel() == 0:
        return out
    w = torch.softmax(state["logits"], dim=-1)
    n = state["counts"].to(w.dtype)
    n = n if bool(n.sum() > 0) else torch.ones_like(n)  # before any pair is counted: the plain mean
    out[:] = (n[:, None] * w).sum(0) / n.sum()
    hit = users[:, None].cpu() == known[None, :]
    found = hit.any(1)
    out[found] = w[hit[found].float().argmax(1)]
    return out


def _rows(state: dict, users: Tensor, num_heads: int, init_std: float) -> Tensor:
    """Row of each user of ``users`` [B] in the state's table, adding new users (logits ~ N(0, init_std²),
    seeded by the user id so runs repeat); −1 for ``NO_USER``."""
    users = users.cpu()
    known = state.setdefault("users", torch.zeros(0, dtype=torch.long))
    state.setdefault("logits", torch.zeros(0, num_heads))
    state.setdefault("counts", torch.zeros(0))
    if state["logits"].shape[1] != num_heads:
        raise ConfigError(f"pal: the saved user weights have {state['logits'].shape[1]} prototypes, "
                          f"num_heads is {num_heads}")
    new = [u for u in dict.fromkeys(users.tolist()) if u != NO_USER and not bool((known == u).any())]
    if new:
        init = torch.stack([torch.randn(num_heads, generator=torch.Generator().manual_seed(u % 2**62)) for u in new])
        state["users"] = torch.cat([known, torch.tensor(new, dtype=torch.long)])
        state["logits"] = torch.cat([state["logits"], init_std * init])  # the same in every process and run
        state["counts"] = torch.cat([state["counts"], torch.zeros(len(new))])
    hit = users[:, None] == state["users"][None, :]
    return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(users, -1))


def merge_user_states(before: dict, after: list[dict], num_heads: int = 2, init_std: float = 3.0,
                      **_hparams) -> dict:
    """pal's ``merge_state``: processes that each stepped the user logits on their share of one batch, all from
    ``before``, merged into the state one process reaches on the whole batch: the users any of them added (at
    their seeded initial logits, as :func:`_rows` adds them) and the sum of every process's logit steps and pair
    counts. (Each step is computed from the weights before the batch, so the sum is the one-process step.)"""
    merged = copy.deepcopy(before)
    for state in after:
        if not state.get("users", torch.zeros(0)).numel():
            continue
        start = copy.deepcopy(before)  # where this process started, with its new users at their initial logits
        rows_start = _rows(start, state["users"], num_heads, init_std)
        rows = _rows(merged, state["users"], num_heads, init_std)
        merged["logits"] = merged["logits"].index_add(0, rows, state["logits"] - start["logits"][rows_start])
        merged["counts"] = merged["counts"].index_add(0, rows, state["counts"] - start["counts"][rows_start])
    return merged


MIXES = ("reward", "likelihood")


def pal_logit_grad(w: Tensor, d: Tensor, mix: str = "reward") -> Tensor:
    """∂ℓ/∂z of one pair's loss (:func:`personal_log_prob`) in the user logits, ``w = softmax(z)``, [B, K]:
    ``reward``: ``−(1 − σ(s))·w ⊙ (d − ⟨w, d⟩)`` with ``s = ⟨w, d⟩``; ``likelihood``: ``w − γ`` with the
    posterior ``γ_k = w_k σ(d_k) / Σ_j w_j σ(d_j)``. ``d`` [B, K]: each prototype's reward gap r_k(w) − r_k(l)."""
    if mix == "likelihood":
        return w - torch.softmax(torch.log(w) + F.logsigmoid(d), dim=-1)
    g = -(1 - torch.sigmoid((w * d).sum(-1)))[:, None] * d
    return w * (g - (w * g).sum(-1, keepdim=True))


def personal_log_prob(w: Tensor, d: Tensor, mix: str = "reward") -> Tensor:
    """log P_u(w ≻ l) [B] from the user weights ``w`` [B, K] and prototype gaps ``d`` [B, K]:
    ``reward`` (PAL-B) ``logσ(Σ_k w_k d_k)``; ``likelihood`` (MiCRo) ``log Σ_k w_k σ(d_k)``."""
    if mix == "likelihood":
        return torch.logsumexp(torch.log(w) + F.logsigmoid(d), dim=-1)
    return F.logsigmoid((w * d).sum(-1))


@register("pal", extras=("user",), stateful=True, reward_outputs="num_heads", merge_state=merge_user_states, **PAIR)
def pal(stats: SequenceStats, state: dict, num_heads: int = 2, mix: str = "reward", user_lr: float = 10.0,
        init_std: float = 3.0, update: bool = True) -> LossOutput:
    """Personalised reward model: K prototype rewards mixed by per-user weights, PAL (Chen et al. 2024,
    "PAL: Pluralistic alignment framework", https://arxiv.org/abs/2406.08469).

    ``rewards`` [B, 2, K] hold the K = ``num_heads`` prototype rewards ``r_k``, ``d_k = r_k(w) − r_k(l)``,
    and ``w_u = softmax(z_u)`` the weights of the user who labelled the pair (``extra['user']``). The loss is
    ``−log P_u(w ≻ l)`` (:func:`personal_log_prob`) with ``mix``:

    * ``reward`` — PAL-B: the user's reward is ``r_u = Σ_k w_uk·r_k`` (the user's ideal point a convex
      combination of K prototypes), ``P_u = σ(Σ_k w_uk d_k)``;
    * ``likelihood`` — a mixture of Bradley–Terry likelihoods ``P_u = Σ_k w_uk σ(d_k)`` (MiCRo's second stage,
      https://arxiv.org/abs/2505.24846, with the user's weights in place of a prompt router); the posterior
      of each prototype then steers its head, so prototypes specialise from any small initial difference.

    After the loss, the batch's users take one gradient step ``z_u ← z_u − user_lr·Σ_{pairs of u} ∂ℓ/∂z_u``
    (:func:`pal_logit_grad`; the head's gradient sees the weights before it). Pairs without a user train
    with the population mixture and move no z. One prototype is :func:`~alignkit.objectives.reward.bt`.
    Under several processes the trainer merges their tables after every micro-batch
    (:func:`merge_user_states`): every process holds the table one process would after the global batch.

    Args:
        num_heads: K ≥ 1 prototypes (the head's outputs).
        mix: ``reward`` or ``likelihood`` (above).
        user_lr: the users' step size ≥ 0 (0 freezes them at their initial weights).
        init_std: ≥ 0, the std of a new user's initial logits (drawn from the user id, so runs repeat). The
            default 3 starts each user close to one random prototype, which breaks the prototypes' symmetry:
            on the two-group review world (``worlds/plural.py``) 0.1 and 1 left both groups near 0.5
            accuracy after 48 steps, 3 reached ≥ 0.99 on both in 96.
        update: False scores without moving the state (evaluation).

    Rewards are ``Σ_k w_uk·r_k``; ``rewards/accuracy`` the fraction of pairs with P_u > ½. Also logs
    ``users`` (how many the state holds) and ``weight/head{k}`` (the mean weight of each prototype).
    """
    check_count("num_heads", num_heads, 1)
    if mix not in MIXES:
        raise ConfigError(f"pal mix must be one of {MIXES}, got {mix!r}")
    for name, v in (("user_lr", user_lr), ("init_std", init_std)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"hyper-parameter {name} must be a finite number >= 0, got {v!r}")
    users = stats.extra.get("user")
    if users is None:
        raise DataError("objective 'pal' needs a 'user' column (who labelled each pair) in the data")
    r = masked_rewards(stats, "pal", num_heads, "num_heads")
    view, v_w, v_l = reward_pair(stats, r)  # [B, K]
    rows = _rows(state, users, num_heads, init_std) if update else None
    w = user_weights(state, users, num_heads).to(r.device, r.dtype)
    d = v_w - v_l
    log_p = personal_log_prob(w, d, mix)
    if update and user_lr:
        grad = pal_logit_grad(w, d.detach(), mix).cpu().float()
        take = view.mask.cpu() & (rows >= 0)
        idx = rows[take]
        if idx.numel():
            step = torch.zeros_like(state["logits"]).index_add_(0, idx, grad[take])
            state["logits"] = state["logits"] - user_lr * step
            state["counts"] = state["counts"].index_add(0, idx, torch.ones(idx.shape[0]))
    out = reward_output(stats, view, -log_p, (w * v_w).sum(-1), (w * v_l).sum(-1))
    right = (log_p.detach() > -math.log(2)).to(r.dtype)
    out.metrics.update(pair_metrics({"rewards/accuracy": right, **{f"weight/head{k}": w[:, k]
                                                                   for k in range(num_heads)}}, view.mask))
    out.metrics["users"] = float(state["users"].numel()) if "users" in state else 0.0
    return out


def user_table(state: dict) -> dict[str, list[float]]:
    """``{str(user id): w_u}`` of a ``pal`` state, plus ``"*"``: the population mixture (for unseen users)."""
    if not state.get("users", torch.zeros(0)).numel():
        return {}
    w = torch.softmax(state["logits"], dim=-1)
    table = {str(int(u)): [float(x) for x in row] for u, row in zip(state["users"], w, strict=True)}
    table["*"] = user_weights(state, torch.tensor([NO_USER]), w.shape[1])[0].tolist()
    return table


def table_weights(table: dict[str, list[float]], name: str | None) -> tuple[list[float], bool]:
    """(w_u, whether the table knows the user) for user ``name`` from a saved :func:`user_table`: the user's
    own weights, or the population mixture ``"*"`` for a user the model never saw (or ``None``, no user)."""
    key = None if name is None else str(user_id(name))
    if key is not None and key in table:
        return table[key], True
    return table["*"], False
