"""``python -m torch.distributed.run ... tests/fsdp_cpu_launch.py train ...``: alignkit's CLI under FSDP on CPUs.

accelerate uses FSDP only on accelerator devices: with CPU processes it always falls back to DDP
(distributed type MULTI_CPU), whatever ACCELERATE_USE_FSDP says. torch's FSDP itself runs on CPU over
gloo, so this launcher switches accelerate's state to FSDP right after ``Accelerator.__init__``, with the
plugin built from the FSDP_* environment that ``accelerate launch`` derives from configs/accelerate/fsdp.yaml
(`fsdp_environment`). From there on the code path is the real one: accelerate's FSDP wrapping,
``get_state_dict`` / ``save_state`` / ``load_state``, and alignkit's trainer and checkpoints.
"""

import sys
from pathlib import Path
from unittest import mock

FSDP_YAML = Path(__file__).resolve().parent.parent / "configs" / "accelerate" / "fsdp.yaml"


def fsdp_environment(config: Path = FSDP_YAML, **overrides: str) -> dict[str, str]:
    """The FSDP_* variables `accelerate launch --config_file CONFIG` gives each process (plus overrides)."""
    import accelerate.utils.launch as launch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "alignkit.cli"])
    _validate_launch_command(args)
    with mock.patch.object(launch, "is_port_in_use", return_value=False):
        env = launch.prepare_multi_gpu_env(args)
    env = {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    env["FSDP_SYNC_MODULE_STATES"] = "false"  # true needs an accelerator device to broadcast from
    return {**env, **overrides}


def _patch_accelerate() -> None:
    import accelerate
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class CpuFsdpAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.num_processes > 1:
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment
                # every AcceleratorState() re-reads PartialState's shared values, so set both
                for shared in (self.state.__dict__, PartialState._shared_state):
                    shared["distributed_type"] = DistributedType.FSDP
                    shared["device"] = torch.device("cpu")  # FSDP rejects device_id "cpu:0" for "cpu" tensors

    accelerate.Accelerator = CpuFsdpAccelerator


if __name__ == "__main__":
    _patch_accelerate()
    from alignkit.cli import main

    sys.exit(main(sys.argv[1:]))
