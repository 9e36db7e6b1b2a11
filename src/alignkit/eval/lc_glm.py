"""Length-controlled win rate: AlpacaEval 2's generalised linear model (its ``length_controlled_v1``).

Dubois, Galambosi, Liang & Hashimoto, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
Evaluators" (2024, https://arxiv.org/abs/2404.04475). For system m against the baseline on instruction x:

    P(m beats the baseline on x) = σ(θ_m + φ_m·tanh(Δ_mx / sd_m) + ψ_m·γ_x)

``Δ = len(m's answer) − len(baseline's answer)``, ``sd_m`` its standard deviation over m's comparisons
(not centred, as AlpacaEval does). θ_m is the system term, φ_m the length term (tanh bounds it: a system
whose answers are all far longer or shorter cannot buy an unbounded correction), γ_x the difficulty of
instruction x and ψ_m its weight. The LC win rate is the model's win rate with the length term off,
averaged over m's comparisons: ``LC_m = mean_x σ(θ_m + ψ_m·γ_x)``. Outcomes may be soft (``P(m wins)``
in [0, 1]); the fit maximises the Bernoulli log-likelihood with those as targets.

1. **Instruction difficulty** (only when several systems share instructions): one joint fit over every
   system, ``σ(θ_k + φ·tanh(Δ/sd_k) + γ_x)`` with a unit Gaussian prior on γ (ridge ``difficulty_ridge``);
   γ is then held fixed. AlpacaEval ships γ precomputed from such a joint fit on its own systems.
2. **Regularisation** ("regularize to baseline", λ = 0.2). A system whose answers are all shorter (or
   longer) than the baseline's has ``tanh ≈ const``: its own comparisons cannot tell the length term from
   the system term. AlpacaEval adds to every system's fit the comparisons of the baseline's own verbose
   and concise variants against the baseline (no system term: they *are* the baseline), weighted λ/2 each:
   they pin (φ, ψ) to the judge's pure length effect. Pass such variants as ``anchors`` to get exactly
   that. Without them (the usual case: nobody has prompted the baseline to be verbose), alignkit pools the
   other systems instead: their comparisons enter with their own system terms θ̂_k from step 1 held
   fixed, and their weights are scaled so that the pool carries the Fisher information of AlpacaEval's
   anchors: ``λ·n_m`` comparisons at ``ANCHOR_INFO`` = 0.15 each (what one comparison of the baseline's
   verbose or concise variant with the baseline carries; a comparison with a far weaker or stronger
   system carries less). With one system alone there is nothing to pool and no difficulty term: the fit
   is the system and length terms on its own data.
3. **Interval**: percentile bootstrap over m's instructions (all comparisons of a prompt together),
   refitting θ_m, φ_m, ψ_m each time with γ and the regulariser held fixed.

AlpacaEval selects an L1 penalty by 5-fold cross-validation on top of this; alignkit does not (a 1e-6·n
ridge keeps every fit finite). docs/evaluation.md compares the two on AlpacaEval 2's public annotations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from alignkit.errors import ConfigError, DataError
from alignkit.eval.bootstrap import percentile_interval, resample_weights

LAMBDA = 0.2  # AlpacaEval's regularize_to_baseline_lambda
# Mean Fisher information q(1 − q) of one comparison in AlpacaEval's anchors (gpt4_1106_preview's verbose and concise
# variants against it, under their published weights and answer lengths: 0.186 and 0.148 without the difficulty
# term, 0.173 and 0.131 with alignkit's difficulties roughly rescaled; docs/evaluation.md): the pooled regulariser
# carries λ·n_m·ANCHOR_INFO, the information of AlpacaEval's λ·n_m anchor comparisons.
ANCHOR_INFO = 0.15
FORMULA = "P(win) = σ(θ_m + φ_m·tanh(Δlen/sd_m) + ψ_m·γ_x); LC = mean_x σ(θ_m + ψ_m·γ_x)"


def _vec(x: Any, name: str) -> Tensor:
    t = (x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)).detach().double().flatten().cpu()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values")
    return t


def _standardised(d: Tensor) -> tuple[Tensor, float]:
    """``tanh(Δ / sd(Δ))`` and sd (the uncentred scale AlpacaEval uses; 0 → all zeros)."""
    sd = float(d.std()) if d.numel() > 1 else 0.0
    return (torch.tanh(d / sd) if sd > 0 else torch.zeros_like(d)), sd


def _loglik(z: Tensor, y: Tensor, w: Tensor) -> Tensor:
    return (w * (y * z - torch.nn.functional.softplus(z))).sum(-1)


def _joint_fit(sys_id: Tensor, key_id: Tensor, t: Tensor, y: Tensor, n_sys: int, n_keys: int, ridge: float,
               iters: int = 100) -> tuple[Tensor, float, Tensor]:
    """Newton's method for ``σ(θ_k + φ·t + γ_x)``; the γ block is diagonal, solved by its Schur complement."""
    theta, phi, gamma = torch.zeros(n_sys, dtype=torch.float64), torch.zeros((), dtype=torch.float64), \
        torch.zeros(n_keys, dtype=torch.float64)
    one = torch.ones_like(y)

    def objective(th, ph, ga):
        return float(_loglik(th[sys_id] + ph * t + ga[key_id], y, one)) - 0.5 * ridge * float((ga * ga).sum())

    current = objective(theta, phi, gamma)
    for _ in range(iters):
        q = torch.sigmoid(theta[sys_id] + phi * t + gamma[key_id])
        r, w = y - q, q * (1 - q)
        g1 = torch.cat([torch.zeros(n_sys, dtype=torch.float64).index_add_(0, sys_id, r), (r * t).sum()[None]])
        g2 = torch.zeros(n_keys, dtype=torch.float64).index_add_(0, key_id, r) - ridge * gamma
        a = torch.zeros(n_sys + 1, n_sys + 1, dtype=torch.float64)
        a[:n_sys, :n_sys] = torch.diag(torch.zeros(n_sys, dtype=torch.float64).index_add_(0, sys_id, w))
        cross = torch.zeros(n_sys, dtype=torch.float64).index_add_(0, sys_id, w * t)
        a[:n_sys, n_sys], a[n_sys, :n_sys], a[n_sys, n_sys] = cross, cross, (w * t * t).sum()
        b = torch.zeros(n_sys + 1, n_keys, dtype=torch.float64)
        b.index_put_((sys_id, key_id), w, accumulate=True)
        b[n_sys].index_add_(0, key_id, w * t)
        d = torch.zeros(n_keys, dtype=torch.float64).index_add_(0, key_id, w) + ridge
        schur = a - (b / d) @ b.T + 1e-9 * torch.eye(n_sys + 1, dtype=torch.float64)
        step1 = torch.linalg.solve(schur, g1 - b @ (g2 / d))
        step2 = (g2 - b.T @ step1) / d
        scale = 1.0
        while True:  # step halving keeps every Newton step an ascent
            new = (theta + scale * step1[:n_sys], phi + scale * step1[n_sys], gamma + scale * step2)
            value = objective(*new)
            if value >= current - 1e-12 or scale < 1e-4:
                break
            scale /= 2
        theta, phi, gamma = new
        done = abs(value - current) < 1e-10 * (1 + abs(current))
        current = value
        if done:
            break
    return theta, float(phi), gamma


def _system_fit(x_own: Tensor, y_own: Tensor, w_own: Tensor, x_anc: Tensor, y_anc: Tensor, w_anc: Tensor,
                off_anc: Tensor, start: Tensor | None = None, iters: int = 100, chunk: int = 64) -> Tensor:
    """Newton for ``σ(x·β)`` on own rows (weights ``[B, n]``: one bootstrap replicate per row) plus fixed,
    offset anchor rows; returns ``β [B, p]``. A ``1e-6·n`` ridge keeps it finite under separation."""
    p = x_own.shape[1]
    outer_own = (x_own[:, :, None] * x_own[:, None, :]).reshape(-1, p * p)  # [n, p²]: Hessians by one matmul
    outer_anc = (x_anc[:, :, None] * x_anc[:, None, :]).reshape(-1, p * p)
    out = []
    for first in range(0, w_own.shape[0], chunk):
        w = w_own[first:first + chunk]
        ridge = 1e-6 * w.sum(1).clamp(min=1.0)[:, None]
        beta = (torch.zeros(p, dtype=torch.float64) if start is None else start).expand(w.shape[0], p).clone()
        for _ in range(iters):
            q = torch.sigmoid(beta @ x_own.T)  # [B, n]
            grad = (w * (y_own - q)) @ x_own - ridge * beta
            hess = (w * q * (1 - q)) @ outer_own
            if x_anc.shape[0]:
                qa = torch.sigmoid(off_anc + beta @ x_anc.T)  # [B, m]
                wq = w_anc * qa
                grad = grad + (w_anc * y_anc - wq) @ x_anc
                hess = hess + (wq - wq * qa) @ outer_anc
            hess = hess.view(-1, p, p) + ridge[:, :, None] * torch.eye(p, dtype=torch.float64)
            step = torch.linalg.solve(hess, grad)
            beta = beta + step.clamp(-5.0, 5.0)
            if float(step.abs().max()) < 1e-8:
                break
        out.append(beta)
    return torch.cat(out)


def length_controlled_glm(systems: Mapping[str, Mapping[str, Any]], *, anchors: Sequence[str] = (),
                          lam: float = LAMBDA, difficulty: bool | None = None, difficulty_ridge: float = 1.0,
                          n_boot: int = 0, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """LC win rates of several systems against one baseline (see the module docstring).

    Args:
        systems: ``{name: {"outcomes": [n] P(name beats the baseline) in [0, 1], "length_diff": [n]
            len(name's answer) − len(baseline's), "prompts": [n] instruction keys (optional: each
            comparison its own), "difficulty_prompts": [n] (optional, rarely needed) the keys whose γ this
            system's own fit uses, default its prompts}}``; the baseline itself is not one of them.
        anchors: names in ``systems`` that are the baseline's own length variants (AlpacaEval's
            regulariser); empty: pool the other systems.
        difficulty: fit the instruction term (default: when two or more systems are given).

    Returns:
        ``{"systems": {name: {"win_rate", "bootstrap" ([lo, hi] or None), "coef": {"system", "length",
        "difficulty"}, "length_diff_std", "mean_length_diff", "n", "regulariser"}}, "model": {"formula",
        "lambda", "difficulty", "instructions", "judge_length_coef", "regulariser", "n_boot"}}``.
    """
    names = list(systems)
    if not names:
        raise ValueError("length_controlled_glm needs at least one system")
    unknown = [a for a in anchors if a not in systems]
    if unknown:
        raise ConfigError(f"anchors {unknown} are not among the systems {names}")
    keys: dict[Any, int] = {}
    data = {}
    for name in names:
        s = systems[name]
        y, d = _vec(s["outcomes"], f"{name} outcomes"), _vec(s["length_diff"], f"{name} length_diff")
        if y.numel() != d.numel() or y.numel() == 0:
            raise ValueError(f"{name}: {y.numel()} outcomes and {d.numel()} length differences; give one each (> 0)")
        if float(y.min()) < 0 or float(y.max()) > 1:
            raise DataError(f"{name}: outcomes must lie in [0, 1] (P(win)), got {float(y.min())}..{float(y.max())}")
        prompts = s.get("prompts")
        prompts = list(prompts) if prompts is not None else [(name, i) for i in range(y.numel())]
        if len(prompts) != y.numel():
            raise ValueError(f"{name}: {len(prompts)} prompts for {y.numel()} comparisons; give one each")
        t, sd = _standardised(d)
        data[name] = {"y": y, "d": d, "t": t, "sd": sd, "prompts": prompts,
                      "key": torch.tensor([keys.setdefault(p, len(keys)) for p in prompts])}
    for name in names:
        lookup = systems[name].get("difficulty_prompts")
        if lookup is not None and (len(lookup) != len(data[name]["prompts"]) or any(p not in keys for p in lookup)):
            raise ValueError(f"{name}: difficulty_prompts must name one known prompt per comparison")
        data[name]["lookup"] = data[name]["key"] if lookup is None else torch.tensor([keys[p] for p in lookup])
    use_difficulty = len(names) > 1 if difficulty is None else difficulty
    gamma, theta_hat, phi_hat = torch.zeros(len(keys), dtype=torch.float64), {}, None
    if use_difficulty:
        sys_id = torch.cat([torch.full((data[n]["y"].numel(),), i) for i, n in enumerate(names)])
        cat = {k: torch.cat([data[n][k] for n in names]) for k in ("key", "t", "y")}
        theta, phi_hat, g = _joint_fit(sys_id, cat["key"], cat["t"], cat["y"], len(names), len(keys),
                                       difficulty_ridge)
        theta_hat, gamma = dict(zip(names, theta.tolist())), g
        for n in names:
            data[n]["q"] = torch.sigmoid(theta_hat[n] + phi_hat * data[n]["t"] + g[data[n]["key"]])
    anchor_set = set(anchors)
    pool = [n for n in names if n not in anchor_set]
    cols = 3 if use_difficulty else 2
    results, model_kind = {}, "none"
    for i, name in enumerate(names):
        s = data[name]
        x_own = torch.stack([torch.ones_like(s["t"]), s["t"], gamma[s["lookup"]]], 1)[:, :cols]
        kind, parts = "none", []
        if anchors:
            parts, kind = [(data[a], 0.0, lam / len(anchors)) for a in anchors], "baseline variants"
        elif len(pool) > 1 and theta_hat and lam > 0:
            others = [n for n in pool if n != name]
            info = float(sum((data[n]["q"] * (1 - data[n]["q"])).sum() for n in others))
            weight = lam * s["y"].numel() * ANCHOR_INFO / max(info, 1e-12)
            parts, kind = [(data[n], theta_hat[n], weight) for n in others], "pooled systems"
        model_kind = kind if kind != "none" else model_kind
        x_anc = torch.cat([torch.stack([torch.zeros_like(p["t"]), p["t"], gamma[p["key"]]], 1)[:, :cols]
                           for p, _, _ in parts]) if parts else torch.zeros(0, cols, dtype=torch.float64)
        y_anc = torch.cat([p["y"] for p, _, _ in parts]) if parts else torch.zeros(0, dtype=torch.float64)
        off = torch.cat([torch.full_like(p["y"], o) for p, o, _ in parts]) if parts else y_anc
        w_anc = torch.cat([torch.full_like(p["y"], w) for p, _, w in parts]) if parts else y_anc
        n = s["y"].numel()
        start = torch.tensor([theta_hat[name], phi_hat, 1.0], dtype=torch.float64)[:cols] if theta_hat else None
        beta = _system_fit(x_own, s["y"], torch.ones(1, n, dtype=torch.float64), x_anc, y_anc, w_anc, off, start)[0]
        x0 = x_own.clone()
        x0[:, 1] = 0.0  # the length term switched off
        lc = float(torch.sigmoid(x0 @ beta).mean())
        interval = None
        if n_boot:
            w = resample_weights(n, s["prompts"], n_boot, seed + i)
            betas = _system_fit(x_own, s["y"], w, x_anc, y_anc, w_anc, off, start=beta)
            interval = percentile_interval((w * torch.sigmoid(betas @ x0.T)).sum(1) / w.sum(1), level)
        results[name] = {
            "win_rate": lc, "bootstrap": interval, "n": n, "length_diff_std": s["sd"],
            "mean_length_diff": float(s["d"].mean()), "regulariser": kind,
            "coef": {"system": float(beta[0]), "length": float(beta[1]),
                     "difficulty": float(beta[2]) if use_difficulty else None}}
    return {"systems": results, "model": {
        "formula": FORMULA, "lambda": lam, "difficulty": use_difficulty, "instructions": len(keys),
        "judge_length_coef": phi_hat if use_difficulty else None, "regulariser": model_kind, "n_boot": n_boot,
        "anchors": list(anchors)}}


def length_controlled(values: Any, length_diff: Any, groups: Sequence[Any] | None = None, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """LC win rate of one system against one baseline: the GLM's system and length terms on its own data
    (no difficulty term, nothing to pool). Returns the per-system dict of `length_controlled_glm`."""
    out = length_controlled_glm({"A": {"outcomes": values, "length_diff": length_diff, "prompts": groups}},
                                n_boot=n_boot, seed=seed, level=level)
    return out["systems"]["A"]
