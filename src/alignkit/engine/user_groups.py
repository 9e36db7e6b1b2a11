"""MaxMin-RLHF's first stage with reward models: ``alignkit train objective=bt user_groups=G``.

The records say who labelled them (a ``user`` column), not which group each user belongs to. EM over user
groups (Chakraborty et al. 2024, "MaxMin-RLHF", https://arxiv.org/abs/2402.08925, Algorithm 1), with one
transformer reward model per group:

* start (``user_group_init``): ``spread`` trains group 0's model on one random user's pairs, then group g's on
  the pairs of the user the models so far explain worst (k-means++'s farthest point), which puts users of
  opposite taste in different groups from the start; ``random`` (the paper's) splits the users at random into
  G groups of equal size (± 1), seeded by ``seed`` — a split that mixes the tastes evenly teaches each group's
  model little, and EM takes more rounds to separate them (4 in place of 2 on `worlds/plural.py`);
* M-step: group g's reward model is an ordinary run of the config on its users' pairs (transform ``users``),
  in ``<output_dir>/round-<i>/group<g>``, its batch at most the group's record count; from the second round
  on it continues from the group's model of the round before (a group left without users keeps its model);
* E-step: every training pair is scored by every group's model, and each user joins the group whose
  Bradley–Terry model gives the user's pairs the highest log-likelihood
  ``Σ_{pairs of u} logσ(r_g(x, y_w) − r_g(x, y_l))`` (`alignkit.rewards.maxmin.assign_users`).

Rounds repeat until an E-step moves no user, or for ``user_group_rounds`` rounds. Then ``<output_dir>/group<g>``
is group g's reward model (the ``final/`` of its last run, moved there; its ``alignkit_reward.json`` names the
group's users), ready for ``reward="maxmin(rm:OUT/group0, rm:OUT/group1)"``, and ``<output_dir>/groups.json``
holds each user's group (from the last E-step) and every round's log-likelihood and moves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.data.schema import PreferenceRecord, chosen_rejected
from alignkit.engine.prepare import read_split, tokenize_config, transform
from alignkit.errors import ConfigError, DataError
from alignkit.executor import reward_model as rm
from alignkit.io_atomic import atomic_write_text
from alignkit.models.load import load_tokenizer
from alignkit.objectives import build_objective
from alignkit.rewards.maxmin import assign_users
from alignkit.rewards.rm_scores import model_scores

logger = logging.getLogger("alignkit")


def check_user_groups(config) -> None:
    """What ``user_groups`` needs: a one-output reward objective (e.g. bt), one process, no ensemble, and no
    model folders of an earlier run in the way (unless ``overwrite``)."""
    objective = build_objective(config.objective, **{"beta": config.beta, **config.hparams})
    try:
        one_output = objective.inputs == "rewards" and rm.head_size(objective, None) == (1, 0)
    except ConfigError:  # a head sized by the data's score vectors
        one_output = False
    if not one_output:
        raise ConfigError(f"user_groups trains one Bradley–Terry reward model per group: objective must be a reward "
                          f"objective with one output (e.g. objective=bt), got {objective.name}")
    if config.ensemble > 1:
        raise ConfigError("user_groups and ensemble both train several reward models: set one of them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("user_groups runs in one process (each E-step reads the round's models): launch "
                          "`alignkit train` without torchrun / accelerate launch")
    out = Path(config.output_dir)
    taken = [out / f"group{g}" for g in range(config.user_groups) if (out / f"group{g}").exists()]
    if taken and not config.overwrite:
        raise ConfigError(f"{taken[0]} exists (an earlier user_groups run): set overwrite=true or another output_dir")


def labelled_pairs(records: list[PreferenceRecord], source: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(user names, sorted; ``(record, chosen, rejected)`` of every record with a strict preference), each
    user numbered by its place in the names. A record without a user is a `DataError` naming it."""
    for i, r in enumerate(records):
        if r.meta.get("user") is None:
            where = f"record {r.id!r}" if r.id is not None else f"record {i + 1}"
            raise DataError(f"{source}: {where} has no 'user' column; user_groups needs every pair's labelling user")
    names = sorted({r.meta["user"] for r in records})
    pairs = [(i, *cr) for i, r in enumerate(records) if (cr := chosen_rejected(r)) is not None]
    if not pairs:
        raise DataError(f"{source}: no record has a strict preference between two responses; user_groups compares "
                        "pairs")
    return names, pairs


def initial_groups(n_users: int, n_groups: int, seed: int) -> Tensor:
    """[U] a random split of the users into ``n_groups`` groups of equal size (± 1)."""
    perm = torch.randperm(n_users, generator=torch.Generator().manual_seed(seed))
    group = torch.empty(n_users, dtype=torch.long)
    group[perm] = torch.arange(n_users) % n_groups
    return group


def pair_logliks(models: list[str], records: list[PreferenceRecord], pairs: list[tuple[int, int, int]],
                 config) -> Tensor:
    """[N, G] ``logσ(r_g(x, y_w) − r_g(x, y_l))`` of each pair under each group's reward model."""
    tokenizer = load_tokenizer(models[0], trust_remote_code=config.trust_remote_code)
    scored = [records[i] for i, _, _ in pairs]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cols = []
    for g, path in enumerate(models):
        model = rm.load_reward_model(path, dtype=config.dtype, trust_remote_code=config.trust_remote_code).to(device)
        scores = model_scores(model, tokenizer, scored, config.batch_size, tokenize_config(config),
                              progress=config.progress, desc=f"E-step, group {g}")
        gap = torch.tensor([s[w] - s[l] for s, (_, w, l) in zip(scores, pairs, strict=True)], dtype=torch.float64)
        cols.append(F.logsigmoid(gap))
        del model
    return torch.stack(cols, 1)


def train_user_groups(config, run_one):
    """EM over ``config.user_groups`` groups with ``run_one(member_config) -> TrainResult`` as the M-step's
    training (module docstring)."""
    check_user_groups(config)
    em = _EM(config, run_one)
    group = initial_groups(len(em.names), em.n_groups, config.seed) if config.user_group_init == "random" else None
    rounds = []
    for r in range(config.user_group_rounds):
        if group is None:  # spread: each group's first model from one user's pairs
            finished = em.spread()
        else:  # M-step
            finished = all(em.train(r, g, [n for n, k in zip(em.names, group.tolist()) if k == g])
                           for g in range(em.n_groups))
        if not finished:  # interrupted
            return em.result
        loglik = pair_logliks(em.models, em.records, em.pairs, config)  # E-step
        new = assign_users(loglik, em.users, len(em.names))
        moved = len(em.names) if group is None else int((new != group).sum())
        rounds.append({"round": r, "moved": moved, "loglik": float(loglik.gather(1, new[em.users][:, None]).sum()),
                       "groups": [int((new == g).sum()) for g in range(em.n_groups)]})
        logger.info("EM round %d, E-step: %d user(s) moved; log-likelihood %.3f; group sizes %s", r, moved,
                    rounds[-1]["loglik"], rounds[-1]["groups"])
        group = new
        if moved == 0:
            break
    _publish(Path(config.output_dir), em.models, em.names, group, rounds, converged=rounds[-1]["moved"] == 0)
    return dataclasses.replace(em.result, output_dir=Path(config.output_dir), final_dir=Path(config.output_dir),
                               history=em.history)


class _EM:
    """The data, the groups' latest models and the runs of one `train_user_groups`."""

    def __init__(self, config, run_one):
        self.config, self.run_one, self.n_groups = config, run_one, config.user_groups
        self.records = transform(config, read_split(config, config.data, "train"), "train")
        self.names, self.pairs = labelled_pairs(self.records, config.data)
        if len(self.names) < self.n_groups:
            raise DataError(f"{config.data}: {len(self.names)} users for user_groups={self.n_groups}; need at least "
                            "one user per group")
        number = {n: u for u, n in enumerate(self.names)}
        self.users = torch.tensor([number[self.records[i].meta["user"]] for i, _, _ in self.pairs])
        self.models: list = [None] * self.n_groups
        self.history: list[dict] = []
        self.result = None

    def train(self, r: int, g: int, keep: list[str], **overrides) -> bool:
        """Group g's model of round r: a run on the pairs of the users ``keep``, from the group's last model
        (``overrides``: config keys of this run). False when the run was interrupted."""
        if not keep:
            logger.info("EM round %d: group %d has no users and keeps its model", r, g)
            return True
        c, wanted = self.config, set(keep)
        n = sum(r.meta["user"] in wanted for r in self.records)
        logger.info("EM round %d, M-step: group %d's reward model on the %d records of %d user(s)", r, g, n, len(keep))
        member = dataclasses.replace(c, user_groups=0, output_dir=str(Path(c.output_dir) / f"round-{r}" / f"group{g}"),
                                     model=self.models[g] or c.model, batch_size=min(c.batch_size, n),
                                     transforms=[*c.transforms, {"name": "users", "keep": keep}], **overrides)
        self.result = self.run_one(member)
        if self.result.final_dir is None:
            return False
        self.models[g] = str(self.result.final_dir)
        self.history += [dict(h, round=r, group=g) for h in self.result.history]
        return True

    def spread(self) -> bool:
        """Round 0 of ``user_group_init=spread`` (k-means++'s farthest point): group 0 starts from a random user's
        pairs, group g from the pairs of the user whose pairs the models so far explain worst (the highest
        per-pair log-likelihood under any of them is the lowest). These runs hold out nothing."""
        seed = int(torch.randint(len(self.names), (1,), generator=torch.Generator().manual_seed(self.config.seed)))
        onehot = F.one_hot(self.users, len(self.names)).double()
        fit = torch.full((len(self.names),), -math.inf, dtype=torch.float64)
        for g in range(self.n_groups):
            fit[seed] = math.inf  # a user starts one group at most
            if not self.train(0, g, [self.names[seed]], eval_split=0.0):
                return False
            if g == self.n_groups - 1:
                return True
            mean = onehot.T @ pair_logliks([self.models[g]], self.records, self.pairs, self.config)[:, 0]
            fit = torch.maximum(fit, mean / onehot.sum(0).clamp(min=1))
            seed = int(fit.argmin())
        return True


def _publish(out: Path, models: list, names: list[str], group: Tensor, rounds: list, converged: bool) -> None:
    """``out/group<g>``: each group's last model, naming its users; ``out/groups.json``: the assignment."""
    members = [[n for n, g in zip(names, group.tolist()) if g == k] for k in range(len(models))]
    for g, path in enumerate(models):
        dest = out / f"group{g}"
        if dest.exists():
            shutil.rmtree(dest)  # an earlier run's (check_user_groups refused it without overwrite=true)
        os.replace(path, dest)
        info_path = dest / "alignkit_reward.json"
        info = json.loads(info_path.read_text())
        info["user_group"] = {"group": g, "users": members[g]}
        atomic_write_text(info_path, json.dumps(info, indent=2))
    summary = {"users": {n: int(g) for n, g in zip(names, group.tolist())}, "groups": members,
               "models": [f"group{g}" for g in range(len(models))], "converged": converged, "rounds": rounds}
    atomic_write_text(out / "groups.json", json.dumps(summary, indent=2))
    logger.info("user groups %s; reward models in %s", members, ", ".join(str(out / f"group{g}")
                                                                              for g in range(len(models))))
