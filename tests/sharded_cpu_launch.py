"""``python -m torch.distributed.run ... tests/sharded_cpu_launch.py train ...``: alignkit's CLI under FSDP or
DeepSpeed on CPU processes.

accelerate uses FSDP and DeepSpeed only on accelerator devices: with CPU processes it always falls back to
DDP (distributed type MULTI_CPU), whatever ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED say. torch's FSDP
runs on CPU over gloo, and so does DeepSpeed (its CPU accelerator), so this launcher switches accelerate's
state right after ``Accelerator.__init__``, with the plugin built from the environment ``accelerate launch``
derives from configs/accelerate/*.yaml (`launch_environment`). From there on the code path is the real
one: accelerate's FSDP / DeepSpeed preparation, ``get_state_dict`` / ``save_state`` / ``load_state``, and
alignkit's trainer and checkpoints.
"""

import sys
from pathlib import Path
from unittest import mock

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def launch_environment(config: Path = CONFIGS / "fsdp.yaml", **overrides: str) -> dict[str, str]:
    """The FSDP_* / ACCELERATE_DEEPSPEED_* variables `accelerate launch --config_file CONFIG` sets (+ overrides)."""
    import accelerate.utils.launch as launch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "alignkit.cli"])
    _validate_launch_command(args)
    with mock.patch.object(launch, "is_port_in_use", return_value=False):
        if args.use_deepspeed:
            args.deepspeed_fields_from_accelerate_config = ""  # set by `accelerate launch` itself
            env = launch.prepare_deepspeed_cmd_env(args)[1]
        else:
            env = launch.prepare_multi_gpu_env(args)
    env = {k: v for k, v in env.items()
           if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_",
                            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"))}
    if "ACCELERATE_USE_FSDP" in env:
        env["FSDP_SYNC_MODULE_STATES"] = "false"  # true needs an accelerator device to broadcast from
    return {**env, **overrides}



def _patch_accelerate() -> None:
    import os

    import accelerate
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"

    class CpuShardedAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.num_processes == 1:
                return
            kind = DistributedType.DEEPSPEED if deepspeed else DistributedType.FSDP
            precision = self.state.mixed_precision  # read before the switch (under DeepSpeed it asks the plugin)
            # every AcceleratorState() re-reads PartialState's shared values, so set both
            for shared in (self.state.__dict__, PartialState._shared_state):
                shared["distributed_type"] = kind
                shared["device"] = torch.device("cpu")  # FSDP rejects device_id "cpu:0" for "cpu" tensors
            if deepspeed:  # from the ACCELERATE_DEEPSPEED_* environment
                plugin = DeepSpeedPlugin()
                plugin.set_mixed_precision(precision)
                self.state.deepspeed_plugins = plugin
                plugin.select(_from_accelerator_state=True)
                self.deepspeed_engine_wrapped = None
            else:  # from the FSDP_* environment
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin()

    accelerate.Accelerator = CpuShardedAccelerator


if __name__ == "__main__":
    _patch_accelerate()
    from alignkit.cli import main

    sys.exit(main(sys.argv[1:]))
