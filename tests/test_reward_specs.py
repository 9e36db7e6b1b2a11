"""Reward specs with options: reward-model ensembles and vector heads (`rewards/functions.py`), LSC and InfAlign's
calibrated reward against reference samples (`rewards/calibration.py`), through RL and best-of-N."""

import json
import math

import numpy as np
import pytest
import torch

from alignkit import cli
from alignkit.errors import ConfigError, ModelError
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.calibration import (
    ReferenceCalibrated,
    calibrated,
    centred,
    midrank_quantiles,
    model_sampler,
)
from alignkit.rewards.functions import build_reward
from alignkit.rewards.spec import parse_call

PROMPTS = ["The movie was", "The plot was"]
TEXTS = [" good.", " bad and long", " fine", " a"]


def make_rm(tiny_path, out, seed: int, outputs: int = 1) -> str:
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer

    torch.manual_seed(seed)
    load_reward_model(tiny_path, num_outputs=outputs).save_pretrained(out)
    load_tokenizer(tiny_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def members(tiny_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    paths = [make_rm(tiny_path, root / f"m{i}", seed=10 + i) for i in range(3)]
    (root / "ens").mkdir()
    (root / "ens" / "ensemble.json").write_text(json.dumps({"members": paths}))
    return paths, str(root / "ens")


def scores(spec):
    prompts = [PROMPTS[i % 2] for i in range(len(TEXTS))]
    return np.array(build_reward(spec)(prompts, TEXTS, [{}] * len(TEXTS)))


def test_spec_parsing_splits_at_top_level_commas_and_reads_options_as_yaml():
    call = parse_call("ensemble(rm:a, rm:b, aggregate=mean_minus_std, lam=0.5)", ("ensemble",))
    assert call.args == ("rm:a", "rm:b") and call.kwargs == {"aggregate": "mean_minus_std", "lam": 0.5}
    nested = parse_call("lsc(ensemble(rm:a, aggregate=min), samples=4)", ("lsc",))
    assert nested.args == ("ensemble(rm:a, aggregate=min)",) and nested.kwargs == {"samples": 4}
    assert parse_call("heads(rm:x, weights=[1, 0.5])", ("heads",)).kwargs == {"weights": [1, 0.5]}
    assert parse_call("lsc(rule:regex:a=b)", ("lsc",)).args == ("rule:regex:a=b",)  # '=' inside a spec
    assert parse_call("rm:runs/rm", ("lsc",)) is None and parse_call("other(rm:x)", ("lsc",)) is None
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_call("lsc(heads(rm:x, weights=[1)", ("lsc",))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sample'\]"):
        build_group_reward("lsc(rule:length:3, sample=4)")
    with pytest.raises(ConfigError, match="needs a reward spec inside"):
        parse_call("lsc(samples=4)", ("lsc",))


def test_an_ensemble_folder_is_its_members_mean_and_aggregates_match_their_closed_forms(members):
    paths, ens = members
    each = np.stack([scores(f"rm:{p}") for p in paths])  # [M, N]
    assert each.std(0).min() > 1e-4  # the members disagree, so the aggregates differ
    np.testing.assert_allclose(scores(f"rm:{ens}"), each.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores(f"ensemble(rm:{ens}, aggregate=mean_minus_std, lam=0)"), each.mean(0),
                               rtol=1e-5, atol=1e-6)  # λ = 0 is the mean
    np.testing.assert_allclose(scores(f"ensemble(rm:{ens}, aggregate=mean_minus_std, lam=2)"),
                               each.mean(0) - 2 * each.std(0), rtol=1e-5, atol=1e-6)  # population std
    np.testing.assert_allclose(scores(f"ensemble(rm:{paths[0]}, rm:{paths[1]}, aggregate=min)"),
                               each[:2].min(0), rtol=1e-5, atol=1e-6)
    same = f"ensemble(rm:{paths[0]}, rm:{paths[0]}, rm:{paths[0]}, aggregate=min)"
    np.testing.assert_allclose(scores(same), each[0], rtol=1e-5, atol=1e-6)  # min of identical members = each
    with pytest.raises(ConfigError, match="aggregate must be one of"):
        build_reward(f"ensemble(rm:{ens}, aggregate=max)")


def test_a_vector_head_is_a_reward_through_its_weights(tiny_path, tmp_path):
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.models.load import load_tokenizer
    from alignkit.rewards.functions import completion_records
    from alignkit.rewards.rm_scores import score_records

    path = make_rm(tiny_path, tmp_path / "mo", seed=3, outputs=2)
    prompts = [PROMPTS[i % 2] for i in range(len(TEXTS))]
    raw, _ = score_records([load_reward_model(path)], load_tokenizer(path), completion_records(prompts, TEXTS),
                           progress=False)
    vec = np.array([r[0] for r in raw])  # [N, 2]
    np.testing.assert_allclose(scores(f"heads(rm:{path}, weights=[1.0, 0.5])"), vec[:, 0] + 0.5 * vec[:, 1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores(f"heads(rm:{path}, weights=[0, 1])"), vec[:, 1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match=r"2 outputs per response.*heads\(rm:"):
        scores(f"rm:{path}")
    with pytest.raises(ConfigError, match="3 weights for"):
        scores(f"heads(rm:{path}, weights=[1, 2, 3])")


def test_calibrated_rewards_of_fresh_reference_samples_are_uniform_whatever_the_reward_scale():
    """KS test: per prompt, n reference rewards from a prompt-specific distribution (scales 0.01 to 100); the
    mid-rank quantile of a fresh sample of the same distribution is uniform on {0, 1/n, ..., 1} (exchangeability),
    so its empirical CDF stays within the 1% Kolmogorov–Smirnov band; the raw rewards do not."""
    rng = np.random.default_rng(0)
    n, prompts, fresh = 16, 600, 4
    q, raw = [], []
    for _ in range(prompts):
        loc, scale = rng.normal(0, 10), 10 ** rng.uniform(-2, 2)
        ref = rng.normal(loc, scale, n)
        new = rng.normal(loc, scale, fresh)
        q += calibrated(new, ref).tolist()
        raw += new.tolist()
    q = np.array(q)
    grid = np.arange(n + 1) / n
    emp = np.array([(q <= g + 1e-12).mean() for g in grid])
    expected = np.arange(1, n + 2) / (n + 1)
    band = 1.63 / math.sqrt(len(q))  # KS critical value at α = 0.01
    assert np.abs(emp - expected).max() < band
    r = (np.array(raw) - np.min(raw)) / np.ptp(raw)  # the raw rewards, scaled to [0, 1]: far from uniform
    assert np.abs(np.array([(r <= g).mean() for g in grid]) - grid).max() > 5 * band
    np.testing.assert_allclose(calibrated([1.0, 4.0], [0, 2, 4, 6], tilt=2.0), np.exp(2 * np.array([0.25, 0.625])))


def test_lsc_centres_on_a_quantile_of_the_reference_rewards():
    ref = [0.0, 1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(centred([2.0, 5.0], ref), [math.log(0.5), math.log(1 / (1 + math.exp(-3)))])
    np.testing.assert_allclose(centred([2.0], ref, quantile=1.0), [math.log(1 / (1 + math.exp(2)))])


def test_reference_samples_are_drawn_once_per_prompt_and_calibrate_against_themselves(tiny):
    model, tok = tiny
    calls = []
    base = model_sampler(model, tok, max_new_tokens=6, temperature=1.0, top_p=1.0, stop=[])

    def sample(prompts, n, seed):
        calls.append(list(prompts))
        return base(prompts, n, seed)

    length = build_reward("rule:length:1")  # −|words − 1|: ties possible, mid-rank handles them
    r = ReferenceCalibrated(parse_call("calibrated(rule:length:1, samples=8)", ("calibrated",)), length)
    texts = base(PROMPTS, 8, 0)  # completions to score (not the reward's own reference samples: another seed)
    out, metrics = r.rewards(sample, PROMPTS, [texts[0][:3], texts[1][:3]], [{}, {}])
    assert calls == [PROMPTS] and len(out) == 2 and all(len(g) == 3 for g in out)
    refs = r.reference_rewards(sample, PROMPTS, [{}, {}])
    assert calls == [PROMPTS]  # cached: not sampled again
    raw = [length(PROMPTS[:1] * 3, texts[0][:3], [{}] * 3), length(PROMPTS[1:] * 3, texts[1][:3], [{}] * 3)]
    for b in range(2):
        np.testing.assert_allclose(out[b], midrank_quantiles(raw[b], refs[b]))
    assert set(metrics) == {"calibrated/raw_mean", "calibrated/reference_mean"}
    with pytest.raises(ConfigError, match="group reward"):
        build_reward("calibrated(rule:length:1)")  # pointwise callers are told where it works


def test_grpo_trains_on_a_calibrated_reward_and_best_of_n_selects_by_it(tiny_path, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"The movie was number {i}"}) + "\n" for i in range(8)))
    spec = "calibrated(alignkit.worlds.reviews:reward, samples=4)"
    argv = ["train", f"model={tiny_path}", f"prompts={prompts}", f"output_dir={tmp_path / 'run'}", "progress=false",
            "objective=grpo", "ref_strategy=copy", "batch_size=4", "num_samples=4", "max_new_tokens=4", "max_steps=2", "lr=1e-3",
            f"reward={spec}"]
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows if "reward/mean" in r)  # quantiles
    assert "calibrated/reference_mean" in " ".join(rows[0])
    out = tmp_path / "bon.jsonl"
    assert cli.main(["generate", "--model", tiny_path, "--prompts", str(prompts), "--method", "bon", "--n", "4", "--max-new-tokens", "4",
                     "--reward", "lsc(alignkit.worlds.reviews:reward, samples=4)", "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 8 and all(r["reward"] < 0 and r["reward"] == max(r["rewards"]) for r in got)  # logσ(·) < 0
