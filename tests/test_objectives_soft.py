"""soft_dpo (soft-label / preference-strength DPO) against its closed form and the properties the issue names:
p = 1 is dpo, p = 1 − ε is cdpo with label_smoothing ε, the gradient vanishes at σ(βΔ) = p; the Bradley–Terry
link from score gaps; and the data path: a ``p`` column read, checked (file, row, field) and collated."""

import json
import math

import pytest
import torch
from closed_forms import T, lsig, sig

from alignkit.data.dataset import TokenizedDataset
from alignkit.data.io import BadRowError, read_records
from alignkit.data.tokenize import TokenizeConfig
from alignkit.errors import DataError
from alignkit.objectives import SequenceStats, get_objective

S = [[-3.0, -5.0], [-4.0, -2.5]]
R = [[-3.5, -4.0], [-3.5, -3.5]]
RK = [[0.0, 1.0], [1.0, 0.0]]  # row 1's chosen response is column 1; Δ = 1.5 in both rows
W_COL = [0, 1]
BETA = 0.4


def mk(logps=S, ref=R, ranks=RK, scores=None, **extra):
    return SequenceStats(logps=T(logps, requires_grad=True), ref_logps=T(ref), ranks=T(ranks), scores=T(scores),
                         extra={k: T(v) for k, v in extra.items()})


def run(name, stats, **hp):
    out = get_objective(name)(stats, **hp)
    (grad,) = torch.autograd.grad(out.loss, stats.logps)
    return out, grad


def test_value_and_gradient_match_the_closed_form():
    """−p·logσ(z) − (1−p)·logσ(−z), z = βΔ; d/ds(w) = β(σ(z) − p) / B, d/ds(l) the opposite."""
    p = [0.8, 0.3]
    out, g = run("soft_dpo", mk(p=p), beta=BETA)
    z = BETA * 1.5
    per = [-q * lsig(z) - (1 - q) * lsig(-z) for q in p]
    torch.testing.assert_close(out.per_example, T(per))
    want = torch.zeros(2, 2, dtype=torch.float64)
    for b, q in enumerate(p):
        want[b, W_COL[b]] = BETA * (sig(z) - q) / 2
        want[b, 1 - W_COL[b]] = -BETA * (sig(z) - q) / 2
    torch.testing.assert_close(g, want)
    assert out.metrics["target_p"] == pytest.approx(0.55)
    assert out.metrics["rewards/margin"] == pytest.approx(BETA * 1.5)


def test_p_one_is_dpo_and_one_minus_eps_is_cdpo():
    soft, g_soft = run("soft_dpo", mk(p=[1.0, 1.0]), beta=BETA)
    dpo, g_dpo = run("dpo", mk(), beta=BETA)
    torch.testing.assert_close(soft.per_example, dpo.per_example)
    torch.testing.assert_close(g_soft, g_dpo)
    for eps in (0.05, 0.2, 0.5):
        soft, g_soft = run("soft_dpo", mk(p=[1 - eps, 1 - eps]), beta=BETA)
        cdpo, g_cdpo = run("cdpo", mk(), beta=BETA, label_smoothing=eps)
        torch.testing.assert_close(soft.per_example, cdpo.per_example)
        torch.testing.assert_close(g_soft, g_cdpo)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.73, 0.99])
def test_gradient_vanishes_where_the_model_agrees_with_p(p):
    """At βΔ = log(p/(1−p)) (σ(βΔ) = p) the gradient is 0 and the loss is the binary entropy H(p), its minimum."""
    delta = math.log(p / (1 - p)) / BETA
    logps = [[-2.0 + delta, -2.0]]  # ρ(w) = Δ, ρ(l) = 0
    out, g = run("soft_dpo", mk(logps, [[-2.0, -2.0]], [[0.0, 1.0]], p=[p]), beta=BETA)
    assert g.abs().max().item() < 1e-12
    assert out.loss.item() == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), rel=1e-12)
    for step in (-0.3, 0.3):  # either side is higher
        worse, _ = run("soft_dpo", mk([[-2.0 + delta + step, -2.0]], [[-2.0, -2.0]], [[0.0, 1.0]], p=[p]), beta=BETA)
        assert worse.loss.item() > out.loss.item()


def test_scores_target_is_a_bradley_terry_link_on_the_gap():
    """target=scores: p = σ(gap / temperature), the gap from extra['margin'] where given, else |s(w) − s(l)|."""
    tau = 0.5
    scores = [[2.0, 1.5], [0.0, 3.0]]  # gaps 0.5 and 3.0 (row 1: column 1 is chosen)
    out, _ = run("soft_dpo", mk(ranks=None, scores=scores), beta=BETA, target="scores", temperature=tau)
    z = BETA * 1.5
    want = [-q * lsig(z) - (1 - q) * lsig(-z) for q in (sig(0.5 / tau), sig(3.0 / tau))]
    torch.testing.assert_close(out.per_example, T(want))
    margin = [1.0, math.nan]  # row 0 takes its margin, row 1 falls back to the score gap
    out, _ = run("soft_dpo", mk(ranks=None, scores=scores, margin=margin), beta=BETA, target="scores", temperature=tau)
    assert out.metrics["target_p"] == pytest.approx((sig(1.0 / tau) + sig(3.0 / tau)) / 2)
    # a huge temperature pulls every target to ½: the loss is then symmetric in Δ
    flat, _ = run("soft_dpo", mk(margin=[1.0, 2.0]), beta=BETA, target="scores", temperature=1e12)
    assert flat.per_example.tolist() == pytest.approx([-0.5 * lsig(z) - 0.5 * lsig(-z)] * 2, rel=1e-10)


def test_missing_targets_and_bad_options_are_one_line_errors():
    with pytest.raises(DataError, match=r"target=p\): 1 of the 2 pairs .* no target probability; give every pair a 'p'"):
        get_objective("soft_dpo")(mk(p=[0.7, math.nan]))
    with pytest.raises(DataError, match=r"target=scores\): 2 of the 2 pairs"):
        get_objective("soft_dpo")(mk(), target="scores")
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        get_objective("soft_dpo")(mk(p=[1.2, 0.5]))
    with pytest.raises(ValueError, match="target must be one of"):
        get_objective("soft_dpo")(mk(p=[1.0, 1.0]), target="judge")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        get_objective("soft_dpo")(mk(margin=[1.0, 1.0]), target="scores", temperature=0.0)
    # a tied pair is masked (as in every pair objective) and needs no p
    out = get_objective("soft_dpo")(mk(ranks=[[0.0, 1.0], [0.0, 0.0]], p=[0.9, math.nan]))
    assert out.per_example[1].item() == 0.0


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_p_column_reaches_the_loss_as_extra_p(tmp_path, tiny):
    _, tok = tiny
    rows = [{"prompt": "The movie was", "chosen": " great.", "rejected": " awful.", "p": 0.9},
            {"prompt": "The plot was", "chosen": " fun.", "rejected": " dull.", "p": 1},
            {"prompt": "The film was", "chosen": " good.", "rejected": " bad."}]
    records = read_records(write(tmp_path / "soft.jsonl", rows)).records
    assert [r.meta.get("p") for r in records] == [0.9, 1.0, None]
    batch = TokenizedDataset.build(records, tok, TokenizeConfig(), extras=("p",)).collate([0, 1, 2], tok.pad_token_id,
                                                                                          "padded", 256)
    torch.testing.assert_close(batch.extra["p"][:2], torch.tensor([0.9, 1.0]))
    assert math.isnan(batch.extra["p"][2].item())


@pytest.mark.parametrize("value, detail", [(1.5, "must be a probability in [0, 1]"), (-0.1, "in [0, 1]"),
                                           ("high", "must be a number"), (None, None)])
def test_bad_p_is_a_data_error_naming_file_line_and_field(tmp_path, value, detail):
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "p": 0.5}
    path = write(tmp_path / "data.jsonl", [good, {**good, "p": value}])
    if detail is None:  # null: no soft label for that row (the objective asks for one when it needs it)
        assert read_records(path).records[1].meta.get("p") is None
        return
    with pytest.raises(BadRowError) as e:
        read_records(path)
    assert str(e.value).startswith("data.jsonl line 2, field 'p': ") and detail in str(e.value)


def test_nan_p_and_csv_text_p(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "p": NaN}\n')
    with pytest.raises(BadRowError, match=r"data.jsonl line 1, field 'p': nan \(not finite\)"):
        read_records(path)
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,chosen,rejected,p\nx,c,r,0.25\ny,c,r,2\n")
    with pytest.raises(BadRowError, match=r"data.csv row 2 \(line 3\), field 'p': must be a probability"):
        read_records(csv)
    csv.write_text("prompt,chosen,rejected,p\nx,c,r,0.25\n")
    assert read_records(csv).records[0].meta["p"] == 0.25
