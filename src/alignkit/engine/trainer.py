"""The one training loop for every offline objective, on `accelerate`.

Read it top to bottom: `Trainer.__init__` wires data, model, reference, objective, optimizer and
scheduler from a `TrainConfig`; `Trainer.step` is one optimizer step (``grad_accum`` micro-batches);
`Trainer.train` (`engine/loop.py`) runs the steps and decides when to evaluate, save and stop. The trainer knows nothing of individual losses: it computes
`SequenceStats` and hands them to the bound `Objective`.

Around the loop, nothing a run finished is lost: the run folder is locked and checked before anything is
loaded (`engine/rundir.py`), a resume is validated against the checkpoint (`engine/resume.py`), a signal
in any phase leaves a checkpoint of the last finished step (`engine/interrupts.py`), and an update that
would make the weights non-finite is skipped (`engine/numerics.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from alignkit.config import TrainConfig, resolve
from alignkit.console import setup_console_logging
from alignkit.data.dataset import BatchOrder, TokenizedDataset
from alignkit.engine import checkpoint as ckpt
from alignkit.engine import distributed as dist
from alignkit.engine import evaluation, rundir, startup, teachercache
from alignkit.engine import refcache as rc
from alignkit.engine import resume as rs
from alignkit.engine.evaluation import SampledEval
from alignkit.engine.interrupts import StopGuard
from alignkit.engine.logging import (
    logger,
    peak_memory_mb,
)
from alignkit.engine.loop import StepLoop, TrainingStopped
from alignkit.engine.numerics import adamw_step_is_finite
from alignkit.engine.prepare import main_process_first, prepare_data, resolve_shuffle
from alignkit.engine.reference import build_reference, resolve_strategy
from alignkit.engine.schedule import build_optimizer, build_scheduler
from alignkit.engine.teacher import check_teacher
from alignkit.errors import ConfigError
from alignkit.executor import reward_model as rm
from alignkit.executor.logprobs import (
    LogProbModel,
    attention_cost_weight,
    build_stats,
    configure_attention_kernels,
    packing_layout,
)
from alignkit.models.load import load_model, load_tokenizer
from alignkit.objectives import build_objective


class Trainer(StepLoop):
    def __init__(self, config: TrainConfig, *, sampled_eval: SampledEval | None = None):
        """``sampled_eval(config, tokenizer) -> evaluate(policy) -> metrics``: the sampled metrics of
        ``eval_prompts`` / ``eval_judge``, built on first use (`alignkit.train` passes
        `alignkit.eval.training_metrics.TrainingEvaluator`; the engine does not import eval)."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        setup_console_logging()
        self.config = c = resolve(config, "TrainConfig")  # frozen from here on; config.yaml records it
        self.sampled_eval = evaluation.check_sampled_eval(c, sampled_eval)
        self._check_inputs(c)
        self.accelerator = Accelerator(mixed_precision=startup.mixed_precision(c.mixed_precision),
                                       cpu=not torch.cuda.is_available())
        set_seed(c.seed)
        configure_attention_kernels(self.accelerator.device, c.cudnn_attention)
        if not self.accelerator.is_main_process:
            logger.setLevel("WARNING")  # one process speaks for the run
        self.output_dir = Path(c.output_dir)
        # locked, no earlier run clobbered, room to save; max_length lowered to the model's position limit
        self._hold, self.config = rundir.preflight_all(c, self.accelerator)
        c = self.config
        self.guard = StopGuard(self.accelerator.num_processes == 1)
        self._saved_step: int | None = None
        with self.guard.starting(self._release):  # a signal until training starts stops at once: nothing to save
            self._build(c)

    def _build(self, c: TrainConfig) -> None:
        self.objective = build_objective(c.objective, **{"beta": c.beta, **c.hparams})  # hparams beta wins over null
        self._resume_path = rs.locate(c.resume_from, self.output_dir)  # the newest valid checkpoint, if resuming

        # data: read, check against the objective, tokenize
        self.tokenizer = load_tokenizer(c.model, trust_remote_code=c.trust_remote_code)
        strategy = resolve_strategy(c.ref_strategy, self._needs_reference(), c.lora, c.ref_model)
        with main_process_first(self.accelerator):  # transforms that generate (self_samples) run once, then cached
            self.train_data, self.eval_data = self._prepare_data(strategy)
        self.fingerprints = {"data": rs.data_fingerprint(self.train_data), "model": rs.files_fingerprint(c.model),
                             "ref_model": rs.files_fingerprint(c.ref_model), "reference": strategy}
        # a resume with other settings, data or model is refused here, before the model loads
        self._overrides = rs.check(self._resume_path, c, self.fingerprints) if self._resume_path else []

        # model and reference (the reference is built from the *initial* policy, before any resume)
        self.reward_model = self.objective.inputs == "rewards"  # a reward model: a head read at the last token
        policy, self.head, load_kwargs = startup.load_policy(c, self.objective, self.tokenizer, self.train_data)
        self.layout = packing_layout(c.packing, policy)
        self.attn_weight = attention_cost_weight(policy)
        self.eval_reference = None
        self.strategy, self.load_kwargs = strategy, load_kwargs
        cached = self._will_cache(strategy)  # then the reference is built (if at all) by _cache_reference
        self.reference = None if cached else build_reference(strategy, policy, c.ref_model, self.accelerator.device,
                                                             c.chunk_size, load_kwargs)
        check_teacher(c, self.objective)  # built below, once the batch layout is checked
        logger.info("objective %s; reference: %s%s; packing: %s; %d process(es) on %s", self.objective.name,
                    strategy, " (cached log-probs)" if cached else "", self.layout, self.accelerator.num_processes,
                    self.accelerator.device)

        # optimisation
        self.order = BatchOrder(len(self.train_data), c.batch_size, c.seed, self.accelerator.process_index,
                                self.accelerator.num_processes, shuffle=resolve_shuffle(c))
        tail = len(self.train_data) - self.order.per_epoch * self.order.global_batch
        if tail:
            logger.info("%d of %d records do not fill a batch and sit out each epoch (different ones every "
                        "epoch: the order is reshuffled)", tail, len(self.train_data))
        self.total_steps = c.max_steps if c.max_steps > 0 else max(1, math.floor(c.epochs * self._steps_per_epoch()))
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, c.lr, c.weight_decay)
        scheduler = build_scheduler(optimizer, c.scheduler, c.warmup, self._optimizer_steps())
        if c.compile:  # the decoder, in place, with dynamic shapes (see engine/distributed.py)
            dist.compile_decoder(policy)
        dist.check_launch(self.accelerator, c, strategy)
        scorer = rm.RewardScorer(policy) if self.reward_model else LogProbModel(policy, c.chunk_size)
        # The schedule counts optimizer steps; accelerate would step a prepared scheduler once per process.
        self.scorer, self.optimizer = self.accelerator.prepare(scorer, optimizer)
        self.scheduler = scheduler
        self.policy = policy
        # modules trained beside the policy (a recipe's, e.g. a value model): in the optimizer (their own
        # parameter groups), the gradient clip and the checkpoints under their name; outside the DDP wrapper,
        # so their gradients are averaged over processes in `_apply_update`
        self.extra_modules: dict[str, torch.nn.Module] = {}
        dist.share_sharded_scorer(self.reference, self.scorer, self.accelerator)
        if c.verify_logprobs:
            self._verify_logprobs()
        if cached:
            self._cache_reference()
        self.teacher, self.eval_teacher = teachercache.run_teachers(  # (None, None) without a teacher
            c, self.accelerator, self.objective, policy, load_kwargs, self.train_data, self.eval_data,
            self.tokenizer.pad_token_id, self.layout, self.attn_weight, self.output_dir)
        self.step_idx = 0
        self.skipped_total = 0
        self.skipped_in_row = 0

    # ----------------------------------------------------------------- setup helpers
    def _check_inputs(self, c: TrainConfig) -> None:
        if not c.model or not c.data:
            raise ConfigError("set model=PATH and data=FILE (e.g. `alignkit train objective=dpo model=... data=...`)")
        rs.override_keys(c)  # unknown keys in resume_override

    def _release(self) -> None:
        if self._hold is not None:
            self._hold.release()

    def _needs_reference(self) -> bool:
        """Whether the run reads a reference model (the objective's registration says)."""
        return self.objective.needs_reference

    def _prepare_data(self, strategy: str):
        """(train, eval or None) datasets (online training reads prompts instead: `alignkit.algorithms.online`)."""
        return prepare_data(self.config, self.tokenizer, self.objective, strategy != "none")

    def _steps_per_epoch(self) -> float:
        return self.order.per_epoch / self.config.grad_accum  # each step takes grad_accum micro-batches

    def _optimizer_steps(self) -> int:
        """Optimizer steps over the run (what the learning-rate schedule spans)."""
        return self.total_steps

    def _verify_logprobs(self) -> None:
        """The longest record through the executor and through the model's own forward must agree (a family
        whose attention the shared-prompt block mask cannot express falls back to padded rows)."""
        self.layout = self._checked_layout(self.train_data)

    def _checked_layout(self, data) -> str:
        """`startup.check_executor` of this run on ``data``."""
        return startup.check_executor(self.config, self.accelerator, self.policy, self.scorer, self.tokenizer, data,
                                      self.layout, self.attn_weight, self.reward_model)

    def _will_cache(self, strategy: str) -> bool:
        return rc.will_cache(self.config, self.objective, strategy)

    def _cache_reference(self) -> None:
        """Reference log-probs from the cache, or one pass that fills it (`engine/refcache.py`); on a hit
        for every split no reference model is built or loaded at all."""
        self.reference, self.eval_reference = rc.cached_references(
            self.config, self.accelerator, self.strategy, self.policy, self.scorer, self.load_kwargs, self.train_data,
            self.eval_data, self.objective.extras, self.tokenizer.pad_token_id, self.layout, self.output_dir)

    # ----------------------------------------------------------------- one step
    def _micro_loss(self, indices: list[int], data: TokenizedDataset, train: bool):
        batch = data.collate(indices, self.tokenizer.pad_token_id, self.layout, self.config.max_row_tokens,
                             self.attn_weight).to(self.accelerator.device)
        if self.reward_model:
            with self.accelerator.autocast():
                stats = rm.build_reward_stats(batch, *self.scorer(batch))
            return self._objective(stats, train), batch.num_tokens
        reference = self.reference if train or self.eval_reference is None else self.eval_reference
        with self.accelerator.autocast():
            if self.objective.needs_token_logps:
                ref_tokens, ref_seq = reference.token_logps(batch), None
            else:
                ref_tokens, ref_seq = None, reference.sequence_logps(batch)
        teacher = self.teacher if train or self.eval_teacher is None else self.eval_teacher
        token_logps, token_extras = teacher(self.scorer, batch) if teacher else (self.scorer(batch), None)
        stats = build_stats(batch, token_logps, ref_tokens, with_token_logps=self.objective.needs_token_logps,
                            ref_logps=ref_seq, token_extras=token_extras)
        return self._objective(stats, train), batch.num_tokens

    def _objective(self, stats, train: bool):
        """The loss; in training the objective's state moves (merged over processes where the objective says how),
        in evaluation it is left as it was."""
        if not train:
            return _no_state_update(self.objective, stats)
        merge = self.accelerator.num_processes > 1 and self.objective.merges_state
        before = self.objective.state_dict() if merge else None
        out = self.objective(stats)
        if merge:
            dist.merge_objective_state(self.accelerator, self.objective, before)
        return out

    def step(self) -> dict[str, Any]:
        c, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        self.scorer.train()
        loss_sum, tokens, metrics = 0.0, 0, {}
        for a in range(c.grad_accum):
            micro = self.step_idx * c.grad_accum + a
            sync = a == c.grad_accum - 1
            ctx = acc.no_sync(self.scorer) if not sync else contextlib.nullcontext()
            with ctx:
                out, n_tok = self._micro_loss(self.order.indices(micro), self.train_data, train=True)
                acc.backward(out.loss / c.grad_accum)
            loss_sum += float(out.loss.detach()) / c.grad_accum
            tokens += n_tok
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v / c.grad_accum
        loss_sum, metrics, tokens, grad_norm, lr = self._apply_update(loss_sum, metrics, tokens)
        self.step_idx += 1
        dt = time.perf_counter() - t0
        record = {"step": self.step_idx, "epoch": self.order.epoch_of(self.step_idx * c.grad_accum - 1),
                  "loss": loss_sum, **metrics, "lr": lr, "grad_norm": grad_norm, "seconds_per_step": dt,
                  "tokens_per_second": tokens / dt, "peak_memory_mb": peak_memory_mb(acc.device),
                  "skipped_steps": self.skipped_total}
        if self.skipped_in_row >= c.max_bad_steps:
            raise TrainingStopped(
                f"{self.skipped_in_row} steps in a row had a non-finite loss, gradient or update; stopping. "
                "Lower lr, check the data, or use dtype=float32."
            )
        return record

    def _apply_update(self, loss_sum: float, metrics: dict[str, float], tokens: int):
        """Reduce metrics over processes, clip, step the optimizer and schedule (or skip a non-finite step).
        Returns (loss, metrics, tokens, grad_norm, lr)."""
        c, acc = self.config, self.accelerator
        self.guard.phase = "update"  # from here on a signal lets the step finish (engine/interrupts.py)
        if acc.num_processes > 1:  # log the mean over processes, not the main process's share
            loss_sum, *means = dist.mean_over_processes(acc, [loss_sum, *metrics.values()])
            metrics = dict(zip(metrics, means))
            tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))
        extra = [p for m in self.extra_modules.values() for p in m.parameters()]
        dist.average_gradients(extra, acc)
        params = [*self.scorer.parameters(), *extra]
        grad_norm = acc.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm > 0 else 1e30)
        grad_norm = float(grad_norm)
        finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
        # a finite gradient can still make non-finite weights (an lr that overflows them): that update is skipped
        diverging = finite and dist.any_process(acc, not adamw_step_is_finite(self.optimizer))
        finite = finite and not diverging
        lr = self.scheduler.get_last_lr()[0]
        if acc.scaler is not None and math.isfinite(loss_sum) and not diverging:
            # fp16: the grad scaler must see every step (it skips overflowing ones and lowers its scale)
            self.optimizer.step()
            finite = not self.optimizer.step_was_skipped
        elif finite:
            self.optimizer.step()
        if finite:
            self.scheduler.step()
            self.skipped_in_row = 0
        else:
            self.skipped_total += 1
            self.skipped_in_row += 1
            why = "the update would make weights non-finite" if diverging else "non-finite loss or grad norm"
            logger.warning("step %d: %s (loss %s, grad norm %s, lr %s): update skipped (%d in a row)",
                           self.step_idx + 1, why, loss_sum, grad_norm, lr, self.skipped_in_row)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, metrics, tokens, grad_norm, lr

    def evaluate(self) -> dict[str, float]:
        """``eval/...`` metrics on the held-out data, and the sampled ones of ``eval_judge`` (engine/evaluation.py)."""
        return evaluation.held_out(self)

    def generation_eval(self) -> dict[str, float]:
        """Sampled metrics on ``eval_prompts`` judged by ``eval_judge`` (main process), if configured."""
        return evaluation.sampled(self)

    # ----------------------------------------------------------------- checkpoints
    def _config_yaml(self) -> str:
        """The run's settings; how this start was asked for (overwrite, resume_override) is not one of them."""
        kept = dataclasses.replace(self.config, overwrite=False, resume_override=[])
        return yaml.safe_dump(dataclasses.asdict(kept), sort_keys=False)

    def save(self) -> Path | None:
        """Write a checkpoint. Every process calls it: under FSDP / DeepSpeed gathering is collective (see
        engine/distributed.py). Only the main process writes, and gets the folder back."""
        acc, c, root = self.accelerator, self.config, self.output_dir / "checkpoints"
        state = {"skipped_total": self.skipped_total, "skipped_in_row": self.skipped_in_row,
                 "total_steps": self.total_steps, "fingerprints": self.fingerprints}
        rest = (state, self._config_yaml(), c.keep_checkpoints, self.objective.state_dict(),
                {"grad_scaler": acc.scaler.state_dict()} if acc.scaler else None)
        path = None
        with self.guard.during("save"):  # a signal waits for the save
            if dist.sharding(acc):
                path = dist.save_sharded(acc, self.scorer, root, self.step_idx, self.policy, self.scheduler, *rest)
            elif acc.is_main_process:  # one process or DDP: the main process holds all of it
                path = ckpt.save_checkpoint(root, self.step_idx, self._checkpointed(), self.optimizer, self.scheduler,
                                            *rest)
        self._saved_step = self.step_idx
        if path is not None:
            logger.info("saved checkpoint %s", path)
        return path

    def train_beside(self, name: str, module: torch.nn.Module, lr: float) -> None:
        """Train ``module`` with the policy (see `extra_modules`): its trainable parameters in their own parameter
        group (learning rate ``lr``, the run's weight decay and schedule), checkpointed under ``name``."""
        c = self.config
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds the groups
        optimizer.add_param_group({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": c.weight_decay})
        self.scheduler = build_scheduler(optimizer, c.scheduler, c.warmup, self._optimizer_steps())  # every group
        self.extra_modules[name] = module

    def _checkpointed(self):
        """What a checkpoint's weights are: the policy, and any `extra_modules` under their names."""
        return ckpt.WithExtras(self.policy, self.extra_modules) if self.extra_modules else self.policy

    def resume(self, where: str) -> None:
        """Continue from checkpoint ``where`` (``latest`` or a path), validated against this run (engine/resume.py)."""
        if self._resume_path is not None and where in (self.config.resume_from, str(self._resume_path)):
            path, overrides = self._resume_path, self._overrides  # located and checked at start-up
        else:
            path = rs.locate(where, self.output_dir)
            overrides = rs.check(path, self.config, self.fingerprints) if path else []
        if path is None:
            return
        fresh = rs.fresh_hparams(self.optimizer, self.scheduler)
        if dist.sharding(self.accelerator):
            state, obj_state = dist.load_sharded(self.accelerator, path, self.optimizer, self.scheduler)
        else:
            state, obj_state = ckpt.load_checkpoint(path, self._checkpointed(), self.optimizer, self.scheduler)
        rs.apply_overrides(overrides, fresh, self.optimizer, self.scheduler)
        self.step_idx = state["step"]
        self.skipped_total = state["skipped_total"]
        self.skipped_in_row = state["skipped_in_row"]
        self.objective.load_state_dict(obj_state)
        if self.accelerator.scaler is not None and "grad_scaler" in state["extra"]:
            self.accelerator.scaler.load_state_dict(state["extra"]["grad_scaler"])
        self._saved_step = self.step_idx
        logger.info("resumed from %s at step %d", path, self.step_idx)

    def save_final(self) -> Path | None:
        """``final/``, a ``save_pretrained`` folder (LoRA: merged, plus ``adapter/``), written to a temporary folder
        and renamed into place. Every process calls it."""
        c = self.config
        load = dict(dtype=c.dtype, trust_remote_code=c.trust_remote_code)
        if self.reward_model:
            base = lambda: rm.load_reward_model(c.model, *self.head, pad_token_id=self.tokenizer.pad_token_id, **load)  # noqa: E731
        else:
            base = lambda: load_model(c.model, **load)  # noqa: E731
        with self.guard.during("save"):
            return dist.save_final(self.accelerator, self.scorer, self.policy, self.tokenizer,
                                   self.output_dir / "final", base if c.lora else None, extras=self._final_extras)

    def _final_extras(self, folder: Path) -> None:
        """Files written into ``final/`` before it is renamed into place."""
        if self.reward_model:
            rm.write_info(folder, self.objective, *self.head)

    # ----------------------------------------------------------------- the loop


def _no_state_update(objective, stats):
    saved = objective.state_dict()
    try:
        return objective(stats)
    finally:
        objective.load_state_dict(saved)
