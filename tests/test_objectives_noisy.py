"""lcpo (EM over label correctness): the E-step posterior and the weighted loss against their closed forms, the
flip-rate estimate converging to the true rate on margins drawn from a known model (fixed, and learned jointly
with a linear reward), and its per-record state surviving a save/load and a trainer resume."""

import io
import math

import pytest
import torch
from closed_forms import T, lsig, sig

from alignkit.config import TrainConfig
from alignkit.engine.trainer import Trainer
from alignkit.errors import ConfigError
from alignkit.objectives import SequenceStats, build_objective, get_objective

BETA = 0.5


def mk(delta, index, ranks=None, requires_grad=True):
    """Pairs with log-ratios (Δ, 0): ``logps = [[Δ_b, 0]]``, reference 0, column 0 chosen unless ``ranks``."""
    d = torch.as_tensor(delta, dtype=torch.float64)
    logps = torch.stack([d, torch.zeros_like(d)], dim=1)
    if requires_grad and not logps.requires_grad:
        logps.requires_grad_(True)
    ranks = torch.tensor([[0.0, 1.0]] * len(d), dtype=torch.float64) if ranks is None else T(ranks)
    return SequenceStats(logps=logps, ref_logps=torch.zeros_like(logps.detach()), ranks=ranks,
                         extra={"record_index": torch.as_tensor(index, dtype=torch.long)})


def test_value_gradient_and_posterior_match_the_closed_form():
    """w = (1−ε)σ(z) / ((1−ε)σ(z) + εσ(−z)); loss −w·logσ(z) − (1−w)·logσ(−z); ∂/∂s(w) = β(σ(z) − w)/B."""
    eps, deltas = 0.2, [1.0, -3.0, 6.0]
    state = {}
    st = mk(deltas, [10, 11, 12])
    out = get_objective("lcpo")(st, state=state, beta=BETA, flip_rate=eps)
    (g,) = torch.autograd.grad(out.loss, st.logps)
    ws = []
    for b, d in enumerate(deltas):
        z = BETA * d
        w = (1 - eps) * sig(z) / ((1 - eps) * sig(z) + eps * sig(-z))
        ws.append(w)
        assert out.per_example[b].item() == pytest.approx(-w * lsig(z) - (1 - w) * lsig(-z), rel=1e-12)
        assert g[b, 0].item() == pytest.approx(BETA * (sig(z) - w) / 3, rel=1e-10)
        assert g[b, 1].item() == pytest.approx(-BETA * (sig(z) - w) / 3, rel=1e-10)
    assert out.metrics["posterior"] == pytest.approx(sum(ws) / 3)
    assert state["flip_rate"] == pytest.approx(1 - sum(ws) / 3) and out.metrics["flip_rate"] == state["flip_rate"]
    assert state["posteriors"] == {10: pytest.approx(ws[0]), 11: pytest.approx(ws[1]), 12: pytest.approx(ws[2])}


def test_flip_rate_zero_is_dpo_and_the_estimate_stays_zero():
    st, ref = mk([1.0, -2.0], [0, 1]), mk([1.0, -2.0], [0, 1])
    state = {}
    a = get_objective("lcpo")(st, state=state, beta=BETA, flip_rate=0.0)
    b = get_objective("dpo")(ref, beta=BETA)
    (ga,), (gb,) = torch.autograd.grad(a.loss, st.logps), torch.autograd.grad(b.loss, ref.logps)
    torch.testing.assert_close(a.per_example, b.per_example)
    torch.testing.assert_close(ga, gb)
    assert state["flip_rate"] == 0.0


def test_a_record_seen_again_replaces_its_posterior():
    state = {}
    get_objective("lcpo")(mk([4.0, 4.0], [0, 1]), state=state, beta=1.0, flip_rate=0.3)
    eps1 = state["flip_rate"]
    get_objective("lcpo")(mk([-4.0], [0]), state=state, beta=1.0, flip_rate=0.3)
    w0, w1 = sig(-4.0 + math.log(0.7 / 0.3)), sig(4.0 + math.log(0.7 / 0.3))
    w0_new = sig(-4.0 + math.log((1 - eps1) / eps1))
    assert len(state["posteriors"]) == 2 and state["posteriors"][1] == pytest.approx(w1)
    assert state["posteriors"][0] == pytest.approx(w0_new) and w0_new != pytest.approx(w0)
    assert state["flip_rate"] == pytest.approx(1 - (w0_new + w1) / 2)
    assert state["total"] == pytest.approx(w0_new + w1)


def noisy_pairs(n, flip_rate, seed):
    """Margins m ~ N(0, 3²) of a Bradley–Terry model: the true winner is drawn with P = σ(m), then its label is
    flipped with probability ``flip_rate``. Returns z, the calibrated model's margin in the recorded direction."""
    g = torch.Generator().manual_seed(seed)
    m = 3.0 * torch.randn(n, generator=g, dtype=torch.float64)
    first_wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(m)
    flipped = torch.rand(n, generator=g, dtype=torch.float64) < flip_rate
    recorded_first = first_wins ^ flipped
    return torch.where(recorded_first, m, -m), flipped


@pytest.mark.parametrize("true_rate", [0.2, 0.35])
def test_flip_rate_estimate_converges_on_a_calibrated_model(true_rate):
    """EM over 30 passes of 4000 pairs in batches of 250 recovers the flip rate within ±0.05 from either side."""
    z, flipped = noisy_pairs(4000, true_rate, seed=1)
    for init in (0.05, 0.44):
        state = {}
        for _ in range(30):
            for start in range(0, len(z), 250):
                idx = list(range(start, start + 250))
                get_objective("lcpo")(mk(z[idx], idx, requires_grad=False), state=state, beta=1.0, flip_rate=init)
        assert abs(state["flip_rate"] - true_rate) < 0.05, (init, state["flip_rate"])
        # the posteriors single out the flipped labels: mean w of flipped pairs is far below that of clean ones
        w = torch.tensor([state["posteriors"][i] for i in range(len(z))], dtype=torch.float64)
        assert w[flipped].mean() < 0.5 < w[~flipped].mean()


def test_flip_rate_converges_while_a_linear_reward_is_learned():
    """The full loop: a linear implicit reward θ·x trained by gradient descent on lcpo's loss from noisy labels
    (flip rate 0.25) recovers the true θ's direction, and ε converges to 0.25 ± 0.05."""
    g = torch.Generator().manual_seed(3)
    n, d, true_rate = 3000, 4, 0.25
    theta_true = torch.tensor([2.0, -1.5, 1.0, 0.5], dtype=torch.float64)
    xa, xb = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    m = (xa - xb) @ theta_true
    first_wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(m)
    recorded_first = first_wins ^ (torch.rand(n, generator=g, dtype=torch.float64) < true_rate)
    ranks = torch.where(recorded_first[:, None], torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).double()
    theta = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    state = {}
    for _ in range(40):
        for start in range(0, n, 300):
            idx = list(range(start, start + 300))
            logps = torch.stack([xa[idx] @ theta, xb[idx] @ theta], dim=1)
            st = SequenceStats(logps=logps, ref_logps=torch.zeros_like(logps.detach()), ranks=ranks[idx],
                               extra={"record_index": torch.tensor(idx)})
            out = get_objective("lcpo")(st, state=state, beta=1.0, flip_rate=0.1)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    cos = float(theta.detach() @ theta_true / (theta.detach().norm() * theta_true.norm()))
    assert cos > 0.99
    assert abs(state["flip_rate"] - true_rate) < 0.05, state["flip_rate"]


def test_state_survives_save_and_load_and_resumes_to_the_same_losses():
    batches = [mk([1.0, -2.0], [0, 1]), mk([3.0, 0.5], [2, 3]), mk([-1.0, 2.0], [0, 3])]
    straight = build_objective("lcpo", beta=BETA)
    losses = [straight(b).loss.item() for b in batches]
    first = build_objective("lcpo", beta=BETA)
    first(batches[0])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = build_objective("lcpo", beta=BETA)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert [resumed(b).loss.item() for b in batches[1:]] == losses[1:]
    assert resumed.state_dict() == straight.state_dict()


def test_state_dict_is_a_snapshot_that_later_calls_leave_alone():
    obj = build_objective("lcpo", beta=BETA)
    obj(mk([1.0], [0]))
    saved = obj.state_dict()
    obj(mk([-5.0], [0]))  # replaces record 0's posterior in the live table
    assert saved["0:lcpo"]["posteriors"][0] == pytest.approx(sig(BETA + math.log(0.9 / 0.1)))
    obj.load_state_dict(saved)
    assert obj.state_dict() == saved


def test_bad_options_and_missing_record_index_are_clear_errors():
    with pytest.raises(ConfigError, match="max_flip_rate"):
        get_objective("lcpo")(mk([1.0], [0]), max_flip_rate=0.5)
    with pytest.raises(ConfigError, match="flip_rate must be in"):
        get_objective("lcpo")(mk([1.0], [0]), flip_rate=0.46)
    st = mk([1.0], [0])
    st.extra.clear()
    with pytest.raises(ValueError, match="record_index"):
        get_objective("lcpo")(st)


def test_trainer_resume_restores_the_posteriors_and_continues_exactly(tiny_path, pairs_path, tmp_path):
    def cfg(out, **kw):
        return TrainConfig(model=tiny_path, data=pairs_path, objective="lcpo", hparams={"flip_rate": 0.2}, beta=0.5,
                           batch_size=4, max_steps=6, lr=1e-3, output_dir=str(out), progress=False, seed=0, **kw)

    straight = Trainer(cfg(tmp_path / "a"))
    res_a = straight.train()
    first = Trainer(cfg(tmp_path / "b"))
    for _ in range(3):
        first.step()
    first.save()
    mid = first.objective.state_dict()["0:lcpo"]
    assert len(mid["posteriors"]) > 0 and mid["flip_rate"] != 0.2
    del first
    resumed = Trainer(cfg(tmp_path / "b", resume_from="latest"))
    res_b = resumed.train()
    assert [h["loss"] for h in res_b.history] == [h["loss"] for h in res_a.history[3:]]
    assert resumed.objective.state_dict() == straight.objective.state_dict()
    assert "flip_rate" in res_a.history[-1]
