"""Reference log-prob strategies.

* ``none`` — the objective reads no reference (SimPO, ORPO, CPO, SFT...): nothing is loaded.
* ``copy`` — a frozen copy of the initial policy (default for full fine-tuning).
* ``path`` — a separate checkpoint (``ref_model=PATH``), loaded frozen.
* ``disable_adapters`` — with LoRA, the policy itself with its adapters switched off: the base
  weights *are* the initial policy, so no second copy is held in memory (default with LoRA).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError
from alignkit.executor.logprobs import LogProbModel, sum_per_slot
from alignkit.models.load import frozen_copy, load_model


class Reference:
    strategy = "none"

    def token_logps(self, batch: Batch) -> Tensor | None:
        """Per-token reference log-probs of the batch's scored tokens [N], or None."""
        return None

    def sequence_logps(self, batch: Batch) -> Tensor | None:
        """Summed reference log-probs [B, K], or None."""
        tokens = self.token_logps(batch)
        return None if tokens is None else sum_per_slot(tokens, batch)


class ModelReference(Reference):
    def __init__(self, model: nn.Module, strategy: str, chunk_size: int):
        self.scorer = LogProbModel(model, chunk_size)
        self.strategy = strategy

    @torch.no_grad()
    def token_logps(self, batch: Batch) -> Tensor:
        return self.scorer(batch)


class DisabledAdapterReference(Reference):
    strategy = "disable_adapters"

    def __init__(self, peft_model: nn.Module, chunk_size: int):
        self.model = peft_model
        self.scorer = LogProbModel(peft_model, chunk_size)

    def _as_reference(self):
        return self.model.disable_adapter()

    @torch.no_grad()
    def token_logps(self, batch: Batch) -> Tensor:
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference pass
        try:
            with self._as_reference():
                return self.scorer(batch)
        finally:
            self.model.train(was_training)


class InitialPolicyReference(DisabledAdapterReference):
    """The policy itself, before its first update: serves the one pass that fills the reference cache
    for the ``copy`` strategy, so no copy of the model is ever made. Invalid once training starts."""

    strategy = "copy"

    def _as_reference(self):
        return contextlib.nullcontext()


def resolve_strategy(strategy: str, needs_reference: bool, lora: bool, ref_model: str | None) -> str:
    if not needs_reference:
        return "none"
    if strategy != "auto":  # one of alignkit.config.CHOICES["ref_strategy"], path / disable_adapters checked there
        if strategy == "none":
            raise ConfigError("the objective needs reference log-probs; ref_strategy=none is not possible")
        return strategy
    if ref_model:
        return "path"
    return "disable_adapters" if lora else "copy"


def build_reference(
    strategy: str, policy: nn.Module, ref_model: str | None, device, chunk_size: int, load_kwargs: dict,
    for_cache: bool = False,
) -> Reference:
    """Must be called with the *initial* policy (before any checkpoint is loaded into it).

    ``for_cache``: the reference only fills the log-prob cache before training, so ``copy`` can use
    the initial policy itself instead of a second copy in memory."""
    if strategy == "none":
        return Reference()
    if strategy == "disable_adapters":
        return DisabledAdapterReference(policy, chunk_size)
    if strategy == "copy" and for_cache:
        return InitialPolicyReference(policy, chunk_size)
    if strategy == "copy":
        ref = frozen_copy(policy)
    else:
        ref = load_model(ref_model, **load_kwargs)
        ref.eval()
        ref.requires_grad_(False)
    return ModelReference(ref.to(device), strategy, chunk_size)

