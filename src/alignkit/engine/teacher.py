"""The teacher of distillation objectives: a frozen model whose top-k next-token log-probs per completion
position (and the rest's mass) become ``extra["teacher_buckets"]``, beside the policy's log-probs of the same
tokens (``extra["student_buckets"]``), both from the executor's chunked logits (`chunked_topk_logps`).
Objectives that weigh the teacher against another model (``adpa``, ``aligndistil``) also get that model's
(``teacher_ref=PATH``) log-probs of the teacher's top-k tokens: ``extra["teacher_ref_buckets"]``.

The teacher's side never changes during training, so by default it is computed once per dataset and cached on
disk (`engine/teachercache.py`); a run whose cache is complete loads no teacher model at all. With
``teacher_cache=false`` the teacher runs on the fly for every batch (one no-grad forward per model; each
process holds a full copy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import LogProbModel
from alignkit.models.load import load_model

TEACHER_EXTRAS = ("teacher_buckets", "student_buckets", "teacher_ref_buckets")


class TeacherSide:
    """Gives a batch's teacher-side tensors (`targets`); calling it adds the policy's buckets at the teacher's ids."""

    def targets(self, batch: Batch) -> dict[str, Tensor]:
        """``{"ids": [N, k], "teacher_buckets": [N, k+1](, "teacher_ref_buckets": [N, k+1])}`` per scored token."""
        raise NotImplementedError

    def __call__(self, scorer: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The policy's per-token log-probs [N] through ``scorer`` and the bucket tensors [N, k+1]."""
        extras = self.targets(batch)
        token_logps, _, student = scorer(batch, buckets_at=extras.pop("ids"))
        return token_logps, {**extras, "student_buckets": student}


class Teacher(TeacherSide):
    """The teacher (and ``teacher_ref``) models scoring each batch without gradients."""

    def __init__(self, model: nn.Module, top_k: int, chunk_size: int, ref_model: nn.Module | None = None):
        self.scorer = LogProbModel(model, chunk_size)
        self.ref_scorer = LogProbModel(ref_model, chunk_size) if ref_model is not None else None
        self.top_k = top_k
        self.vocab = vocab_size(model)

    def targets(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            _, ids, teacher = self.scorer(batch, top_k=self.top_k)
            out = {"ids": ids, "teacher_buckets": teacher}
            if self.ref_scorer is not None:
                out["teacher_ref_buckets"] = self.ref_scorer(batch, buckets_at=ids)[2]
        return out


def reads_teacher(objective) -> bool:
    return any(e in objective.extras for e in TEACHER_EXTRAS)


def reads_teacher_ref(objective) -> bool:
    return "teacher_ref_buckets" in objective.extras


def check_teacher(config, objective) -> None:
    """Refuses a teacher nobody reads, a missing one, and a ``teacher_ref`` no objective weighs it against
    (config only: before any model loads)."""
    if not reads_teacher(objective):
        if config.teacher:
            raise ConfigError(f"teacher={config.teacher} is set but objective {objective.name} reads no teacher "
                              "(use objective=distill, adpa or aligndistil, alone or in a list)")
        return
    if not config.teacher:
        raise ConfigError(f"objective {objective.name} distils from a teacher model: set teacher=PATH (a model with "
                          "the policy's tokenizer)")
    if config.teacher_ref and not reads_teacher_ref(objective):
        raise ConfigError(f"teacher_ref={config.teacher_ref} is set but objective {objective.name} does not weigh "
                          "the teacher against it (adpa and aligndistil do)")


def teacher_ref_path(config) -> str:
    """The model the teacher is weighed against: ``teacher_ref``, else the run's reference (``ref_model``, else
    the initial policy ``model``)."""
    return config.teacher_ref or config.ref_model or config.model


def check_vocab(name: str, path: str, theirs: int, mine: int) -> None:
    if mine != theirs:
        raise ConfigError(f"{name}={path} has a vocabulary of {theirs} tokens, the policy {mine}: "
                          "distillation needs the same tokenizer")


def load_frozen(name: str, path: str, policy: nn.Module, device, load_kwargs: dict) -> nn.Module:
    """A teacher-side model in eval mode without gradients, on ``device``; its vocabulary must be the policy's."""
    model = load_model(path, **load_kwargs)
    model.eval()
    model.requires_grad_(False)
    check_vocab(name, path, model.get_output_embeddings().weight.shape[0], vocab_size(policy))
    return model.to(device)


def vocab_size(model: nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def build_teacher(config, objective, policy: nn.Module, device, load_kwargs: dict) -> Teacher:
    """The run's live `Teacher` (and its ``teacher_ref`` model when the objective reads it)."""
    teacher = load_frozen("teacher", config.teacher, policy, device, load_kwargs)
    ref = (load_frozen("teacher_ref", teacher_ref_path(config), policy, device, load_kwargs)
           if reads_teacher_ref(objective) else None)
    return Teacher(teacher, config.teacher_top_k, config.chunk_size, ref)


def teacher_cache_dir(config, output_dir: Path) -> Path:
    return Path(config.teacher_cache_dir) if config.teacher_cache_dir else Path(output_dir) / "teacher_cache"
