"""``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_param_check.py OUT key=value ...``: one online
run (the CLI's config keys), then each process writes, per trainable parameter of its policy (PPO's value model
included), the sum and the sum of squares to ``OUT/rank{r}.json``: processes in step hold equal numbers."""

import json
import sys
from pathlib import Path

import torch

from alignkit.algorithms.online import OnlineTrainer
from alignkit.config import TrainConfig, load_config
from alignkit.engine.checkpoint import WithExtras


def main() -> None:
    out = Path(sys.argv[1])
    trainer = OnlineTrainer(load_config(TrainConfig, None, sys.argv[2:]))
    trained = WithExtras(trainer.policy, trainer.extra_modules)  # the policy and PPO's value model
    initial = {n: p.detach().double().sum().item() for n, p in trained.named_parameters() if p.requires_grad}
    local, rollout = [], trainer.rollout

    def recorded(*args, **kwargs):  # this process's own samples' mean reward, before any averaging
        exp = rollout(*args, **kwargs)
        local.append(float(exp.rewards.mean()))
        return exp

    trainer.rollout = recorded
    result = trainer.train()
    rank = trainer.accelerator.process_index
    sums = {n: [p.detach().double().sum().item(), p.detach().double().pow(2).sum().item(), initial[n]]
            for n, p in trained.named_parameters() if p.requires_grad}
    logged = [r["reward/mean"] for r in result.history if "loss" in r]
    (out / f"rank{rank}.json").write_text(json.dumps({"params": sums, "local_rewards": local, "logged": logged}))
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


if __name__ == "__main__":
    main()
