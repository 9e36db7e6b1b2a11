"""BCO's underlying distribution matching: the density-ratio classifier recovers known ratios (Gaussian features
with a closed-form ratio; text prompts from two topics mixed in known proportions), and the `udm` transform
reweights only undesirable records, clips, reports and refuses bad input with one-line errors."""

import pytest
import torch

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms import TransformError, apply_transforms, options_of, udm
from alignkit.errors import ConfigError
from alignkit.objectives.density_ratio import clipped_ratio, fit_density_ratio


def gaussians(n, seed):
    """D ~ N(μ_D, I), U ~ N(μ_U, I) in 5 dimensions; the true log ratio is (μ_D − μ_U)·x − (|μ_D|² − |μ_U|²)/2."""
    g = torch.Generator().manual_seed(seed)
    mu_d = torch.tensor([0.6, 0.3, 0.0, 0.0, 0.0], dtype=torch.float64)
    mu_u = torch.tensor([-0.4, 0.0, 0.2, 0.0, 0.0], dtype=torch.float64)
    xd = torch.randn(n, 5, generator=g, dtype=torch.float64) + mu_d
    xu = torch.randn(n, 5, generator=g, dtype=torch.float64) + mu_u

    def true_log_ratio(x):
        return x @ (mu_d - mu_u) - (mu_d @ mu_d - mu_u @ mu_u) / 2

    return xd, xu, true_log_ratio


def test_gaussian_density_ratio_is_recovered():
    """On fresh samples from U: correlation with the true ratio > 0.98, mean relative error < 0.15 (measured 0.992
    and 0.083)."""
    xd, xu, true = gaussians(3000, seed=0)
    model = fit_density_ratio(xd, xu, l2=1e-4)
    _, test_u, _ = gaussians(3000, seed=1)
    est, want = model.log_ratio(test_u).exp(), true(test_u).exp()
    corr = torch.corrcoef(torch.stack([est, want]))[0, 1].item()
    rel = ((est - want).abs() / want).mean().item()
    assert corr > 0.98 and rel < 0.15, (corr, rel)


def test_identical_distributions_give_ratios_near_one():
    """Sampling noise only: with 2,000 samples a side the fitted log-ratio is within a few percent of 0."""
    xd, _, _ = gaussians(2000, seed=2)
    xu, _, _ = gaussians(2000, seed=3)
    r = fit_density_ratio(xd, xu, l2=1e-3).log_ratio(xu).exp()
    dev = (r - 1).abs()
    assert dev.mean().item() < 0.08 and dev.quantile(0.95).item() < 0.2, (dev.mean(), dev.quantile(0.95))


def test_clipping_and_bad_arguments():
    torch.testing.assert_close(clipped_ratio(torch.tensor([-5.0, 0.0, 5.0]), 0.5, 10.0), torch.tensor([0.5, 1.0, 10.0]))
    with pytest.raises(ConfigError, match="min_ratio"):
        clipped_ratio(torch.zeros(1), 2.0, 1.0)
    with pytest.raises(ValueError, match="both distributions"):
        fit_density_ratio(torch.zeros(0, 3), torch.zeros(4, 3))


WRITING = ["poem", "story", "essay", "letter", "song", "speech"]
CODING = ["python", "rust", "sql", "bash", "regex", "parser"]


def topic_records(n, share_writing, label, seed):
    """``n`` unpaired records; a prompt is a writing request with probability ``share_writing``, else a coding one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        writing = torch.rand(1, generator=g).item() < share_writing
        word = (WRITING if writing else CODING)[int(torch.randint(6, (1,), generator=g))]
        prompt = f"Please write a {word} about the sea" if writing else f"Fix my {word} code, it fails on line {i % 9}"
        out.append(PreferenceRecord(prompt=prompt, responses=[f"answer {i}"], labels=[label],
                                    meta={"writing": writing}))
    return out


def test_udm_transform_recovers_the_topic_mixture_ratio():
    """Desirable prompts are 80% writing, undesirable ones 20%: the ratio p_D/p_U is 0.8/0.2 = 4 on writing
    prompts and 0.2/0.8 = 0.25 on coding ones; the undesirable records' weights recover both within 15%."""
    recs = topic_records(1500, 0.8, True, seed=0) + topic_records(1500, 0.2, False, seed=1)
    out, rep = udm(recs, min_ratio=0.01, max_ratio=100.0)
    bad = [r for r in out if not r.labels[0]]
    writing = torch.tensor([r.weight for r in bad if r.meta["writing"]])
    coding = torch.tensor([r.weight for r in bad if not r.meta["writing"]])
    assert writing.mean().item() == pytest.approx(4.0, rel=0.15)
    assert coding.mean().item() == pytest.approx(0.25, rel=0.15)
    assert all(r.weight == 1.0 and "udm_ratio" not in r.meta for r in out if r.labels[0])
    assert all(r.meta["udm_ratio"] == r.weight for r in bad)
    assert rep["desirable"] == rep["undesirable"] == 1500 and rep["records_out"] == 3000
    assert 0.75 < rep["classifier_accuracy"] < 0.85  # the topic is all it can tell: 80% either way
    # the reweighted undesirable set has the desirable set's topic mix
    share = (writing.sum() / (writing.sum() + coding.sum())).item()
    assert share == pytest.approx(sum(r.meta["writing"] for r in recs[:1500]) / 1500, abs=0.05)


def test_udm_clips_multiplies_record_weights_and_reads_embeddings():
    recs = topic_records(300, 0.9, True, seed=2) + topic_records(300, 0.1, False, seed=3)
    recs = [PreferenceRecord(prompt=r.prompt, responses=r.responses, labels=r.labels, weight=2.0,
                             meta={**r.meta, "emb": [1.0 if r.meta["writing"] else -1.0, 0.5]}) for r in recs]
    out, rep = apply_transforms(recs, [{"name": "udm", "embedding": "emb", "min_ratio": 0.5, "max_ratio": 3.0}])
    bad = [r for r in out if not r.labels[0]]
    assert {round(r.meta["udm_ratio"], 6) for r in bad} == {0.5, 3.0}  # 9 and 1/9 clipped
    assert all(r.weight == 2.0 * r.meta["udm_ratio"] for r in bad)
    assert rep[0]["clipped_low"] + rep[0]["clipped_high"] == 300
    assert options_of("udm") == {"embedding": None, "dims": 1024, "l2": 1e-3, "min_ratio": 0.5, "max_ratio": 10.0,
                                 "sample_size": 4096}


def test_udm_is_deterministic_given_the_seed():
    recs = topic_records(200, 0.7, True, seed=4) + topic_records(200, 0.3, False, seed=5)
    a, _ = apply_transforms(recs, ["udm"], seed=3)
    b, _ = apply_transforms(recs, ["udm"], seed=3)
    assert [r.weight for r in a] == [r.weight for r in b]


def test_udm_refuses_pairs_one_class_and_bad_embeddings():
    pair = PreferenceRecord(prompt="p", responses=["a", "b"], ranks=[0, 1])
    with pytest.raises(TransformError, match=r"udm needs unpaired records \(labels\); record 0 has ranks"):
        udm([pair])
    with pytest.raises(TransformError, match="2 desirable and 0 undesirable"):
        udm(topic_records(2, 0.5, True, seed=0))
    recs = topic_records(3, 0.5, True, seed=0) + topic_records(3, 0.5, False, seed=1)
    with pytest.raises(TransformError, match=r"record 0 has no usable meta\['emb'\]"):
        udm(recs, embedding="emb")
    with pytest.raises(TransformError, match="max_ratio must be > 2"):
        udm(recs, min_ratio=2.0, max_ratio=1.0)
