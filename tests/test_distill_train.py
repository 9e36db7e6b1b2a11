"""distill through the trainer: the executor's teacher/student buckets give zero loss and gradient when the
teacher is the initial policy, the exact full-vocabulary KL (checked against plain forwards of both models) when
teacher_top_k covers the vocabulary, and a falling loss while training; bad teacher settings are one-line errors."""

import pytest
import torch

from alignkit.config import TrainConfig
from alignkit.engine.trainer import Trainer
from alignkit.errors import ConfigError
from alignkit.models.load import load_model
from alignkit.models.tiny import build_tiny


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return str(build_tiny(tmp_path_factory.mktemp("teacher"), seed=7))


def cfg(tiny_path, pairs_path, out, teacher, **kw):
    base = dict(model=tiny_path, data=pairs_path, objective="distill", teacher=teacher, batch_size=32, max_steps=1,
                lr=1e-3, output_dir=str(out), progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def test_teacher_equal_to_the_policy_gives_zero_loss_and_gradient(tiny_path, pairs_path, tmp_path):
    rec = Trainer(cfg(tiny_path, pairs_path, tmp_path, tiny_path, teacher_top_k=8)).step()
    assert abs(rec["loss"]) < 1e-6 and rec["grad_norm"] < 1e-5 and rec["kl"] < 1e-6


def exact_forward_kl(trainer, teacher_path):
    """Mean over records of the mean over responses of the mean over completion tokens of KL(teacher ‖ policy),
    from each model's own full-vocabulary forward on every response alone."""
    student, teacher = trainer.policy, load_model(teacher_path)
    rows = []
    for tr in trainer.train_data.items:
        per_response = []
        for k in range(tr.k):
            ids = torch.tensor([tr.full_ids(k)])
            start = len(tr.prompt_ids) + tr.score_start[k]
            with torch.no_grad():
                ls = student(input_ids=ids).logits[0, start - 1 : -1].double().log_softmax(-1)
                lt = teacher(input_ids=ids).logits[0, start - 1 : -1].double().log_softmax(-1)
            per_response.append((lt.exp() * (lt - ls)).sum(-1).mean())
        rows.append(torch.stack(per_response).mean())
    return torch.stack(rows).mean().item()


def test_top_k_covering_the_vocabulary_is_the_exact_kl_and_training_lowers_it(tiny_path, pairs_path, tmp_path,
                                                                               teacher_path):
    t = Trainer(cfg(tiny_path, pairs_path, tmp_path, teacher_path, teacher_top_k=100_000, max_steps=12,
                    dtype="float32"))
    want = exact_forward_kl(t, teacher_path)
    first = t.step()
    assert first["loss"] == pytest.approx(want, rel=1e-4)
    assert first["teacher_mass"] == pytest.approx(1.0, abs=1e-6)
    losses = [first["loss"]] + [t.step()["loss"] for _ in range(11)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_top_k_below_the_vocabulary_is_a_lower_bound(tiny_path, pairs_path, tmp_path, teacher_path):
    full = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", teacher_path, teacher_top_k=100_000)).step()
    few = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", teacher_path, teacher_top_k=4)).step()
    assert 0 < few["loss"] < full["loss"] and few["teacher_mass"] < 1


def test_teacher_settings_are_checked(tiny_path, pairs_path, tmp_path, tiny_llama_path):
    with pytest.raises(ConfigError, match="set teacher=PATH"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", None))
    with pytest.raises(ConfigError, match="reads no teacher"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", tiny_path, objective="sft"))
    with pytest.raises(ConfigError, match="teacher_top_k"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "c", tiny_path, teacher_top_k=0))
