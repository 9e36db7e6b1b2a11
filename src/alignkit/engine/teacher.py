"""The teacher of distillation objectives: a frozen model whose top-k next-token log-probs per completion
position (and the rest's mass) become ``extra["teacher_buckets"]``, beside the policy's log-probs of the same
tokens (``extra["student_buckets"]``), both from the executor's chunked logits (`chunked_topk_logps`).

Computed on the fly for every batch (one no-grad forward of the teacher, like an uncached reference); each
process holds a full copy of the teacher.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import LogProbModel
from alignkit.models.load import load_model

TEACHER_EXTRAS = ("teacher_buckets", "student_buckets")


class Teacher:
    def __init__(self, model: nn.Module, top_k: int, chunk_size: int):
        self.scorer = LogProbModel(model, chunk_size)
        self.top_k = top_k

    def __call__(self, scorer: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The policy's per-token log-probs [N] through ``scorer`` and the two bucket tensors [N, k+1]."""
        with torch.no_grad():
            _, ids, teacher = self.scorer(batch, top_k=self.top_k)
        token_logps, _, student = scorer(batch, buckets_at=ids)
        return token_logps, {"teacher_buckets": teacher, "student_buckets": student}


def build_teacher(config, objective, policy: nn.Module, device, load_kwargs: dict) -> Teacher | None:
    """The run's `Teacher` when the objective reads teacher buckets; refuses a teacher nobody reads, a missing
    one, and one whose vocabulary differs from the policy's."""
    if not any(e in objective.extras for e in TEACHER_EXTRAS):
        if config.teacher:
            raise ConfigError(f"teacher={config.teacher} is set but objective {objective.name} reads no teacher "
                              "(use objective=distill, alone or in a list)")
        return None
    if not config.teacher:
        raise ConfigError(f"objective {objective.name} distils from a teacher model: set teacher=PATH (a model with "
                          "the policy's tokenizer)")
    model = load_model(config.teacher, **load_kwargs)
    model.eval()
    model.requires_grad_(False)
    mine, theirs = policy.get_output_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0]
    if mine != theirs:
        raise ConfigError(f"teacher={config.teacher} has a vocabulary of {theirs} tokens, the policy {mine}: "
                          "distillation needs the same tokenizer")
    return Teacher(model.to(device), config.teacher_top_k, config.chunk_size)
