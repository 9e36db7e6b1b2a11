"""Tournaments between several systems and their ratings: Bradley–Terry, Elo, bootstrap intervals, leaderboard.

A *match* is a list of comparisons between two systems (outcomes 1 / ½ / 0 from the first system's side,
e.g. one per prompt and sample; `alignkit.rewards.judges.Judge.compare`).

* `round_robin` plays every pair: S(S−1)/2 matches.
* `single_elimination` plays a bracket: S − 1 matches (byes for the top seeds when S is not a power of
  two); a match is won by the higher mean outcome (an exact tie by a seeded coin). It costs far fewer
  judge calls, and its ratings are rougher: most pairs never meet.
* `bradley_terry` fits ``P(i beats j) = p_i / (p_i + p_j)`` by the MM algorithm (Hunter, "MM algorithms
  for generalized Bradley–Terry models", 2004): ``p_i ← W_i / Σ_j n_ij / (p_i + p_j)`` with ``W_i`` i's
  wins (ties half) and ``n_ij`` the comparisons of i and j. ``prior`` adds that many virtual ties to
  every pair that met, so a system that won (or lost) everything keeps a finite rating. Ratings are
  ``θ_i = log p_i − log p_anchor`` (nats; the anchor is 0) and, on the Elo scale, ``1000 + 400·θ/ln 10``.
* `elo` is the online rating: every comparison, in a seeded random order, moves both ratings by
  ``K·(s − E)`` with ``E = 1 / (1 + 10^{(R_j − R_i)/400})``; shifted so the anchor has 1000 and averaged
  over 100 random orders. Online Elo still weighs late games more and shrinks toward 1000 when there are
  few games, which is why the leaderboard ranks by Bradley–Terry.
* `ratings` bootstraps both (comparisons resampled within each match) for percentile intervals.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignkit.errors import ConfigError, DataError
from alignkit.eval.bootstrap import percentile_interval

ELO_SCALE = 400 / math.log(10)


@dataclass
class Match:
    a: str
    b: str
    outcomes: list[float]

    @property
    def score(self) -> float:
        return sum(self.outcomes) / len(self.outcomes)


@dataclass
class Tournament:
    """Matches played, in order; ``rounds`` lists the bracket of a single elimination."""

    format: str
    systems: list[str]
    matches: list[Match]
    rounds: list[list[dict[str, Any]]] = field(default_factory=list)
    champion: str | None = None

    @property
    def comparisons(self) -> int:
        return sum(len(m.outcomes) for m in self.matches)


def round_robin(systems: Sequence[str], play: Callable[[str, str], list[float]]) -> Tournament:
    """Every pair ``(systems[i], systems[j]), i < j`` plays once; ``play(a, b)`` returns a's outcomes."""
    names = list(systems)
    matches = [Match(a, b, list(play(a, b))) for i, a in enumerate(names) for b in names[i + 1:]]
    return Tournament("round-robin", names, matches)


def single_elimination(systems: Sequence[str], play: Callable[[str, str], list[float]], seed: int = 0) -> Tournament:
    """A knock-out bracket in seeding order (``systems[0]`` is the top seed): S − 1 matches.

    Each round the top seeds left get byes until the field is a power of two, then seed i meets seed
    (field − 1 − i). Winners keep their seed.
    """
    names = list(systems)
    if len(names) < 2:
        raise ConfigError("a tournament needs at least two systems")
    rng = random.Random(seed)
    alive, matches, rounds = list(names), [], []
    while len(alive) > 1:
        power = 1 << (len(alive) - 1).bit_length()
        byes = power - len(alive)
        advanced, played = alive[:byes], alive[byes:]
        rnd = [{"bye": s} for s in advanced]
        pairs = [(played[i], played[-1 - i]) for i in range(len(played) // 2)]
        winners = {}
        for a, b in pairs:
            m = Match(a, b, list(play(a, b)))
            matches.append(m)
            won = a if m.score > 0.5 else b if m.score < 0.5 else rng.choice([a, b])
            winners[a] = winners[b] = won
            rnd.append({"a": a, "b": b, "score_a": m.score, "n": len(m.outcomes), "winner": won})
        rounds.append(rnd)
        alive = advanced + [s for s in played if winners[s] == s]
    return Tournament("single-elimination", names, matches, rounds, alive[0])


def _games(systems: Sequence[str], matches: Sequence[Match]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every comparison as ``(i, j, outcome of i)``: three ``[T]`` tensors."""
    index = {s: n for n, s in enumerate(systems)}
    unknown = sorted({x for m in matches for x in (m.a, m.b)} - set(index))
    if unknown:
        raise ValueError(f"matches name systems {unknown} that are not in {list(systems)}")
    i = torch.tensor([index[m.a] for m in matches for _ in m.outcomes], dtype=torch.long)
    j = torch.tensor([index[m.b] for m in matches for _ in m.outcomes], dtype=torch.long)
    y = torch.tensor([o for m in matches for o in m.outcomes], dtype=torch.float64)
    return i, j, y


def _tallies(n: int, i: torch.Tensor, j: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``wins [B, S, S]`` (i's outcome total against j) and ``played [B, S, S]`` for comparison weights ``w [B, T]``."""
    flat = torch.zeros(w.shape[0], n * n, dtype=torch.float64)
    flat.index_add_(1, i * n + j, w * y).index_add_(1, j * n + i, w * (1 - y))
    wins = flat.view(-1, n, n)
    return wins, wins + wins.transpose(1, 2)


def _bt_fit(n: int, i, j, y, w: torch.Tensor, prior: float, tol: float = 1e-10, max_iter: int = 10000) -> torch.Tensor:
    """MM iterations for ``[B]`` weightings at once; returns log-strengths ``[B, S]`` (mean zero)."""
    wins, played = _tallies(n, i, j, y, w)
    met = played > 0
    wins, played = wins + prior / 2 * met, played + prior * met
    total = wins.sum(2)
    logp = torch.zeros(w.shape[0], n, dtype=torch.float64)
    for _ in range(max_iter):
        p = logp.exp()
        new = (total / (played / (p[:, :, None] + p[:, None, :])).sum(2)).clamp(min=1e-300).log()
        new = new - new.mean(1, keepdim=True)
        done = float((new - logp).abs().max()) < tol
        logp = new
        if done:
            break
    return logp


def bradley_terry(systems: Sequence[str], matches: Sequence[Match], anchor: str | None = None,
                  prior: float = 1.0) -> dict[str, float]:
    """Bradley–Terry log-strengths ``{system: θ}`` (nats, ``θ_anchor = 0``) by the MM algorithm.

    ``anchor`` defaults to ``systems[0]``. A comparison graph in several pieces cannot be put on one
    scale: an error names the systems apart.
    """
    names = list(systems)
    a = _anchor(names, anchor)
    i, j, y = _games(names, matches)
    _check_connected(names, _tallies(len(names), i, j, y, torch.ones(1, y.numel(), dtype=torch.float64))[1][0] > 0)
    logp = _bt_fit(len(names), i, j, y, torch.ones(1, y.numel(), dtype=torch.float64), prior)[0]
    return {s: float(v) for s, v in zip(names, logp - logp[a])}


def _anchor(names: list[str], anchor: str | None) -> int:
    if anchor is not None and anchor not in names:
        raise ConfigError(f"anchor {anchor!r} is not one of the systems {names}")
    return 0 if anchor is None else names.index(anchor)


def _check_connected(names: list[str], met: torch.Tensor) -> None:
    seen, stack = {0}, [0]
    while stack:
        i = stack.pop()
        for j in met[i].nonzero().flatten().tolist():
            if j not in seen:
                seen.add(j)
                stack.append(j)
    if len(seen) < len(names):
        apart = [names[i] for i in range(len(names)) if i not in seen]
        raise DataError(f"systems {apart} never met the others (even indirectly); they cannot be rated together")


def _elo_run(n: int, i, j, y, order: torch.Tensor, k: float) -> torch.Tensor:
    """Online Elo for ``[B]`` game orders ``order [B, T']`` (indices into the games) at once; returns ``[B, S]``.

    A sequential loop over games: numpy's per-call overhead is far below torch's for these tiny vectors.
    """
    import numpy as np

    order = order.numpy()
    gi, gj, gy = i.numpy()[order], j.numpy()[order], y.numpy()[order]
    r = np.full((order.shape[0], n), 1000.0)
    flat = r.reshape(-1)
    base = np.arange(order.shape[0]) * n
    for t in range(order.shape[1]):
        a, b = base + gi[:, t], base + gj[:, t]
        delta = k * (gy[:, t] - 1 / (1 + 10 ** ((flat[b] - flat[a]) / 400)))
        flat[a] += delta
        flat[b] -= delta
    return torch.from_numpy(r)


def elo(systems: Sequence[str], matches: Sequence[Match], anchor: str | None = None, k: float = 16.0,
        seed: int = 0, orders: int = 100) -> dict[str, float]:
    """Online Elo ratings ``{system: R}`` (anchor at 1000): the mean over ``orders`` seeded random orders of
    all comparisons (one order alone would make the ratings depend on which games came last)."""
    names = list(systems)
    a = _anchor(names, anchor)
    i, j, y = _games(names, matches)
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(y.numel(), generator=gen) for _ in range(max(orders, 1))])
    r = _elo_run(len(names), i, j, y, order, k)
    r = (r + 1000.0 - r[:, a:a + 1]).mean(0)
    return {s: float(v) for s, v in zip(names, r)}


def _boot_games(matches: Sequence[Match], n_boot: int, seed: int) -> torch.Tensor:
    """``[B, T]`` game indices: each match's comparisons resampled with replacement, then shuffled per row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parts, offset = [], 0
    for m in matches:
        parts.append(offset + rng.integers(len(m.outcomes), size=(n_boot, len(m.outcomes))))
        offset += len(m.outcomes)
    return torch.from_numpy(rng.permuted(np.concatenate(parts, 1), axis=1))


def ratings(tournament: Tournament, anchor: str | None = None, n_boot: int = 200, seed: int = 0, level: float = 0.95,
            prior: float = 1.0, k: float = 16.0) -> dict[str, Any]:
    """Bradley–Terry and Elo ratings with bootstrap intervals, and the leaderboard.

    Returns ``{"anchor", "prior", "elo_k", "n_boot", "bt": {s: θ}, "bt_ci": {s: [lo, hi]}, "bt_elo": {s: 1000 +
    400θ/ln10}, "bt_elo_ci", "elo": {s: R}, "elo_ci", "leaderboard": [{"rank", "system", "bt_elo", "bt_elo_ci",
    "elo", "elo_ci", "win_rate", "comparisons"}]}`` (leaderboard sorted by Bradley–Terry).
    """
    names, matches = tournament.systems, tournament.matches
    anchor = names[_anchor(names, anchor)]
    bt = bradley_terry(names, matches, anchor, prior)
    el = elo(names, matches, anchor, k, seed)
    i, j, y = _games(names, matches)
    a = names.index(anchor)
    boot_bt = boot_elo = torch.empty(0, len(names), dtype=torch.float64)
    if n_boot:
        games = _boot_games(matches, n_boot, seed)
        w = torch.zeros(n_boot, y.numel(), dtype=torch.float64).scatter_add_(
            1, games, torch.ones(games.shape, dtype=torch.float64))
        boot_bt = _bt_fit(len(names), i, j, y, w, prior)
        boot_bt = boot_bt - boot_bt[:, a:a + 1]
        boot_elo = _elo_run(len(names), i, j, y, games, k)
        boot_elo = boot_elo + 1000.0 - boot_elo[:, a:a + 1]

    def ci(samples: torch.Tensor, s: str, scale: float = 1.0, offset: float = 0.0) -> list[float]:
        if not samples.shape[0]:
            return [math.nan, math.nan]
        return [offset + scale * v for v in percentile_interval(samples[:, names.index(s)], level)]

    wins, played = (t[0] for t in _tallies(len(names), i, j, y, torch.ones(1, y.numel(), dtype=torch.float64)))
    board = []
    for s in names:
        i = names.index(s)
        board.append({"system": s, "bt": bt[s], "bt_elo": 1000 + ELO_SCALE * bt[s],
                      "bt_elo_ci": ci(boot_bt, s, ELO_SCALE, 1000.0), "elo": el[s], "elo_ci": ci(boot_elo, s),
                      "win_rate": float(wins[i].sum() / played[i].sum()) if played[i].sum() else math.nan,
                      "comparisons": int(played[i].sum())})
    board.sort(key=lambda r: -r["bt"])
    for rank, row in enumerate(board, 1):
        row["rank"] = rank
    return {"anchor": anchor, "prior": prior, "elo_k": k, "n_boot": n_boot, "bt": bt,
            "bt_ci": {s: ci(boot_bt, s) for s in names},
            "bt_elo": {s: 1000 + ELO_SCALE * v for s, v in bt.items()},
            "bt_elo_ci": {s: ci(boot_bt, s, ELO_SCALE, 1000.0) for s in names},
            "elo": el, "elo_ci": {s: ci(boot_elo, s) for s in names}, "leaderboard": board}
