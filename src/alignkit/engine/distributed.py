"""Scale: checkpoints under FSDP / DeepSpeed, launch checks, and ``torch.compile``.

One process and DDP hold the full parameters and optimizer state in every process, so the main process
writes a checkpoint alone (`checkpoint.save_checkpoint`). Under FSDP and DeepSpeed the optimizer state
(and with FSDP or ZeRO-3 the parameters) is split across processes, so saving is collective — every
process calls `save_sharded`, only the main process writes alignkit's own files:

1. the main process creates ``checkpoints/.tmp-step-N`` (`checkpoint.begin_checkpoint`); all wait;
2. every process calls ``accelerator.save_state(tmp/sharded)``: its shard of the parameters and of the
   optimizer state (FSDP: ``torch.distributed.checkpoint``; DeepSpeed: its own checkpoint) and its RNG
   state; then `full_state_dict` gathers the full weights onto the main process;
3. the main process writes ``model.safetensors`` (the gathered trainable weights, named as in a
   one-process run), scheduler, RNG, objective and trainer state, and renames the folder into place;
4. all wait for the rename.

`load_sharded` restores alignkit's part with `checkpoint.load_checkpoint`, then the shards with
``accelerator.load_state``. The checkpoint folder must be on a file system every process sees.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit.engine import checkpoint as ckpt
from alignkit.engine.reference import DisabledAdapterReference
from alignkit.errors import CheckpointError, ConfigError
from alignkit.executor.logprobs import unwrap

COMPILE_BACKEND = "inductor"  # torch.compile backend of `compile=true` (tests on CPU swap in "aot_eager")
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_SCORER_PREFIX = "model."  # `LogProbModel` holds the policy as `.model`


def sharding(accelerator) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when state is split across processes (saving is collective), else None."""
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)


def _clean(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def full_state_dict(accelerator, scorer: nn.Module, policy: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole policy's ``state_dict`` (keys as ``policy.state_dict()``) on the main process, None elsewhere.

    Collective under FSDP / ZeRO-3: every process must call it. Tied parameters (input and output
    embeddings) share one tensor again, so ``save_pretrained`` stores them once, as usual."""
    if sharding(accelerator) == "fsdp" and not accelerator.is_fsdp2:
        # accelerate's FSDP1 gather offloads to the CPU, which crashes (SIGSEGV, torch 2.13) when the
        # parameters already live there; on a CPU there is nothing to offload
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=accelerator.device.type != "cpu", rank0_only=True)
        with FSDP.state_dict_type(scorer, StateDictType.FULL_STATE_DICT, config):
            full = scorer.state_dict()
    else:
        full = accelerator.get_state_dict(scorer)
    if not accelerator.is_main_process:
        return None
    out = {}
    for key, value in full.items():
        key = _clean(key)
        if key.startswith(_SCORER_PREFIX):
            out[key[len(_SCORER_PREFIX):]] = value.detach().contiguous().cpu()
    tied: dict[int, list[str]] = {}
    for name, param in policy.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(_clean(name))
    for names in tied.values():
        present = [n for n in names if n in out]
        for name in present[1:]:
            out[name] = out[present[0]]
    return out


def trainable_weights(accelerator, scorer: nn.Module, policy: nn.Module) -> dict[str, torch.Tensor] | None:
    """The gathered trainable parameters, named like `checkpoint.save_checkpoint` names them (main process)."""
    names = [_clean(n) for n, p in policy.named_parameters() if p.requires_grad]
    full = full_state_dict(accelerator, scorer, policy)
    if full is None:
        return None
    missing = [n for n in names if n not in full]
    if missing:
        raise RuntimeError(f"the gathered state dict lacks trainable parameters {missing[:5]}")
    return {n: full[n] for n in names}


def save_sharded(
    accelerator, scorer: nn.Module, root: Path, step: int, policy: nn.Module, scheduler: Any, state: dict[str, Any],
    config_yaml: str, keep: int, objective_state: dict[str, Any] | None, extra_states: dict[str, Any] | None,
) -> Path | None:
    """A checkpoint of a sharded run (see the module docstring). Every process must call it; the main
    process gets the folder back, the others None."""
    acc, main = accelerator, accelerator.is_main_process
    if main:
        ckpt.begin_checkpoint(root, step)
    acc.wait_for_everyone()
    tmp, final = ckpt.checkpoint_paths(root, step)
    acc.save_state(str(tmp / ckpt.SHARDED_DIR))
    weights = trainable_weights(acc, scorer, policy)
    path = None
    if main:
        with ckpt.disk_errors(tmp, final):
            ckpt.write_checkpoint(tmp, step, weights, None, scheduler, {**state, "sharding": sharding(acc)},
                                  config_yaml, objective_state, extra_states)
            path = ckpt.commit_checkpoint(tmp, final, keep)
    acc.wait_for_everyone()
    return path


def load_sharded(accelerator, path: Path, optimizer, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resume a sharded run: alignkit's state, then parameters, optimizer and per-process RNG via accelerate."""
    path = Path(path)
    if (path / "trainer_state.json").exists() and not (path / ckpt.SHARDED_DIR).is_dir():
        raise CheckpointError(
            f"checkpoint {path} was saved by a one-process or DDP run (no {ckpt.SHARDED_DIR}/), and this run is "
            f"sharded ({sharding(accelerator)}): resume it with the same kind of launch"
        )
    state, objective_state = ckpt.load_checkpoint(path, None, None, scheduler)
    if sharding(accelerator) == "fsdp":
        _init_optimizer_state(getattr(optimizer, "optimizer", optimizer))
    accelerator.load_state(str(path / ckpt.SHARDED_DIR))
    return state, objective_state


@torch.no_grad()
def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state tensors (one step with zero gradients at lr 0: nothing moves).

    FSDP's sharded optimizer load fills the tensors of the optimizer's *current* state dict; on a fresh
    optimizer there are none, and Adam's moments would silently restart from zero."""
    if optimizer.state:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def save_final(
    accelerator, scorer: nn.Module, policy: nn.Module, tokenizer, final: Path, load_base: Callable[[], nn.Module] | None,
    extras: Callable[[Path], None] | None = None,
) -> Path | None:
    """``final/``: a plain ``save_pretrained`` folder. Every process calls it; the main process writes it.

    ``load_base`` (LoRA runs): loads the base model. ``adapter/`` is written next to ``final/``, and
    ``final/`` holds the merged model. Under FSDP / DeepSpeed the weights are gathered first (collective)
    and loaded into a fresh copy of the base with the same adapters, on the main process. ``extras(folder)``
    adds files (a reward model's description, a recipe's value model) before the folder is renamed into place.

    Both folders are written as ``.tmp-final`` / ``.tmp-adapter`` and renamed into place (`checkpoint.publish`): a kill
    during the save leaves the previous ``final/`` (or none), never a half-written one."""
    sharded = sharding(accelerator) is not None
    full = full_state_dict(accelerator, scorer, policy) if sharded else None
    if accelerator.is_main_process:
        adapter = final.parent / "adapter"
        tmp_final, tmp_adapter = staging(final), staging(adapter)
        with ckpt.disk_errors(tmp_final, final, "the checkpoint of the last step is intact", more=(tmp_adapter,)):
            if load_base is not None and sharded:  # peft's own save would see FSDP's wrapped module names
                from peft import get_peft_model

                model = get_peft_model(load_base(), copy.deepcopy(policy.peft_config["default"]))
                model.load_state_dict(full)
                model.save_pretrained(tmp_adapter)
                model.merge_and_unload().save_pretrained(tmp_final)
            elif load_base is not None:
                policy.save_pretrained(tmp_adapter)
                policy.merge_and_unload().save_pretrained(tmp_final)
            else:
                unwrap(policy).save_pretrained(tmp_final, state_dict=full)  # full=None: the model's own state dict
            tokenizer.save_pretrained(tmp_final)
            if extras is not None:
                extras(tmp_final)
            if load_base is not None:
                ckpt.publish(tmp_adapter, adapter)
            ckpt.publish(tmp_final, final)
    if sharded:
        accelerator.wait_for_everyone()
    return final if accelerator.is_main_process else None


def staging(folder: Path) -> Path:
    """An empty ``.tmp-<name>`` folder next to ``folder`` to write it in."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def any_process(accelerator, flag: bool) -> bool:
    """True when ``flag`` is set in any process (e.g. a signal reached one of them): all then act alike."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


def mean_over_processes(accelerator, values: list[float]) -> list[float]:
    """Each value averaged over the processes (one all-reduce); unchanged on one process. Every process must
    call it with as many values, in the same order."""
    if accelerator.num_processes == 1 or not values:
        return [float(v) for v in values]
    return accelerator.reduce(torch.tensor([float(v) for v in values], device=accelerator.device),
                              reduction="mean").tolist()


def merge_objective_state(accelerator, objective, before: dict[str, Any]) -> None:
    """After a micro-batch: every process's objective state gathered and merged (`Objective.merge_states`, for
    objectives whose state follows the data, e.g. pal's per-user weights), so that every process holds the state
    one process would after the global micro-batch. Every process must call it; nothing to do on one process."""
    if accelerator.num_processes == 1 or not objective.merges_state:
        return
    gathered: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, objective.state_dict())
    objective.merge_states(before, gathered)


def average_gradients(params, accelerator) -> None:
    """Average the gradients of ``params`` over the processes, for a module trained beside the DDP-wrapped
    scorer but not inside it (`Trainer.extra_modules`, e.g. a recipe's value model).
    One all-reduce per dtype (LoRA adapters in fp32 beside a bf16 head) plus one of a has-gradient mask: a
    parameter with a gradient on some process counts as 0 where it has none (as DDP does); one with a
    gradient on no process keeps none (so the optimizer leaves it alone)."""
    params = [p for p in params if p.requires_grad]
    if accelerator.num_processes == 1 or not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    has = accelerator.reduce(has, reduction="sum")
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for dtype in sorted({p.dtype for p in live}, key=str):
        group = [p for p in live if p.dtype == dtype]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        flat = accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in group:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def check_launch(accelerator, config, strategy: str) -> None:
    """Before ``prepare``: refuse what does not work yet under FSDP / ZeRO-3, and give DeepSpeed its batch
    settings (it wants a micro-batch size, and alignkit prepares no dataloader to read it from).

    Under FSDP the start-up check (policy or reward model), the reference-cache pass and LoRA's
    disabled-adapter reference run through the prepared (sharded) scorer (`share_sharded_scorer`,
    `verify_against_forward`), on every process together."""
    kind = sharding(accelerator)
    if kind != "deepspeed":
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage == 3 and (config.verify_logprobs or strategy == "copy"):
        raise ConfigError(
            "under DeepSpeed ZeRO-3 set verify_logprobs=false and use an objective without a reference (simpo, "
            "orpo, sft, ...): the log-prob check and the copied reference run the model outside DeepSpeed's "
            "engine while its parameters are partitioned (ZeRO-2 has no such limit)"
        )
    if config.grad_accum != 1:
        raise ConfigError("with DeepSpeed, use grad_accum=1 (raise batch_size instead): DeepSpeed steps its "
                         "optimizer inside every backward call that accelerate forwards to it")
    ds_config = plugin.deepspeed_config
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
    if ds_config.get("gradient_clipping", "auto") == "auto":
        ds_config["gradient_clipping"] = max(config.max_grad_norm, 0.0)


def share_sharded_scorer(reference, scorer: nn.Module, accelerator) -> None:
    """Under FSDP, a reference that *is* the policy (LoRA's disabled adapters, or the initial policy filling the
    reference cache) must run through the prepared root module, which gathers the sharded parameters: give it
    the prepared ``scorer`` (a `LogProbModel` of the same policy, so the values are the same)."""
    if sharding(accelerator) == "fsdp" and isinstance(reference, DisabledAdapterReference):
        reference.scorer = scorer


def compile_decoder(policy: nn.Module, backend: str | None = None) -> None:
    """``torch.compile`` the decoder in place (``nn.Module.compile``: parameter names, state dicts and
    checkpoints do not change), with dynamic shapes since packed rows differ in length from batch to
    batch. The vocabulary projection stays eager: it runs in checkpointed chunks whose number varies."""
    unwrap(policy).get_decoder().compile(backend=backend or COMPILE_BACKEND, dynamic=True)
