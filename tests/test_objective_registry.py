"""Registry: lookup, hyper-parameter checking, declared data needs, and weighted composition."""

import math

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.objectives import SequenceStats, available, build_objective, get_objective

D = torch.float64

HPARAMS = {
    "dpo": {"beta", "length_normalize"},
    "soft_dpo": {"beta", "target", "temperature"},
    "cdpo": {"beta", "label_smoothing"},
    "rdpo": {"beta", "flip_rate"},
    "ipo": {"beta", "length_normalize"},
    "hinge": {"beta"},
    "fdpo": {"beta", "divergence", "alpha"},
    "simpo": {"beta", "gamma"},
    "orpo": {"lam"},
    "cpo": {"beta", "sft_weight"},
    "rpo": {"beta", "alpha"},
    "asft": {"beta"},
    "jpo": {"beta"},
    "poft": {"beta"},
    "sft": {"length_normalize"},
}
NEEDS_REFERENCE = {"dpo", "soft_dpo", "cdpo", "rdpo", "ipo", "hinge", "fdpo", "rpo", "jpo", "poft"}


def stats(ref=True):
    return SequenceStats(
        logps=torch.tensor([[-3.0, -5.0], [-4.0, -2.5]], dtype=D, requires_grad=True),
        ref_logps=torch.tensor([[-3.5, -4.0], [-3.5, -3.5]], dtype=D) if ref else None,
        lengths=torch.tensor([[2.0, 5.0], [3.0, 4.0]], dtype=D),
        ranks=torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D),
    )


def test_every_objective_is_registered_with_its_hyper_parameters_and_needs():
    assert set(HPARAMS) <= set(available())
    for name, hp in HPARAMS.items():
        spec = get_objective(name)
        assert set(spec.defaults) == hp, name
        assert spec.needs_reference == (name in NEEDS_REFERENCE), name
        assert not spec.needs_token_logps and not spec.stateful
    for name in ("dpo", "simpo", "orpo", "cpo", "asft"):
        spec = get_objective(name)
        assert (spec.label_kinds, spec.min_responses, spec.max_responses) == (("ranks", "scores"), 2, 2)
    assert get_objective("jpo").max_responses is None
    assert get_objective("sft").label_kinds == ("ranks", "scores", "labels")


def test_call_with_explicit_hyper_parameters():
    out = get_objective("dpo")(stats(), beta=0.1)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-14)  # both rows: Delta = 1.5
    assert out.per_example.shape == (2,)


def test_unknown_hyper_parameter_names_the_allowed_ones():
    with pytest.raises(TypeError, match=r"allowed: \['beta', 'label_smoothing'\]"):
        get_objective("cdpo")(stats(), betta=0.1)
    with pytest.raises(ValueError, match="did you mean.*'beta'"):
        build_objective({"name": "simpo", "betaa": 1.0})


def test_unknown_name_suggests_a_close_match():
    with pytest.raises(ConfigError, match="Did you mean 'simpo'"):  # a ConfigError: one line on the command line
        get_objective("simp0")


@pytest.mark.parametrize("name", sorted(NEEDS_REFERENCE))
def test_reference_methods_say_so_when_ref_logps_missing(name):
    with pytest.raises(ValueError, match="reference"):
        get_objective(name)(stats(ref=False))


@pytest.mark.parametrize("name", sorted(set(HPARAMS) - NEEDS_REFERENCE))
def test_reference_free_methods_run_without_reference(name):
    out = get_objective(name)(stats(ref=False))
    assert torch.isfinite(out.loss) and out.loss.item() > 0


def test_build_objective_sums_weighted_terms_and_prefixes_metrics():
    obj = build_objective([{"name": "dpo", "weight": 1, "beta": 0.2}, {"name": "sft", "weight": 0.1}])
    assert obj.name == "dpo+sft" and obj.needs_reference
    st = stats()
    out = obj(st)
    dpo = -math.log(1 / (1 + math.exp(-0.2 * 1.5)))
    sft = (3.0 / 2 + 2.5 / 4) / 2  # mean-token NLL of each row's chosen response
    assert out.loss.item() == pytest.approx(dpo + 0.1 * sft, rel=1e-14)
    torch.testing.assert_close(out.per_example, torch.tensor([dpo + 0.1 * 1.5, dpo + 0.1 * 0.625], dtype=D))
    (g,) = torch.autograd.grad(out.loss, st.logps)
    d = -0.2 / (1 + math.exp(0.2 * 1.5)) / 2  # d dpo / d s(w), averaged over 2 rows
    expect = [[d - 0.1 / 2 / 2, -d], [-d, d - 0.1 / 4 / 2]]
    torch.testing.assert_close(g, torch.tensor(expect, dtype=D))
    assert out.metrics["dpo/loss"] == pytest.approx(dpo) and out.metrics["sft/loss"] == pytest.approx(sft)
    assert out.metrics["dpo/rewards/margin"] == pytest.approx(0.3)
    assert out.metrics["sft/nll"] == pytest.approx(sft)
    assert {"dpo/rewards/chosen", "dpo/rewards/accuracy", "dpo/logps/chosen", "sft/logps/chosen"} <= set(
        out.metrics
    )


def test_shared_hyper_parameters_bind_only_where_accepted():
    obj = build_objective(["simpo", {"name": "orpo"}], beta=3.0, gamma=0.0)
    assert obj.terms[0].hparams == {"beta": 3.0, "gamma": 0.0} and obj.terms[1].hparams == {}


def test_check_data_errors_name_the_problem():
    dpo = build_objective("dpo")
    with pytest.raises(ValueError, match="ranks or scores.*'labels'"):
        dpo.check_data("labels", 2, 2)
    with pytest.raises(ValueError, match="at most 2"):
        dpo.check_data("ranks", 2, 4)
    with pytest.raises(ValueError, match="at least 2"):
        dpo.check_data("scores", 1, 2)
    with pytest.raises(ValueError, match="needs reference"):
        dpo.check_data("ranks", 2, 2, has_reference=False)
    build_objective("simpo").check_data("ranks", 2, 2, has_reference=False)
    build_objective("jpo").check_data("scores", 2, 8)
    build_objective(["poft", "sft"]).check_data("labels", 1, 3)
    with pytest.raises(ValueError, match="'sft'|'dpo'"):
        build_objective(["dpo", "sft"]).check_data("labels", 2, 2)
