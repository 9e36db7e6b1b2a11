"""The shipped `accelerate launch` configs (configs/accelerate/) load through accelerate's own code."""

import os
from pathlib import Path
from unittest import mock

import pytest
import yaml

DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
EXPECTED = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed_zero2.yaml": "DEEPSPEED",
            "deepspeed_zero3.yaml": "DEEPSPEED", "multinode_ddp.yaml": "MULTI_GPU"}


def launch_args(path: Path):
    """What `accelerate launch --config_file PATH -m alignkit.cli train ...` makes of the file."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "-m", "alignkit.cli", "train", "configs/dpo.yaml"])
    _validate_launch_command(args)
    return args, {a.dest for a in parser._actions}


def test_the_shipped_set():
    assert sorted(p.name for p in DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_through_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = DIR / name
    raw = yaml.safe_load(path.read_text())
    for key in ("compute_environment", "distributed_type", "num_processes", "num_machines", "machine_rank",
                "mixed_precision", "use_cpu"):
        assert key in raw, key
    config = ClusterConfig.from_yaml_file(str(path))  # rejects unknown top-level keys and bad enum values
    assert config.distributed_type.value == EXPECTED[name]
    assert config.num_processes >= 2 and config.num_processes % config.num_machines == 0
    # every nested key is a flag `accelerate launch` knows (it copies them onto its arguments unchecked)
    args, flags = launch_args(path)
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in flags, key
    for key in config.deepspeed_config:
        assert key in flags, key
    assert args.num_processes == config.num_processes
    if name.startswith("deepspeed"):
        assert args.use_deepspeed and args.zero_stage == int(name[-6])
        assert args.gradient_accumulation_steps == 1  # alignkit's grad_accum must stay 1 under DeepSpeed
    if name == "deepspeed_zero3.yaml":
        assert args.zero3_save_16bit_model  # model.safetensors / final/ gather the weights in 16 bit
    if name == "multinode_ddp.yaml":
        assert args.num_machines == 2 and args.main_process_ip and args.main_process_port


def test_fsdp_config_becomes_the_intended_plugin(tiny):
    """fsdp.yaml -> the environment accelerate launch sets -> accelerate's FSDP plugin, wrapping alignkit's model."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from sharded_cpu_launch import launch_environment  # tests/: the environment accelerate launch sets
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    from alignkit.executor.logprobs import LogProbModel

    env = launch_environment(DIR / "fsdp.yaml")  # with FSDP_SYNC_MODULE_STATES=false: no accelerator device here
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1
    assert (plugin.sharding_strategy or plugin.reshard_after_forward) == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert plugin.use_orig_params and not plugin.cpu_ram_efficient_loading
    model, _ = tiny
    plugin.set_auto_wrap_policy(LogProbModel(model))  # finds the decoder layer through _no_split_modules
    assert {c.__name__ for c in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == {"Qwen2DecoderLayer"}
