"""MaxMin-RLHF's first stage with reward models (`engine/user_groups.py`, ``alignkit train user_groups=G``): the
`users` transform, the E-step, the EM loop against known answers, and on `worlds/plural.py` (slow) the groups
recovered and each group's model serving its group, then feeding ``maxmin(...)``."""

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit import cli
from alignkit.config import TrainConfig
from alignkit.data import read_records
from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms import apply_transforms
from alignkit.engine import user_groups as ug
from alignkit.engine.loop import TrainResult
from alignkit.errors import ConfigError, DataError
from alignkit.rewards.maxmin import assign_users
from alignkit.worlds.plural import group_of, user_pairs


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_users_transform_keeps_the_named_users_and_counts_the_rest():
    recs = [PreferenceRecord(prompt="p", responses=["a", "b"], ranks=[0, 1], meta={"user": u} if u else {})
            for u in ["x", "y", "x", None, "z"]]
    out, (rep,) = apply_transforms(recs, [{"name": "users", "keep": ["x", "z"]}])
    assert [r.meta["user"] for r in out] == ["x", "x", "z"]
    assert rep["dropped"] == {"other_user": 1, "no_user": 1}
    with pytest.raises(ConfigError, match="non-empty list of user names"):
        apply_transforms(recs, [{"name": "users", "keep": "x"}])


def test_e_step_sums_each_users_pair_log_likelihoods():
    loglik = torch.tensor([[-0.1, -2.0], [-3.0, -0.2], [-0.5, -0.4], [-1.0, -0.1]], dtype=torch.float64)
    users = torch.tensor([0, 0, 1, 2])  # user 0: -3.1 vs -2.2 -> group 1; user 1: group 1; user 2: group 1
    assert assign_users(loglik, users, 4).tolist() == [1, 1, 1, 0]  # user 3 has no pairs: group 0
    assert assign_users(loglik[:, [1, 0]], users, 3).tolist() == [0, 0, 0]


def test_random_start_is_a_seeded_split_into_equal_groups():
    a, b = ug.initial_groups(7, 3, seed=0), ug.initial_groups(7, 3, seed=0)
    assert torch.equal(a, b) and sorted(torch.bincount(a).tolist()) == [2, 2, 3]
    assert not all(torch.equal(a, ug.initial_groups(7, 3, seed=s)) for s in range(1, 5))


class _Taste:
    """A known answer for the EM loop without transformers: "training" on users' pairs gives a reward model whose
    taste is the mean taste (+1 or -1) of those users; its pair log-likelihood is logσ(2·taste·sign(pair))."""

    def __init__(self, tmp_path, tastes):
        self.tastes, self.runs = tastes, []
        self.tmp = tmp_path

    def run_one(self, config):
        keep = config.transforms[-1]["keep"]
        start = 0.0 if config.model == "base" else json.loads((Path(config.model) / "taste.json").read_text())
        taste = 0.5 * start + 0.5 * sum(self.tastes[u] for u in keep) / len(keep)
        final = Path(config.output_dir) / "final"
        final.mkdir(parents=True)
        (final / "taste.json").write_text(json.dumps(taste))
        (final / "alignkit_reward.json").write_text(json.dumps({"objective": "bt"}))
        self.runs.append((config.output_dir, keep, config.batch_size))
        return TrainResult(Path(config.output_dir), final, [{"step": 1, "loss": 0.5}])

    def logliks(self, models, records, pairs, config):
        sign = torch.tensor([1.0 if records[i].meta["user"][0] == "A" else -1.0 for i, _, _ in pairs])
        cols = [2 * json.loads((Path(m) / "taste.json").read_text()) * sign for m in models]
        return torch.nn.functional.logsigmoid(torch.stack(cols, 1).double())


# spread: round 0 seeds one user per group, the E-step sorts everyone, round 1 moves nobody; random (seed 0):
# a 2A+1B / 1A+2B split gives tastes ±1/6, the E-step moves the 2 misplaced users, round 1 moves nobody
@pytest.mark.parametrize("init,rounds", [("spread", 2), ("random", 2)])
def test_em_loop_finds_groups_of_known_taste_and_publishes_one_model_each(tmp_path, monkeypatch, init, rounds):
    names = ["A0", "A1", "A2", "B0", "B1", "B2"]
    data = _write(tmp_path / "u.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "user": u}
                                         for u in names for _ in range(3)])
    taste = _Taste(tmp_path, {u: 1.0 if u[0] == "A" else -1.0 for u in names})
    monkeypatch.setattr(ug, "pair_logliks", taste.logliks)
    out = tmp_path / "em"
    config = TrainConfig(model="base", data=str(data), objective="bt", user_groups=2, user_group_init=init,
                         output_dir=str(out), batch_size=8, seed=0, progress=False)
    result = ug.train_user_groups(config, taste.run_one)
    summary = json.loads((out / "groups.json").read_text())
    a = summary["users"]["A0"]
    assert summary["users"] == {u: a if u[0] == "A" else 1 - a for u in names} and summary["converged"]
    assert len(summary["rounds"]) == rounds and summary["rounds"][-1]["moved"] == 0
    for g in (0, 1):  # each group's last model, moved out of its run, naming its users
        info = json.loads((out / f"group{g}" / "alignkit_reward.json").read_text())
        assert info["user_group"] == {"group": g, "users": summary["groups"][g]}
        assert not (out / f"round-{rounds - 1}" / f"group{g}" / "final").exists()
    assert json.loads((out / f"group{a}" / "taste.json").read_text()) > 0.5  # group of A users: A's taste
    if init == "random":
        assert summary["rounds"][0]["moved"] == 2
    if init == "spread":  # round 0: one user each, the second the one the first model explains worst (a B)
        (_, k0, _), (_, k1, _) = taste.runs[:2]
        assert k0[0][0] != k1[0][0] and len(k0) == len(k1) == 1
    assert all(b == min(8, 3 * len(k)) for _, k, b in taste.runs)  # a batch is at most the group's 3 records a user
    assert result.final_dir == out and [h["round"] for h in result.history] == [
        int(Path(d).parent.name.removeprefix("round-")) for d, _, _ in taste.runs]  # each run's history, tagged
    with pytest.raises(ConfigError, match="overwrite=true"):  # a second run in the folder
        ug.train_user_groups(config, taste.run_one)


def test_user_groups_refuses_what_it_cannot_train(tmp_path):
    data = _write(tmp_path / "u.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "user": "x"},
                                         {"prompt": "p", "chosen": "a", "rejected": "b"}])
    base = dict(model="m", data=str(data), user_groups=2, output_dir=str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="one output"):
        ug.check_user_groups(TrainConfig(objective="pal", **base))
    with pytest.raises(ConfigError, match="one output"):
        ug.check_user_groups(TrainConfig(objective="dpo", **base))
    with pytest.raises(ConfigError, match="ensemble"):
        ug.check_user_groups(TrainConfig(objective="bt", ensemble=2, **base))
    with pytest.raises(DataError, match=r"u\.jsonl: record 2 has no 'user' column"):
        ug.train_user_groups(TrainConfig(objective="bt", **base), None)
    assert cli.main(["train", "objective=bt", "model=m", "prompts=p.jsonl", "reward=rule:regex:a",
                     "user_groups=2"]) == 2  # online: a one-line config error


@pytest.mark.slow
def test_em_recovers_the_plural_worlds_groups_and_each_groups_model_serves_its_group(tiny_path, tmp_path):
    """worlds/plural.py, 4 users per group of opposite taste, group labels hidden: 256 pairs, a tiny Qwen2
    reward model per group, batch 16, lr 3e-3, 2 epochs per M-step, seed 0. Measured (CPU): spread start,
    2 rounds (moved 8, then 0), every user in its group; held-out (200 pairs, seed 1) 0.99 on each group's
    own users and ~0.01 on the other group's. Then the two folders feed maxmin(...) in a short online run."""
    train = _write(tmp_path / "train.jsonl", user_pairs(256, seed=0))
    out = tmp_path / "em"
    assert cli.main(["train", f"model={tiny_path}", f"data={train}", "objective=bt", "user_groups=2",
                     f"output_dir={out}", "progress=false", "batch_size=16", "lr=3e-3", "epochs=2", "seed=0"]) == 0
    found = json.loads((out / "groups.json").read_text())["users"]
    # groups are found up to a permutation: each true group's majority group
    match = {t: max((0, 1), key=lambda g: sum(found[u] == g for u in found if group_of(u) == t)) for t in "AB"}
    right = sum(found[u] == match[group_of(u)] for u in found)
    assert right / len(found) >= 0.9 and match["A"] != match["B"], found
    acc = _held_out_accuracy(out, match)
    assert min(acc.values()) >= 0.85, acc

    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "Review:"}] * 8)
    from alignkit.training import train

    spec = f"maxmin(rm:{out / 'group0'}, rm:{out / 'group1'})"
    result = train(TrainConfig(model=tiny_path, prompts=str(prompts), reward=spec, objective="reinforce_pp",
                               num_samples=2, max_new_tokens=8, max_steps=2, batch_size=4, lr=1e-3, seed=0,
                               output_dir=str(tmp_path / "maxmin"), progress=False))
    for h in (h for h in result.history if "loss" in h):  # the policy is trained on the worse group's reward
        groups = [h["maxmin/group0"], h["maxmin/group1"]]
        assert h["reward/mean"] == pytest.approx(min(groups), abs=1e-5)
        assert h["maxmin/worst"] == groups.index(min(groups)) and math.isfinite(h["loss"])


def _held_out_accuracy(out, match):
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards.rm_scores import model_scores

    test = _write(out / "heldout.jsonl", user_pairs(200, seed=1))
    records = read_records(test).records
    acc = {}
    for group, g in match.items():
        mine = [r for r in records if group_of(r.meta["user"]) == group]
        path = str(out / f"group{g}")
        scores = model_scores(load_reward_model(path), load_tokenizer(path), mine, progress=False)
        acc[group] = sum(s_w > s_l for s_w, s_l in scores) / len(scores)
    return acc
