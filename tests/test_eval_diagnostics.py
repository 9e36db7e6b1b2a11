"""Diagnostics (`alignkit.eval.diagnostics`, `alignkit eval --diagnose`): idealised ranking accuracy against hand
computations and the paper's likelihood-ratio form, gradient entanglement against a closed form and explicit
autograd, token-distribution shift on hand logits and on a model compared with itself."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignkit import cli
from alignkit.data.schema import PreferenceRecord, pair
from alignkit.errors import ConfigError, DataError
from alignkit.eval.accuracy import preference_accuracy
from alignkit.eval.diagnose import pair_alphas, pair_entanglement, token_shift
from alignkit.eval.diagnostics import (
    bradley_terry_alpha,
    entanglement,
    idealised_ranking,
    logp_gradient,
    sequence_logp,
    shift_fractions,
    token_ranks,
)

# ---- idealised ranking accuracy (Chen et al. 2024) ----

REF_W, REF_L = [-10.0, -5.0, -8.0, -3.0], [-8.0, -6.0, -8.0, -2.0]  # reference log-ratios −2, +1, 0, −1


def test_idealised_ranking_by_hand():
    # β = 1, α = 0.75: logit α / β = ln 3 = 1.0986 → margins −0.90, 2.10, 1.10, 0.10: three of four right
    r = idealised_ranking(REF_W, REF_L, 0.75, beta=1.0)
    assert r["accuracy"] == 0.75 and r["reference_accuracy"] == 0.375  # the reference: 0 + 1 + ½ (tie) + 0
    assert r["margins"] == pytest.approx([-2 + math.log(3), 1 + math.log(3), math.log(3), -1 + math.log(3)])
    # β = 0.5 doubles the push (2.197 > 2): every pair right
    assert idealised_ranking(REF_W, REF_L, 0.75, beta=0.5)["accuracy"] == 1.0
    # α = ½ carries no preference: the optimum ranks as the reference does; α = 1 always wins
    assert idealised_ranking(REF_W, REF_L, 0.5, beta=0.1)["accuracy"] == 0.375
    assert idealised_ranking(REF_W, REF_L, 1.0, beta=100.0)["accuracy"] == 1.0
    # per-pair α at β = 1: pair 1 needs α > σ(2) = 0.881, pair 4 α > σ(1) = 0.731
    assert idealised_ranking(REF_W, REF_L, [0.88, 0.6, 0.6, 0.75], beta=1.0)["accuracy"] == 0.75
    assert idealised_ranking(REF_W, REF_L, [0.89, 0.6, 0.6, 0.75], beta=1.0)["accuracy"] == 1.0


def test_idealised_ranking_matches_the_papers_likelihood_ratio_condition():
    # Theorem 3.1: right iff π_ref(y_w)/π_ref(y_l) > ((1 − α)/α)^(1/β)
    g = torch.Generator().manual_seed(0)
    w, lo = (-3 * torch.rand(200, generator=g)).tolist(), (-3 * torch.rand(200, generator=g)).tolist()
    alphas = (0.5 + 0.49 * torch.rand(200, generator=g)).tolist()
    for beta in (0.1, 0.5, 2.0):
        expected = sum(math.exp(a - b) > ((1 - al) / al) ** (1 / beta) for a, b, al in zip(w, lo, alphas)) / 200
        assert idealised_ranking(w, lo, alphas, beta)["accuracy"] == pytest.approx(expected)


def test_idealised_ranking_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        idealised_ranking(REF_W, REF_L, 0.7, beta=0.0)
    with pytest.raises(ValueError, match="probability"):
        idealised_ranking(REF_W, REF_L, 1.5, beta=1.0)
    with pytest.raises(ValueError, match="one alpha per pair"):
        idealised_ranking(REF_W, REF_L, [0.6], beta=1.0)


def test_pair_alphas_from_p_scores_or_a_constant():
    records = [PreferenceRecord(prompt="p", responses=["a", "b"], ranks=[0, 1], meta={"p": 0.8}),
               PreferenceRecord(prompt="p", responses=["a", "b"], ranks=[1, 0], meta={"p": 0.3}),  # p is about "a"
               PreferenceRecord(prompt="p", responses=["a", "b"], scores=[1.0, 3.0])]
    alphas, source = pair_alphas(records, None, temperature=2.0)
    assert alphas == pytest.approx([0.8, 0.7, 1 / (1 + math.exp(-1.0))])
    assert "p" in source and "scores" in source
    assert bradley_terry_alpha(3.0, 1.0, 2.0) == pytest.approx(alphas[2])
    assert pair_alphas(records, 0.6, 1.0)[0] == [0.6] * 3
    bare = PreferenceRecord(prompt="p", responses=["a", "b"], ranks=[0, 1], origin="data.jsonl line 4")
    with pytest.raises(DataError, match="data.jsonl line 4: no 'p' and no scores.*--alpha"):
        pair_alphas([bare], None, 1.0)


def test_diagnose_ranking_cli(tiny_path, tiny, pairs_path, tmp_path, capsys):
    # α = ½: the optimum keeps the reference's ranking, so a model equal to the reference has a gap of 0
    out = tmp_path / "rank"
    cli.main(["eval", "--diagnose", "ranking", "--reference", tiny_path, "--models", tiny_path, "--names", "same",
              "--preferences", pairs_path, "--alpha", "0.5", "--max-records", "12", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    model, tok = tiny
    from alignkit.data.io import read_records

    own = preference_accuracy(model, tok, read_records(pairs_path).records[:12])["likelihood"]["accuracy"]
    assert res["idealised"][0]["accuracy"] == pytest.approx(own) == pytest.approx(res["reference_accuracy"])
    assert res["models"][0]["alignment_gap"] == pytest.approx(0.0)
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "idealised at β = 0.1" in capsys.readouterr().out
    # one β per model: each model's gap is against the optimum at its own β
    cli.main(["eval", "--diagnose", "ranking", "--reference", tiny_path, "--models", tiny_path, tiny_path,
              "--preferences", pairs_path, "--alpha", "0.6", "--beta", "0.1", "100", "--max-records", "12",
              "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert [i["beta"] for i in res["idealised"]] == [0.1, 100.0]
    # α > ½: a smaller β pushes every pair further towards its winner, so the optimum ranks no fewer pairs right
    assert res["idealised"][0]["accuracy"] >= res["idealised"][1]["accuracy"] >= res["reference_accuracy"]
    assert [m["alignment_gap"] for m in res["models"]] == pytest.approx(
        [i["accuracy"] - own for i in res["idealised"]])
    # α = 1: every pair right at the optimum
    cli.main(["eval", "--diagnose", "ranking", "--reference", tiny_path, "--preferences", pairs_path, "--alpha", "1",
              "--max-records", "12", "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["idealised"][0]["accuracy"] == 1.0
    capsys.readouterr()
    # paired rows without p or scores: a one-line error naming the row
    assert cli.main(["eval", "--diagnose", "ranking", "--reference", tiny_path, "--preferences", pairs_path,
                     "--out", str(out)]) == 2
    assert "pairs.jsonl line 1: no 'p' and no scores to give P(chosen ≻ rejected); pass --alpha" in capsys.readouterr().err
    assert cli.main(["eval", "--diagnose", "ranking", "--preferences", pairs_path, "--out", str(out)]) == 2
    assert "needs --reference" in capsys.readouterr().err


# ---- gradient entanglement (Yuan et al. 2024) ----


class Unigram(torch.nn.Module):
    """log π(y_t | anything) = log softmax(θ)[y_t]: ∇_θ log π(a) = e_a − softmax(θ)."""

    def __init__(self, v: int):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(v))

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.theta.expand(*input_ids.shape, -1))


def test_entanglement_closed_form_on_a_unigram_model():
    # uniform p over V: g_a = e_a − 1/V, ⟨g_a, g_b⟩ = −1/V, ‖g‖² = 1 − 1/V, cosine −1/(V − 1)
    v, m = 8, Unigram(8)
    [ga] = logp_gradient(m, torch.tensor([0, 3]), 1, [m.theta])
    [gb] = logp_gradient(m, torch.tensor([0, 5]), 1, [m.theta])
    e = entanglement(ga, gb)
    assert e["inner"] == pytest.approx(-1 / v) and e["norm_chosen"] ** 2 == pytest.approx(1 - 1 / v)
    assert e["cosine"] == pytest.approx(-1 / (v - 1))
    assert not e["chosen_falls"] and not e["rejected_rises"]


def test_entanglement_known_sign_and_the_first_order_step():
    # chosen "a", rejected "a a": g_l = 2 g_w, ⟨g_w, g_l⟩ = 2‖g_w‖² > ‖g_w‖² → a margin step lowers log π(y_w)
    m = Unigram(6)
    with torch.no_grad():
        m.theta.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0, 0.5, -0.4]))
    chosen, rejected = torch.tensor([1, 2]), torch.tensor([1, 2, 2])
    [gw], [gl] = logp_gradient(m, chosen, 1, [m.theta]), logp_gradient(m, rejected, 1, [m.theta])
    e = entanglement(gw, gl)
    assert e["cosine"] == pytest.approx(1.0) and e["chosen_falls"] and not e["rejected_rises"]
    before = float(sequence_logp(m, chosen, 1).detach())
    with torch.no_grad():
        m.theta.add_(1e-3 * (gw - gl))
    assert float(sequence_logp(m, chosen, 1).detach()) < before  # the chosen log-prob really fell


def test_pair_entanglement_matches_explicit_autograd(tiny):
    model, tok = tiny
    pairs = [pair("The movie was", " great fun.", " boring."), pair("The plot was", " good.", " dull and awful.")]
    rows, n_params = pair_entanglement(model, tok, pairs, params=r"lm_head|embed")
    chosen = [p for n, p in model.named_parameters() if "lm_head" in n or "embed" in n]
    assert n_params == sum(p.numel() for p in chosen)
    from alignkit.data.tokenize import TokenizeConfig, tokenize_records

    items, _ = tokenize_records(pairs, tok, TokenizeConfig(max_length=None))
    model.eval()
    for row, item in zip(rows, items):
        grads = []
        for k in (0, 1):
            ids = torch.tensor(item.full_ids(k))
            start = len(item.prompt_ids) + item.score_start[k]
            model.zero_grad()
            logits = model(input_ids=ids[None]).logits[0]
            (-torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[start:], reduction="sum")).backward()
            grads.append(torch.cat([p.grad.reshape(-1).double() for p in chosen]))
        model.zero_grad()
        assert row["inner"] == pytest.approx(float(grads[0] @ grads[1]), rel=1e-5)
        assert row["norm_chosen"] == pytest.approx(float(grads[0].norm()), rel=1e-5)
        assert row["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(grads[0], grads[1], 0)),
                                              rel=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # restored
    with pytest.raises(ConfigError, match="matches no parameter"):
        pair_entanglement(model, tok, pairs, params="no_such_weight")


def test_diagnose_entanglement_cli(tiny_path, pairs_path, tmp_path, capsys):
    out = tmp_path / "ent"
    cli.main(["eval", "--diagnose", "entanglement", "--models", tiny_path, "--preferences", pairs_path,
              "--params", r"layers\.0\.", "--max-records", "4", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    m = res["models"][0]
    assert len(m["pairs"]) == 4 and -1 <= m["mean_cosine"] <= 1
    assert m["chosen_falls"] == sum(p["chosen_falls"] for p in m["pairs"]) / 4
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "mean cosine" in capsys.readouterr().out


# ---- token-distribution shift (Lin et al. 2023) ----


def test_token_ranks_and_shift_fractions_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, -1.0], [4.0, 3.0, 2.0, 1.0]])
    assert token_ranks(logits, torch.tensor([2, 1, 3])).tolist() == [2, 2, 4]  # a tie does not push a token down
    f = shift_fractions([1, 2, 3, 4, 1])
    assert (f["unshifted"], f["marginal"], f["shifted"], f["positions"]) == pytest.approx((0.4, 0.4, 0.2, 5))
    assert shift_fractions([1, 2, 3, 4, 1], marginal_rank=1)["shifted"] == pytest.approx(0.6)


def test_token_shift_of_a_model_against_itself_is_all_unshifted(tiny):
    model, tok = tiny
    prompts = ["The movie was", "The plot was", "The story"]
    same = token_shift(model, model, tok, prompts, max_new_tokens=12)
    assert same["unshifted"] == 1.0 and same["positions"] > 10 and same["top_shifted"] == []
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    moved = token_shift(model, noisy, tok, prompts, max_new_tokens=12)
    assert moved["unshifted"] < 1.0
    assert moved["unshifted"] + moved["marginal"] + moved["shifted"] == pytest.approx(1.0)
    ranks = [r for a in moved["answers"] for r in a["ranks"]]
    assert moved["shifted"] == pytest.approx(sum(r > 3 for r in ranks) / len(ranks))


def test_diagnose_token_shift_cli(tiny_path, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The movie was\nThe plot was\n")
    out = tmp_path / "shift"
    cli.main(["eval", "--diagnose", "token-shift", "--reference", tiny_path, "--models", tiny_path, "--prompts",
              str(prompts), "--max-new-tokens", "8", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["models"][0]["unshifted"] == 1.0
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "unshifted 1.000" in capsys.readouterr().out
    assert cli.main(["eval", "--diagnose", "token-shift", "--reference", tiny_path, "--models", tiny_path,
                     "--out", str(out)]) == 2
    assert "needs --prompts" in capsys.readouterr().err
