"""Reward models learn known preferences on the review world: a Bradley–Terry RM ranks held-out pairs by
the gold reward; GPM fits a cyclic triple that BT cannot; a mixture with a prompt gate separates two
user groups with opposite preferences better than one BT head."""

import json
import random

import pytest
import torch

from alignkit.config import TrainConfig
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig
from alignkit.executor.reward_model import load_reward_model
from alignkit.models.load import load_tokenizer
from alignkit.objectives.reward_structured import gpm_score
from alignkit.rewards.rm_scores import model_scores
from alignkit.training import train
from alignkit.worlds import reviews


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An untrained tiny decoder whose tokenizer was trained on the review corpus."""
    from alignkit.models.tiny import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("rm_base"), corpus=reviews.corpus(3000, seed=0),
                          chat_template=False, seed=0, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          max_positions=128))


def world_pairs(seed: int, n: int, groups: bool = False) -> list[dict]:
    """Pairs of corpus reviews, chosen by the gold reward (group B prefers the opposite); ties skipped."""
    rng = random.Random(seed)
    texts = [t[len(reviews.PREFIX):] for t in reviews.corpus(4 * n, seed=seed)]
    out = []
    for a, b in zip(texts[::2], texts[1::2]):
        ra, rb = reviews.reward(a), reviews.reward(b)
        if ra == rb or len(out) == n:
            continue
        g = rng.choice("AB") if groups else "A"
        a_wins = (ra > rb) == (g == "A")
        out.append({"prompt": f"{g}: {reviews.PREFIX}" if groups else reviews.PREFIX,
                    "chosen": a if a_wins else b, "rejected": b if a_wins else a, "group": g})
    return out


def fit(base, rows, out, objective, steps, lr=3e-3, **kw):
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(TrainConfig(model=base, data=str(path), objective=objective, batch_size=16, max_steps=steps,
                               lr=lr, warmup=0.1, output_dir=str(out / objective), progress=False, log_every=50,
                               **kw))
    return str(result.final_dir)


def scores(model_dir, rows):
    records = [PreferenceRecord(prompt=r["prompt"], responses=[r["chosen"], r["rejected"]], ranks=[0, 1])
               for r in rows]
    return model_scores(load_reward_model(model_dir), load_tokenizer(model_dir), records, progress=False)


def accuracy_by_group(model_dir, rows):
    hits: dict[str, list[bool]] = {}
    for r, (c, j) in zip(rows, scores(model_dir, rows)):
        hits.setdefault(r["group"], []).append(c > j)
    return {g: sum(v) / len(v) for g, v in hits.items()}


def test_bradley_terry_rm_ranks_held_out_world_pairs(base, tmp_path):
    rm = fit(base, world_pairs(1, 1200), tmp_path, "bt", 150)
    held_out = world_pairs(2, 400)
    assert accuracy_by_group(rm, held_out)["A"] > 0.9


def test_gpm_fits_a_cyclic_triple_that_bt_cannot(base, tmp_path):
    a, b, c = " The plot was great.", " The cast was dull.", " The music was fun and the ending was weak."
    rows = [{"prompt": reviews.PREFIX, "chosen": w, "rejected": l, "group": "A"}
            for w, l in ((a, b), (b, c), (c, a))] * 16
    # normalised embeddings with beta = 10 (the paper's 1/tau) need a gentle lr: at 1e-2 they collapse onto
    # one direction, the saddle where every score is 0
    gpm = fit(base, rows, tmp_path, "gpm", 80, lr=1e-3, hparams={"dim": 4})
    bt = fit(base, rows, tmp_path, "bt", 60)
    triple = rows[:3]
    v = torch.tensor(scores(gpm, triple))  # [3, 2, dim] embeddings of (chosen, rejected)
    p = torch.sigmoid(gpm_score(v[:, 0], v[:, 1], beta=10.0, normalize=True))
    assert (p > 0.5).all(), p  # a ≻ b, b ≻ c and c ≻ a all predicted
    bt_right = sum(cw > rw for cw, rw in scores(bt, triple))
    assert bt_right <= 2  # a scalar reward orders the three: at most two of the cycle's pairs agree


@pytest.mark.slow
def test_mixture_separates_two_user_groups_better_than_one_bt_head(base, tmp_path):
    train_rows, held_out = world_pairs(1, 1200, groups=True), world_pairs(2, 400, groups=True)
    bt = accuracy_by_group(fit(base, train_rows, tmp_path, "bt", 300), held_out)
    mix = accuracy_by_group(fit(base, train_rows, tmp_path, "mixture", 300, hparams={"num_heads": 2}), held_out)
    assert min(mix.values()) > 0.97
    assert min(mix.values()) > min(bt.values()) + 0.03, (mix, bt)


def step_records(seed: int, n: int) -> list[dict]:
    """Solutions of 2-4 steps (review clauses); a step is good when its adjective is positive."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(2, 4)):
            good = rng.random() < 0.6
            adjective = rng.choice(reviews.POSITIVE if good else reviews.NEGATIVE)
            steps.append(f"the {rng.choice(reviews.SUBJECTS)} {rng.choice(reviews.VERBS)} {adjective}")
            labels.append(good)
        rows.append({"prompt": reviews.PREFIX, "responses": steps, "labels": labels})
    return rows


def test_process_reward_model_scores_each_step(base, tmp_path):
    from alignkit.data.dataset import TokenizedDataset
    from alignkit.executor.reward_model import RewardScorer
    from alignkit.objectives.reward_structured import prm_outcome

    train_rows = step_records(1, 600)
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    result = train(TrainConfig(model=base, data=str(path), objective="prm", batch_size=16, max_steps=120, lr=3e-3,
                               warmup=0.1, output_dir=str(tmp_path / "prm"), progress=False, log_every=40))
    model, tok = load_reward_model(str(result.final_dir)), load_tokenizer(str(result.final_dir))
    held_out = [PreferenceRecord(**r) for r in step_records(2, 200)]
    data = TokenizedDataset.build(held_out, tok, TokenizeConfig(), extras=("step_mask", "step_labels"))
    batch = data.collate(list(range(len(held_out))), tok.pad_token_id, "shared_prompt", 4096)
    with torch.no_grad():
        logits, _ = RewardScorer(model)(batch)
    mask, labels = batch.extra["step_mask"], batch.extra["step_labels"]
    assert logits.shape == mask.shape == (200, 1, 4)
    step_acc = ((logits > 0).float() == labels)[mask].float().mean()
    assert step_acc > 0.95
    # outcome by the weakest step: every all-good solution outranks every solution with a bad step
    outcome = prm_outcome(logits[:, 0], mask[:, 0], "min")
    all_good = torch.tensor([all(r.labels) for r in held_out])
    assert outcome[all_good].min() > outcome[~all_good].max()
