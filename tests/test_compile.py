"""compile=true: the decoder runs under torch.compile and trains like the eager model."""

import pytest
import torch

from alignkit.config import TrainConfig
from alignkit.engine import distributed
from alignkit.engine.trainer import Trainer
from alignkit.executor.logprobs import unwrap


def test_the_default_backend_is_inductor():
    assert distributed.COMPILE_BACKEND == "inductor"


@pytest.mark.slow
def test_compiled_run_matches_eager(tiny_path, pairs_path, tmp_path, monkeypatch):
    # inductor generates C++ at start-up (about a minute here); aot_eager traces the same graphs with
    # dynamic shapes and autograd, without code generation
    monkeypatch.setattr(distributed, "COMPILE_BACKEND", "aot_eager")
    runs = {}
    for compile in (False, True):
        t = Trainer(TrainConfig(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, batch_size=4, max_steps=3,
                                lr=1e-3, seed=0, progress=False, output_dir=str(tmp_path / str(compile)),
                                compile=compile))
        runs[compile] = t, [t.step() for _ in range(3)]
    trainer, compiled = runs[True]
    decoder = unwrap(trainer.policy).get_decoder()
    assert decoder._compiled_call_impl is not None  # compiled in place: parameter names do not change
    eager = runs[False][1]
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], abs=1e-6)
    assert [r["grad_norm"] for r in compiled] == pytest.approx([r["grad_norm"] for r in eager], rel=1e-5)
    a, b = (dict(runs[k][0].policy.named_parameters()) for k in (False, True))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    path = trainer.save()  # checkpoints are unaffected
    assert path is not None and (path / "model.safetensors").exists()
