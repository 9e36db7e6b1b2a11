"""The online loop: each step samples K completions per prompt from the current policy, scores them with
the run's reward, and learns from them — the same trainer, checkpoints and logging as offline training.

    alignkit train objective=grpo model=PATH prompts=problems.jsonl reward=rule:exact_answer num_samples=8

`OnlineTrainer.step` is the same five stages for every method; the objective's `Recipe`
(`alignkit.algorithms.recipe`) fills in what differs:

1. **rollout** — the step's prompts, K samples each, seeded by (seed, step, process) so a resumed run samples
   exactly what an uninterrupted one would (in-process, or on ``rollout_workers`` Ray actors);
2. **reward** — the run's reward (`alignkit.rewards`): rewards [B, K] and the reward's own metrics;
3. **targets** — without gradient: the sampling policy's token log-probs (when the recipe's loss reads a
   ratio), the reference's, and the recipe's targets (group advantages, GAE, nothing);
4. **policy loss** — the registered objective on the `SequenceStats` of each micro-batch (``grad_accum``
   splits the prompts), plus the recipe's tensors with gradient (a value model's estimates);
5. **update** — ``updates_per_batch`` optimizer steps on the rollout (GRPO's μ).

The families: `policy_gradient` (grpo, dr_grpo, rloo, remax, reinforce_pp), `ppo`, `preference` (any offline
objective on fresh samples: online DPO, RAFT, CoPG ...), `selfplay` (sppo, nash_md); `iterative` runs rounds.
Logged per step: reward mean/std, response length, share of unfinished samples, the recipe's and the
objective's metrics, tokens/s; with ``log_samples_every=N`` the samples go to ``samples.jsonl``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from alignkit.algorithms import preference
from alignkit.algorithms.recipe import Rollout, RunContext, recipe_for
from alignkit.data.dataset import prompt_text_key
from alignkit.data.prompts import PromptRows, read_prompt_rows
from alignkit.engine.distributed import mean_over_processes
from alignkit.engine.logging import keep_lines_up_to, peak_memory_mb
from alignkit.engine.trainer import Trainer, TrainingStopped
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import build_stats, pad_per_slot, unwrap
from alignkit.rewards import LiveModels, build_group_reward
from alignkit.rollout import sample_experience
from alignkit.rollout.correction import RolloutCorrection
from alignkit.user_code import collect, record

logger = logging.getLogger("alignkit")


class OnlineTrainer(Trainer):
    """The trainer's wiring with prompts for data and the objective's recipe (module docstring); ``step`` is the
    online step. What the recipe trains beside the policy (PPO's value model) is handed to the trainer here."""

    def __init__(self, config, **wiring):
        super().__init__(config, **wiring)
        for name, (module, lr) in self.recipe.setup(self.context()).items():
            self.train_beside(name, module, lr)

    def context(self) -> RunContext:
        """What a recipe is given: the run's settings and models, not the trainer."""
        return RunContext(self.config, self.accelerator, unwrap(self.policy), self.reference, self.tokenizer,
                          self.load_kwargs)

    # ----------------------------------------------------------------- wiring (hooks of Trainer.__init__)
    def _check_inputs(self, c) -> None:
        if not c.model or not c.prompts or c.reward is None:
            raise ConfigError("online training needs model=PATH, prompts=FILE and reward=SPEC "
                             "(e.g. reward=rule:exact_answer, reward=rm:PATH, reward=module:function)")

    @functools.cached_property
    def recipe(self):
        """The objective's recipe (a fresh one per run), its settings checked."""
        recipe = recipe_for(self.objective, preference.FRESH_SAMPLES)
        recipe.check(self.config, self.objective)
        return recipe

    def _needs_reference(self) -> bool:
        return self.recipe.needs_reference(self.config, self.objective)

    def _prepare_data(self, strategy: str):
        c = self.config
        if self.objective.inputs == "logps":  # an offline objective on K freshly scored samples
            self.objective.check_data("scores", c.num_samples, c.num_samples, strategy != "none")
        rows = read_prompt_rows(c.prompts)
        evals = read_prompt_rows(c.eval_data) if c.eval_data else []
        if not evals and c.eval_split > 0:
            keys = sorted({prompt_key_of(r) for r in rows})
            random.Random(c.seed).shuffle(keys)
            held = set(keys[: max(1, round(c.eval_split * len(keys)))])
            evals = [r for r in rows if prompt_key_of(r) in held]
            rows = [r for r in rows if prompt_key_of(r) not in held]
        with collect() as code:
            self.reward = build_group_reward(c.reward, self.tokenizer, self.accelerator.device)
        self._code = code  # written to <output_dir>/code.json as the run starts (_start_files)
        logger.info("online (%s recipe): %d training prompts, %d held out; %d samples per prompt; reward %s",
                    self.recipe.family, len(rows), len(evals), c.num_samples, c.reward)
        return PromptRows(rows), (PromptRows(evals) if evals else None)

    def _steps_per_epoch(self) -> float:
        return self.order.per_epoch  # one batch of prompts per step; grad_accum only splits it

    def _optimizer_steps(self) -> int:
        return self.total_steps * self.config.updates_per_batch

    def _will_cache(self, strategy: str) -> bool:
        return False  # fresh samples every step

    def _verify_logprobs(self) -> None:
        self._verify_pending = True  # checked on the first rollout

    # ----------------------------------------------------------------- one step
    def rollout(self, rows: list[dict], seed: int, k: int, temperature: float):
        """K samples of each row's prompt from the current policy, scored by the run's reward (an `Experience`)."""
        c = self.config
        models = (LiveModels(unwrap(self.policy), self.reference, self.tokenizer, c)
                  if self.reward.needs_models else None)  # e.g. Nash-MD's mixture opponents decode with them
        if c.rollout_workers > 0 or c.rollout_backend == "vllm":  # Ray actors / local chunks / a vLLM engine
            if getattr(self, "_workers", None) is None:
                from alignkit.rollout.ray_backend import rollout_pool

                self._workers = rollout_pool(c, unwrap(self.policy), self.tokenizer, self.reward)
            return self._workers.rollout(rows, seed, k=k, max_new_tokens=c.max_new_tokens, temperature=temperature,
                                         top_p=c.top_p, unfinished_penalty=c.unfinished_penalty,
                                         chat_template=c.chat_template, stop=c.stop,
                                         chat_template_kwargs=c.chat_template_kwargs,
                                         **({"models": models} if models else {}))  # Ray refuses such rewards
        return sample_experience(unwrap(self.policy), self.tokenizer, [r["prompt"] for r in rows], rows,
                                 self.reward, k, seed, c.max_new_tokens, temperature, c.top_p,
                                 c.unfinished_penalty, c.chat_template, stop=c.stop,
                                 chat_template_kwargs=c.chat_template_kwargs, models=models)

    def step(self) -> dict[str, Any]:
        c, acc, recipe = self.config, self.accelerator, self.recipe
        t0 = time.perf_counter()
        # 1-2. rollout and reward
        rows = [self.train_data.rows[i] for i in self.order.indices(self.step_idx)]
        seed = (c.seed * 1_000_003 + self.step_idx) * acc.num_processes + acc.process_index
        exp = self.rollout(rows, seed, c.num_samples, c.temperature)
        t_gen = time.perf_counter() - t0
        chunks = [ch for ch in (list(range(len(rows)))[i::c.grad_accum] for i in range(c.grad_accum)) if ch]
        if getattr(self, "_verify_pending", False):  # on the first rollout's longest sample
            self.layout = self._checked_layout(exp.data)
            self._verify_pending = False
        batches = [exp.data.collate(ch, self.tokenizer.pad_token_id, self.layout, c.max_row_tokens,
                                    self.attn_weight).to(acc.device) for ch in chunks]
        # 3. targets, without gradient. With one update per rollout the behaviour log-probs are the update's
        # own, detached (ratio = 1): no separate forward, unless the recipe's targets read them
        reuse_old = recipe.behaviour_logps and c.updates_per_batch == 1 and not recipe.targets_read_old
        needs_tokens = self.objective.needs_token_logps
        self.scorer.eval()
        with torch.no_grad(), acc.autocast():
            old = [self.scorer(b) if recipe.behaviour_logps and not reuse_old else None for b in batches]
            refs = [(self.reference.token_logps(b) if needs_tokens else self.reference.sequence_logps(b))
                    if self.objective.needs_reference else None for b in batches]
            targets = recipe.targets(self.context(), Rollout(rows, seed, exp, chunks, batches, old, self.rollout))
        self.scorer.train()
        # 4-5. policy loss and update
        loss_sum, metrics, grad_norm, lr = 0.0, {}, 0.0, 0.0
        correction = RolloutCorrection(c.rollout_is, c.rollout_is_cap)  # engine vs trainer log-probs (rollout/correction.py)
        for _ in range(c.updates_per_batch):
            update_loss, update_metrics = 0.0, {}
            for j, (ch, batch, old_t, ref) in enumerate(zip(chunks, batches, old, refs)):
                sync = contextlib.nullcontext() if j == len(batches) - 1 else acc.no_sync(self.scorer)
                with sync:  # gradients are all-reduced once, after the last chunk
                    with acc.autocast():
                        token_logps = self.scorer(batch)
                        stats = build_stats(batch, token_logps, ref if needs_tokens else None,
                                            with_token_logps=needs_tokens, ref_logps=None if needs_tokens else ref)
                        if recipe.behaviour_logps:
                            old_t = token_logps.detach() if reuse_old else old_t
                            stats.extra["old_token_logps"] = pad_per_slot(old_t, batch)[0]
                        stats.extra.update(targets.extra[j], **recipe.live(batch))
                        if recipe.behaviour_logps:  # vLLM's own log-probs: rollout/logp_diff, rollout_is=tis
                            correction.apply(stats, exp.extra, ch, j)
                        stats.rewards = exp.rewards[ch].to(acc.device)
                        out = self.objective(stats)
                    acc.backward(out.loss / len(batches))
                update_loss += float(out.loss.detach()) / len(batches)
                for key, v in out.metrics.items():
                    update_metrics[key] = update_metrics.get(key, 0.0) + v / len(batches)
            update_loss, update_metrics, _, grad_norm, lr = self._apply_update(update_loss, update_metrics, 0)
            loss_sum += update_loss / c.updates_per_batch
            for key, v in update_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + v / c.updates_per_batch
        self.step_idx += 1
        self._log_samples(exp)
        dt = time.perf_counter() - t0
        rollout_metrics = self._process_mean({**exp.metrics(), **exp.reward_metrics, **targets.metrics,
                                               **correction.metrics()})
        record = {"step": self.step_idx, "epoch": self.order.epoch_of(self.step_idx - 1), "loss": loss_sum,
                  **rollout_metrics, **metrics, "lr": lr, "grad_norm": grad_norm, "seconds_per_step": dt,
                  "generation_seconds": t_gen, "tokens_per_second": exp.num_tokens / dt,
                  "peak_memory_mb": peak_memory_mb(acc.device), "skipped_steps": self.skipped_total}
        if self.skipped_in_row >= c.max_bad_steps:
            raise TrainingStopped(f"{self.skipped_in_row} steps in a row had a non-finite loss or gradient")
        return record

    def _process_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """The rollout's metrics over processes (each sampled as many samples, from its own prompts): means
        averaged; an ``X/std`` next to its ``X/mean`` from the averaged second moment."""
        if self.accelerator.num_processes == 1:
            return metrics
        pairs = {k: k[:-4] + "/mean" for k in metrics if k.endswith("/std") and k[:-4] + "/mean" in metrics}
        keys = sorted(metrics)
        raw = [metrics[k] ** 2 + metrics[pairs[k]] ** 2 if k in pairs else metrics[k] for k in keys]
        out = dict(zip(keys, mean_over_processes(self.accelerator, raw)))
        for k, m in pairs.items():
            out[k] = max(out[k] - out[m] ** 2, 0.0) ** 0.5
        return out

    # ----------------------------------------------------------------- files and evaluation
    def _start_files(self) -> None:
        """``code.json`` (which file each reward function came from); a resumed run's ``samples.jsonl`` without
        the lines of steps it will redo."""
        record(self.output_dir, self._code)
        if (self.output_dir / "samples.jsonl").exists():
            keep_lines_up_to(self.output_dir / "samples.jsonl", self.step_idx)

    def _log_samples(self, exp) -> None:
        c = self.config
        if not c.log_samples_every or self.step_idx % c.log_samples_every or not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / "samples.jsonl").open("a", encoding="utf-8") as f:
            for b, prompt in enumerate(exp.prompts):
                f.write(json.dumps({"step": self.step_idx, "prompt": prompt, "completions": exp.texts[b],
                                    "rewards": exp.rewards[b].tolist(), "finished": exp.finished[b]}) + "\n")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean reward of one sample per held-out prompt, at ``temperature`` (``eval_greedy``: greedy)."""
        if self.eval_data is None:
            return self.generation_eval()
        c = self.config
        rewards = []
        for start in range(0, len(self.eval_data), c.batch_size):
            rows = self.eval_data.rows[start:start + c.batch_size]
            temperature = 0.0 if c.eval_greedy else c.temperature
            rewards.append(self.rollout(rows, c.seed + 7 + start, 1, temperature).rewards[:, 0])
        return {"eval/reward": float(torch.cat(rewards).mean()), **self.generation_eval()}

    def _final_extras(self, folder: Path) -> None:
        super()._final_extras(folder)
        self.recipe.save(folder, self.tokenizer)  # e.g. final/value/, inside final/ before it is renamed into place


def prompt_key_of(row: dict) -> str:
    """The prompt key of a prompt row (the key offline splits hold prompts out by)."""
    return prompt_text_key(row["prompt"])
