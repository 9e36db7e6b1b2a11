"""Online training: each step samples K completions per prompt from the current policy, scores them with
a reward function, and learns from them — the same trainer, checkpoints and logging as offline training.

    alignkit train objective=grpo model=PATH prompts=problems.jsonl reward=rule:exact_answer num_samples=8

* **Policy-gradient objectives** (``grpo``, ``rloo``, ``remax``, ``reinforce_pp``; registered with
  ``inputs="rollout"``): advantages come from the group of K samples of each prompt
  (`objectives.rl.ADVANTAGES`; ReMax also samples one greedy completion per prompt as its baseline); the
  behaviour log-probs are computed once per rollout (no grad), then ``updates_per_batch`` optimizer steps
  are taken on the batch (GRPO's μ; the clipped ratio matters from the second one on). With one update
  per rollout they are the update's own log-probs, detached (ratio exactly 1), so no extra forward runs.
* **PPO** (``objective=ppo``): per-token advantages from a value model instead of the group —
  the KL to the reference in the reward (``kl_coef``), GAE(``gamma``, ``gae_lambda``), whitening
  (``whiten_advantages``), clipped policy and value losses; the value model, its checkpointing and
  ``final/value/`` are described in `alignkit.engine.value`.
* **Any offline objective on fresh samples**: the samples carry their rewards as ``scores``, so
  ``objective=dpo num_samples=2`` is online DPO (ties masked), ``objective=sft`` is RAFT (best-of-K SFT:
  SFT trains on the highest-scored sample), ``objective=plackett_luce`` ranks all K.

A step's generation is seeded by (seed, step, process): a resumed run samples exactly what an
uninterrupted one would. Logged per step: reward mean/std, response length, share of unfinished
samples, the objective's metrics (clip fraction, KL to the reference...), tokens/s; with
``log_samples_every=N`` the prompts, completions and rewards go to ``samples.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from alignkit.data.dataset import prompt_key
from alignkit.data.prompts import read_prompt_rows
from alignkit.engine import startup
from alignkit.engine.logging import keep_lines_up_to, peak_memory_mb
from alignkit.engine.logprobs import build_stats, pad_per_slot, unwrap
from alignkit.engine.trainer import Trainer, TrainingStopped
from alignkit.errors import ConfigError
from alignkit.rollout import build_reward, sample_experience
from alignkit.rollout.correction import RolloutCorrection
from alignkit.user_code import collect, record

logger = logging.getLogger("alignkit")


class PromptRows:
    """Prompt rows (dicts with ``prompt`` and any fields a reward reads, e.g. ``answer``)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.records: list = []

    def __len__(self) -> int:
        return len(self.rows)


class OnlineTrainer(Trainer):
    def __init__(self, config, **wiring):
        super().__init__(config, **wiring)
        self.value = None  # PPO's value model (engine/value.py), registered on the policy
        if "values" in self.objective.extras:
            from alignkit.engine.value import setup_value_model

            self.value = setup_value_model(self)

    def _apply_update(self, *args):
        if self.value is not None:  # outside the DDP wrapper (attached after prepare): averaged here
            from alignkit.engine.distributed import average_gradients

            average_gradients(self.value.parameters(), self.accelerator)
        return super()._apply_update(*args)

    def _process_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """The rollout's metrics over processes (each sampled as many samples, from its own prompts): means
        averaged; an ``X/std`` next to its ``X/mean`` from the averaged second moment."""
        from alignkit.engine.distributed import mean_over_processes

        if self.accelerator.num_processes == 1:
            return metrics
        pairs = {k: k[:-4] + "/mean" for k in metrics if k.endswith("/std") and k[:-4] + "/mean" in metrics}
        keys = sorted(metrics)
        raw = [metrics[k] ** 2 + metrics[pairs[k]] ** 2 if k in pairs else metrics[k] for k in keys]
        out = dict(zip(keys, mean_over_processes(self.accelerator, raw)))
        for k, m in pairs.items():
            out[k] = max(out[k] - out[m] ** 2, 0.0) ** 0.5
        return out

    def _check_inputs(self, c) -> None:
        if not c.model or not c.prompts or c.reward is None:
            raise ConfigError("online training needs model=PATH, prompts=FILE and reward=SPEC "
                             "(e.g. reward=rule:exact_answer, reward=rm:PATH, reward=module:function)")

    def _prepare_data(self, strategy: str):
        c = self.config
        if self.objective.inputs == "rewards":
            raise ConfigError(f"objective {self.objective.name} trains a reward model; online training needs a policy")
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
            self.reward_fn = build_reward(c.reward, self.tokenizer, self.accelerator.device)
        self._code = code  # written to <output_dir>/code.json as the run starts (_start_files)
        logger.info("online: %d training prompts, %d held out; %d samples per prompt; reward %s", len(rows),
                    len(evals), c.num_samples, c.reward)
        return PromptRows(rows), (PromptRows(evals) if evals else None)

    def _steps_per_epoch(self) -> float:
        return self.order.per_epoch  # one batch of prompts per step; grad_accum only splits it

    def _optimizer_steps(self) -> int:
        return self.total_steps * self.config.updates_per_batch

    def _will_cache(self, strategy: str) -> bool:
        return False  # fresh samples every step

    def _verify_logprobs(self) -> None:
        self._verify_pending = True  # checked on the first rollout

    def _rollout(self, rows: list[dict], seed: int, k: int, temperature: float):
        c = self.config
        if getattr(self.reward_fn, "needs_models", False):  # Nash-MD's mixture opponents (rollout/opponents.py)
            self.reward_fn.bind(unwrap(self.policy), self.reference, self.tokenizer, c)
        if c.rollout_workers > 0 or c.rollout_backend == "vllm":  # Ray actors / local chunks / a vLLM engine
            if getattr(self, "_workers", None) is None:
                from alignkit.rollout.ray_backend import rollout_pool

                self._workers = rollout_pool(c, unwrap(self.policy), self.tokenizer, self.reward_fn)
            return self._workers.rollout(rows, seed, k=k, max_new_tokens=c.max_new_tokens, temperature=temperature,
                                         top_p=c.top_p, unfinished_penalty=c.unfinished_penalty,
                                         chat_template=c.chat_template, stop=c.stop,
                                         chat_template_kwargs=c.chat_template_kwargs)
        return sample_experience(unwrap(self.policy), self.tokenizer, [r["prompt"] for r in rows], rows,
                                 self.reward_fn, k, seed, c.max_new_tokens, temperature, c.top_p,
                                 c.unfinished_penalty, c.chat_template, stop=c.stop,
                                 chat_template_kwargs=c.chat_template_kwargs)

    def step(self) -> dict[str, Any]:
        from alignkit.objectives.rl import ADVANTAGES, remax_advantages

        c, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        rows = [self.train_data.rows[i] for i in self.order.indices(self.step_idx)]
        seed = (c.seed * 1_000_003 + self.step_idx) * acc.num_processes + acc.process_index
        exp = self._rollout(rows, seed, c.num_samples, c.temperature)
        reward_metrics = dict(getattr(self.reward_fn, "last_metrics", None) or {})  # e.g. Nash-MD's opponents
        t_gen = time.perf_counter() - t0
        chunks = [list(range(len(rows)))[i::c.grad_accum] for i in range(c.grad_accum)]
        chunks = [ch for ch in chunks if ch]
        dev = acc.device
        if getattr(self, "_verify_pending", False):  # on the first rollout's longest sample
            self.layout = startup.check_executor(self, exp.data)
            self._verify_pending = False
        batches = [exp.data.collate(ch, self.tokenizer.pad_token_id, self.layout, c.max_row_tokens,
                                    self.attn_weight).to(dev) for ch in chunks]
        rollout_rl = self.objective.inputs == "rollout"
        name = self.objective.terms[0].spec.name
        adv, adv_metrics = None, {}
        if rollout_rl and self.value is None:
            valid = torch.ones_like(exp.rewards, dtype=torch.bool)
            if name == "remax":
                greedy = self._rollout(rows, seed, 1, 0.0).rewards[:, 0]
                adv = remax_advantages(exp.rewards, greedy)
                adv_metrics["reward/greedy"] = float(greedy.mean())
            else:
                adv = ADVANTAGES[name](exp.rewards, valid)
            adv_metrics.update({"advantage/mean": float(adv.mean()), "advantage/abs_mean": float(adv.abs().mean())})
        # With one update per rollout the behaviour log-probs are the update's own, detached (ratio = 1):
        # no separate no-grad forward (PPO still needs them first, for the KL in its reward)
        reuse_old = rollout_rl and c.updates_per_batch == 1 and self.value is None
        self.scorer.eval()
        with torch.no_grad(), acc.autocast():
            old = [self.scorer(b) for b in batches] if rollout_rl and not reuse_old else [None] * len(batches)
            needs_tokens = self.objective.needs_token_logps
            refs = [(self.reference.token_logps(b) if needs_tokens else self.reference.sequence_logps(b))
                    if self.objective.needs_reference else None for b in batches]
            ppo_extra, ppo_metrics = [{}] * len(batches), {}
            if self.value is not None:  # PPO: old values, KL in the reward, GAE advantages and returns
                from alignkit.engine.value import rollout_targets

                ppo_extra, ppo_metrics = rollout_targets(self, batches, old, [exp.rewards[ch].to(dev) for ch in chunks])
        self.scorer.train()
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
                        if rollout_rl:
                            old_t = token_logps.detach() if reuse_old else old_t
                            stats.extra["old_token_logps"] = pad_per_slot(old_t, batch)[0]
                            if self.value is not None:
                                stats.extra.update(ppo_extra[j], values=pad_per_slot(self.value(batch), batch)[0])
                            else:
                                stats.extra["advantages"] = adv[ch].to(dev)
                            correction.apply(stats, exp.extra, ch, j)  # vLLM: rollout/logp_diff, rollout_is=tis
                        stats.rewards = exp.rewards[ch].to(dev)
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
        rollout_metrics = self._process_mean({**exp.metrics(), **reward_metrics, **adv_metrics, **ppo_metrics,
                                               **correction.metrics()})
        record = {"step": self.step_idx, "epoch": self.order.epoch_of(self.step_idx - 1), "loss": loss_sum,
                  **rollout_metrics, **metrics, "lr": lr, "grad_norm": grad_norm, "seconds_per_step": dt,
                  "generation_seconds": t_gen, "tokens_per_second": exp.num_tokens / dt,
                  "peak_memory_mb": peak_memory_mb(dev), "skipped_steps": self.skipped_total}
        if self.skipped_in_row >= c.max_bad_steps:
            raise TrainingStopped(f"{self.skipped_in_row} steps in a row had a non-finite loss or gradient")
        return record

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
            rewards.append(self._rollout(rows, c.seed + 7 + start, 1, temperature).rewards[:, 0])
        return {"eval/reward": float(torch.cat(rewards).mean()), **self.generation_eval()}

    def save_final(self):
        """``final/`` (the policy); with PPO also ``final/value/``, the value model (see engine/value.py)."""
        if self.value is None:
            return super().save_final()
        from alignkit.engine.value import VALUE

        self.policy._modules.pop(VALUE)  # the policy's save_pretrained must not hold it
        try:
            return super().save_final()
        finally:
            setattr(self.policy, VALUE, self.value)

    def _final_extras(self, folder: Path) -> None:
        super()._final_extras(folder)
        if self.value is not None:  # inside final/ before it is renamed into place
            from alignkit.engine.value import save_value_model

            save_value_model(self.value, folder, self.tokenizer)


def prompt_key_of(row: dict) -> str:
    from alignkit.data.schema import PreferenceRecord

    return prompt_key(PreferenceRecord(prompt=row["prompt"], responses=["x"], ranks=[0]))
