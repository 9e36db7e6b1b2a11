"""``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_user_table_check.py OUT key=value ...``: one offline
run of a personalised reward model (``objective=pal``, the CLI's config keys), then each process writes the user
table its objective holds (`alignkit.objectives.personal.user_table`) to ``OUT/rank{r}.json``."""

import json
import sys
from pathlib import Path

import torch

from alignkit.config import TrainConfig, load_config
from alignkit.engine.trainer import Trainer
from alignkit.objectives.personal import user_table


def main() -> None:
    out = Path(sys.argv[1])
    trainer = Trainer(load_config(TrainConfig, None, sys.argv[2:]))
    trainer.train()
    table = user_table(trainer.objective.terms[0].state)
    (out / f"rank{trainer.accelerator.process_index}.json").write_text(json.dumps(table))
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


if __name__ == "__main__":
    main()
