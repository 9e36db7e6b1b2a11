"""engine/distributed.py without processes: launch checks, layout checks on resume, gathered state dicts.

(Multi-process runs: tests/test_distributed.py, slow.)"""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from alignkit.config import TrainConfig
from alignkit.engine import checkpoint as ckpt
from alignkit.engine import distributed as dist
from alignkit.engine.schedule import build_scheduler
from alignkit.executor.logprobs import LogProbModel


def fake_accelerator(kind=DistributedType.NO, state_dict=None, ds_config=None, zero_stage=2):
    plugin = SimpleNamespace(deepspeed_config=ds_config if ds_config is not None else {}, zero_stage=zero_stage)
    return SimpleNamespace(
        distributed_type=kind, is_fsdp2=False, is_main_process=True, num_processes=1, state=SimpleNamespace(
            deepspeed_plugin=plugin),
        get_state_dict=lambda model: state_dict if state_dict is not None else model.state_dict(),
    )


def test_fsdp_runs_every_setup_pass_through_its_root():
    acc = fake_accelerator(DistributedType.FSDP)
    # the start-up checks (policy and reward model), the reference cache and LoRA's disabled adapters go
    # through the sharded scorer: nothing is refused under FSDP
    dist.check_launch(acc, TrainConfig(), "copy")
    dist.check_launch(acc, TrainConfig(lora=True), "disable_adapters")
    dist.check_launch(acc, TrainConfig(verify_logprobs=False), "none")  # SimPO & co. need no reference
    dist.check_launch(acc, TrainConfig(objective="bt"), "none")
    dist.check_launch(fake_accelerator(), TrainConfig(), "copy")  # one process / DDP: anything goes


def test_deepspeed_gets_the_micro_batch_and_clipping_and_refuses_grad_accum():
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    dist.check_launch(fake_accelerator(DistributedType.DEEPSPEED, ds_config=ds),
                      TrainConfig(batch_size=6, max_grad_norm=0.5), "copy")
    assert ds == {"train_micro_batch_size_per_gpu": 6, "gradient_clipping": 0.5}
    with pytest.raises(ValueError, match="grad_accum=1"):
        dist.check_launch(fake_accelerator(DistributedType.DEEPSPEED), TrainConfig(grad_accum=2), "copy")
    zero3 = fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3)
    with pytest.raises(ValueError, match="ZeRO-3"):
        dist.check_launch(zero3, TrainConfig(verify_logprobs=False, ref_cache="off"), "copy")
    dist.check_launch(zero3, TrainConfig(verify_logprobs=False), "none")


def test_checkpoint_layouts_do_not_cross(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, "linear", 0, 10)
    plain = ckpt.save_checkpoint(tmp_path / "plain", 1, model, opt, sched, {"skipped_total": 0}, "a: 1\n")
    with pytest.raises(ValueError, match="same kind of launch"):
        dist.load_sharded(fake_accelerator(DistributedType.FSDP), plain, opt, sched)
    # a sharded run's folder: no optimizer.pt (its optimizer state is in sharded/)
    tmp, final = ckpt.begin_checkpoint(tmp_path / "sharded", 1)
    (tmp / ckpt.SHARDED_DIR).mkdir()
    ckpt.write_checkpoint(tmp, 1, dict(model.state_dict()), None, sched, {"skipped_total": 0}, "a: 1\n")
    sharded = ckpt.commit_checkpoint(tmp, final)
    with pytest.raises(ValueError, match="saved under FSDP/DeepSpeed"):
        ckpt.load_checkpoint(sharded, model, opt, sched)


def test_optimizer_state_is_created_without_moving_anything():
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    dist._init_optimizer_state(opt)
    assert len(opt.state) == 2 and all("exp_avg" in s for s in opt.state.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.1 and all(p.grad is None for p in model.parameters())


def test_gathered_state_dict_is_named_like_the_policy_and_keeps_ties(tiny):
    policy, _ = tiny
    scorer = LogProbModel(policy)
    wrapped = {k.replace("layers.0.", "layers.0._fsdp_wrapped_module."): v.clone() for k, v in scorer.state_dict().items()}
    full = dist.full_state_dict(fake_accelerator(state_dict=wrapped), scorer, policy)
    assert full.keys() == policy.state_dict().keys()
    if policy.config.tie_word_embeddings:  # one tensor again, so save_pretrained stores it once
        assert full["lm_head.weight"] is full["model.embed_tokens.weight"]
    weights = dist.trainable_weights(fake_accelerator(state_dict=wrapped), scorer, policy)
    assert weights.keys() == {n for n, p in policy.named_parameters() if p.requires_grad}


def test_any_process_in_one_process():
    assert dist.any_process(fake_accelerator(), True) and not dist.any_process(fake_accelerator(), False)


def test_average_gradients_keeps_dtypes_and_leaves_gradient_free_parameters_alone():
    """PPO's value model under DDP (algorithms/online.py): LoRA adapters in fp32 beside a bf16 head, and a gate
    no process used. A fake 2-process accelerator whose other process holds ``other`` for every tensor."""
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16)), torch.nn.Parameter(torch.ones(2)),
              torch.nn.Parameter(torch.ones(2))]
    params[0].grad = torch.full((3,), 2.0, dtype=torch.bfloat16)
    params[1].grad = torch.tensor([1.0, 3.0])  # params[2]: no gradient here, nor (below) on the other process
    other = {torch.bfloat16: torch.full((3,), 4.0), torch.float32: torch.tensor([3.0, 5.0])}

    def reduce(t, reduction):
        if reduction == "sum":  # the has-gradient mask: the other process has the same one
            return t * 2
        return (t + other[t.dtype].to(t.dtype)) / 2

    dist.average_gradients(params, SimpleNamespace(num_processes=2, reduce=reduce))
    assert params[0].grad.dtype == torch.bfloat16 and params[0].grad.tolist() == [3.0, 3.0, 3.0]
    assert params[1].grad.tolist() == [2.0, 4.0] and params[2].grad is None
