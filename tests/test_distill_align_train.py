"""adpa and aligndistil through the trainer: the teacher_ref model's buckets reach the objectives (cached with
the teacher's, equal to the live ones); zero advantage makes adpa kd x distill; aligndistil whose target is the
policy (teacher = policy, weight 1) has zero loss and gradient; aligndistil training lowers its loss; teacher_ref
without a reader is an error."""

import pytest
from safetensors import safe_open

from alignkit.config import TrainConfig
from alignkit.engine.trainer import Trainer
from alignkit.errors import ConfigError
from alignkit.models.tiny import build_tiny


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return str(build_tiny(tmp_path_factory.mktemp("teacher"), seed=7))


def cfg(tiny_path, pairs_path, out, objective, teacher, **kw):
    base = dict(model=tiny_path, data=pairs_path, objective=objective, teacher=teacher, teacher_top_k=8, batch_size=16,
                max_steps=1, lr=1e-3, output_dir=str(out), progress=False, seed=0, dtype="float32")
    return TrainConfig(**{**base, **kw})


def test_adpa_with_zero_advantage_is_kd_times_distill(tiny_path, pairs_path, tmp_path, teacher_path):
    """teacher_ref = teacher: the advantage is 0 everywhere, so adpa's loss is kd times distill's (same teacher)."""
    plain = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", "distill", teacher_path)).step()
    hp = {"kd": 0.5}
    adpa = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", "adpa", teacher_path, teacher_ref=teacher_path,
                       hparams=hp)).step()
    assert adpa["loss"] == pytest.approx(0.5 * plain["loss"], rel=1e-6)
    assert adpa["advantage"] == 0.0 and adpa["kl"] == pytest.approx(plain["kl"], rel=1e-6)


def test_teacher_ref_buckets_are_cached_and_equal_to_the_live_ones(tiny_path, pairs_path, tmp_path, teacher_path):
    """adpa with a DPO-like teacher and the policy's own weights as teacher_ref (the default: the run's reference)."""
    cached = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", "adpa", teacher_path))
    (path,) = (tmp_path / "a" / "teacher_cache").glob("train-*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert "teacher_ref_buckets" in set(f.keys())  # noqa: SIM118
    live = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", "adpa", teacher_path, teacher_cache=False))
    a, b = cached.step(), live.step()
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["teacher_advantage"] > 0
    assert a["teacher_advantage"] == pytest.approx(b["teacher_advantage"], rel=1e-5)


def test_aligndistil_with_the_policy_as_teacher_has_zero_loss_and_gradient(tiny_path, pairs_path, tmp_path,
                                                                           teacher_path):
    """teacher = policy, weight 1 of the mixture: the target is the teacher, i.e. the policy, whatever teacher_ref is."""
    rec = Trainer(cfg(tiny_path, pairs_path, tmp_path, "aligndistil", tiny_path, teacher_ref=teacher_path,
                      hparams={"target": "mixture", "weight": 1.0})).step()
    assert abs(rec["loss"]) < 1e-6 and rec["grad_norm"] < 1e-5 and rec["teacher_l1"] > 1e-3


def test_aligndistil_training_lowers_its_loss(tiny_path, pairs_path, tmp_path, teacher_path):
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, "aligndistil", teacher_path, max_steps=8,
                    hparams={"target": "mixture", "weight": 1.0}))
    losses = [t.step()["loss"] for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_teacher_ref_without_a_reader_is_an_error(tiny_path, pairs_path, tmp_path, teacher_path):
    with pytest.raises(ConfigError, match="does not weigh"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path, "distill", teacher_path, teacher_ref=tiny_path))
