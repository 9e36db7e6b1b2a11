"""The sequence-statistics executor: batch + causal LM -> `SequenceStats`, without [B, L, V] logits.

1. The decoder runs once over the packed rows (shared-prompt block mask, restarted positions).
2. Only the hidden states that predict completion tokens are gathered: [N, H].
3. They are projected to the vocabulary in chunks of ``chunk_size`` tokens (default: as many as
   make ``CHUNK_ELEMENTS`` = 2^23 logits on CPU, e.g. 1024 tokens at V = 8k, 64 at V = 128k; 2^26 on a GPU,
   where each chunk's kernel launches and checkpoint cost more than its memory); each chunk's
   log-softmax is gathered at the target ids and discarded. Under autograd every chunk is
   checkpointed, so backward recomputes its logits instead of keeping them: peak extra memory is
   one [chunk, V] block (32 MB in fp32 on CPU, 256 MB on a GPU) whatever the sequence length and vocabulary.
4. Token log-probs are summed per response slot into ``logps [B, K]``.

`LogProbModel` wraps a causal LM as an ``nn.Module`` whose forward does all of this, so accelerate can
wrap *it* (DDP/FSDP hooks see every parameter the loss touches).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alignkit.data.collate import Batch
from alignkit.errors import ModelError
from alignkit.executor.flex import flex_masks
from alignkit.models.attention import attention_windows, is_flex, use_unfused_on_cpu
from alignkit.objectives.stats import SequenceStats

PACKING_BACKENDS = ("sdpa", "eager", "flex_attention")
CHUNK_ELEMENTS = 1 << 23  # logits per chunk when chunk_size is 0 (auto), on CPU
# On a GPU: 2^26. An H200 profile of a Qwen2-0.5B-shaped DPO step (vocab 151,936: 55-token chunks at 2^23)
# showed a launch-bound step (kernels busy ~56 ms of ~300 ms); each chunk adds a dozen launches and a
# checkpoint recompute, so fewer, larger chunks (441 tokens at that vocab, 256 MB of fp32 logits) are cheaper.
CHUNK_ELEMENTS_GPU = 1 << 26


def auto_chunk_size(vocab: int, device: torch.device) -> int:
    """Rows per log-softmax chunk when ``chunk_size`` is 0: a fixed number of logits per chunk (at least 16 rows)."""
    elements = CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS_GPU
    return max(16, elements // vocab)


def configure_attention_kernels(device: torch.device, cudnn: bool) -> bool:
    """Turn cuDNN's SDPA kernel off on CUDA unless asked for; returns whether it is on.

    In the H200 profile above, SDPA with the shared-prompt block mask dispatched to cuDNN and cost 3.5 ms of
    CPU per forward call and 2.6 ms per backward (145 ms per step over 24 layers, for 2.7 ms of GPU time);
    without it the same additive mask goes to the memory-efficient kernel. Process-wide (a forward and its
    checkpoint recompute must pick the same kernel)."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    return cudnn


# layer types a 4D block mask expresses (with the layer's sliding window, if any); others (chunked attention,
# linear / state-space layers) make a model fall back to padded rows


def decoder_mask(batch: Batch, config, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
    """The attention mask a decoder gets for ``batch``: the 2D padding mask of padded rows as it is; for
    shared-prompt rows the additive block mask with each layer type's sliding window applied (a block-sparse
    `BlockMask` of the same pattern under FlexAttention, `alignkit.executor.flex`) — one mask
    when every layer sees the same, else ``{layer type: mask}``, which transformers' mixed-attention models
    (Gemma-2/3, Cohere-2, Qwen2 with windowed layers...) take in place of the mask they would build."""
    flex = is_flex(config)
    if flex:
        use_unfused_on_cpu()
    if batch.attention_mask.dim() != 4:
        return batch.attention_mask
    windows = attention_windows(config) or {"full_attention": None}
    if flex:  # block-sparse masks for FlexAttention
        masks = flex_masks(batch, windows, dtype)
    else:
        masks = {t: batch.additive_mask(dtype, w) for t, w in windows.items()}
    if len({w for w in windows.values()}) == 1:
        return next(iter(masks.values()))
    return masks


def supports_packing(model: nn.Module) -> bool:
    """Shared-prompt packing needs an attention backend that honours a custom 4D mask and layers whose
    attention pattern the block mask can express."""
    config = getattr(unwrap(model), "config", None)
    impl = getattr(config, "_attn_implementation", None)
    return impl in PACKING_BACKENDS and attention_windows(config) is not None


def packing_layout(packing: str, model: nn.Module) -> str:
    """The batch layout for a ``packing`` setting: ``auto`` (the cheaper of shared-prompt and padded rows
    per batch) when the attention backend takes a 4D block mask, else ``padded``."""
    import logging

    if packing != "auto":
        return packing
    if supports_packing(model):
        return "auto"
    impl = getattr(unwrap(model).config, "_attn_implementation", None)
    logging.getLogger("alignkit").info("attention backend %r cannot take a 4D block mask: using padded batches "
                                       "(no packing)", impl)
    return "padded"


def attention_cost_weight(model: nn.Module) -> float:
    """Cost of one attention query-key pair relative to one token through the linear layers (per layer):
    ``4H / (2(2H^2 + 2H·kv + 3H·I))`` for a Llama-style block (QK^T and AV vs. q/k/v/o and gated MLP)."""
    cfg = unwrap(model).config
    H = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or H // heads
    inter = getattr(cfg, "intermediate_size", None) or 4 * H
    return 2.0 / (2 * H + 2 * kv * head_dim + 3 * inter)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers `PreTrainedModel` under peft / DDP / `LogProbModel` wrappers."""
    while True:
        if isinstance(model, LogProbModel) or getattr(model, "_alignkit_wrapper", False):
            model = model.model
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


class LogProbModel(nn.Module):
    """Causal LM -> per-token log-probs of the scored completion tokens of a `Batch`."""

    def __init__(self, model: nn.Module, chunk_size: int = 0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def _no_split_modules(self):  # lets FSDP's transformer-based auto-wrap find the decoder layers
        return getattr(unwrap(self.model), "_no_split_modules", None)

    def forward(self, batch: Batch | None = None, logits_of: Tensor | None = None, keep: int = 0) -> Tensor:
        """Per-token log-probs of ``batch``; with ``logits_of`` (token ids ``[1, T]``) instead, the model's own
        full-vocabulary forward (the last ``keep`` positions' logits; 0: all) — `verify_against_forward` calls
        both through this module so that a sharded (FSDP / DeepSpeed) wrapper around it gathers the parameters
        for either."""
        if logits_of is not None:
            return self.model(input_ids=logits_of, **({"logits_to_keep": keep} if keep else {})).logits
        base = unwrap(self.model)
        decoder, head = base.get_decoder(), base.get_output_embeddings()
        mask = decoder_mask(batch, base.config, head.weight.dtype)
        hidden = decoder(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.pred_index)
        scale, softcap = logit_transform(base.config)
        return chunked_token_logps(hidden, head, batch.targets, self.chunk_size, softcap, scale)


def logit_transform(config) -> tuple[float, float | None]:
    """What some families apply to ``lm_head`` outputs: (multiplier, soft cap).

    Cohere's ``logit_scale`` multiplies, Granite's ``logits_scaling`` divides, Gemma-2's
    ``final_logit_softcapping`` caps with tanh. `verify_against_forward` catches any other quirk.
    """
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scale /= float(getattr(config, "logits_scaling", None) or 1.0)
    return scale, getattr(config, "final_logit_softcapping", None)


def _chunk_logps(hidden: Tensor, targets: Tensor, head: nn.Module, scale: float, softcap: float | None) -> Tensor:
    logits = head(hidden).float()
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def chunked_token_logps(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 0, softcap: float | None = None,
    scale: float = 1.0,
) -> Tensor:
    """log p(targets | hidden) for [N, H] hidden states, ``chunk_size`` rows at a time (fp32 softmax).

    ``chunk_size <= 0`` picks `auto_chunk_size` rows.
    """
    if chunk_size <= 0:
        chunk_size = auto_chunk_size(head.weight.shape[0], hidden.device)
    out = []
    for i in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[i : i + chunk_size], targets[i : i + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_chunk_logps, h, t, head, scale, softcap, use_reentrant=False))
        else:
            out.append(_chunk_logps(h, t, head, scale, softcap))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def sum_per_slot(token_logps: Tensor, batch: Batch) -> Tensor:
    """Sum token log-probs into their response slots -> [B, K]."""
    B, K = batch.shape
    out = torch.zeros(B * K, dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, batch.slot, token_logps).view(B, K)


def pad_per_slot(token_logps: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Scatter token log-probs into [B, K, T] with a bool mask (T = longest completion)."""
    B, K = batch.shape
    T = int(batch.lengths.max()) if batch.lengths.numel() else 0
    dense = torch.zeros(B * K, T, dtype=token_logps.dtype, device=token_logps.device)
    dense = dense.index_put((batch.slot, batch.token_pos), token_logps)
    mask = torch.zeros(B * K, T, dtype=torch.bool, device=token_logps.device)
    mask[batch.slot, batch.token_pos] = True
    return dense.view(B, K, T), mask.view(B, K, T)


def build_stats(
    batch: Batch,
    token_logps: Tensor,
    ref_token_logps: Tensor | None = None,
    with_token_logps: bool = False,
    ref_logps: Tensor | None = None,
) -> SequenceStats:
    """`SequenceStats` from per-token log-probs of the policy and, optionally, the reference's
    per-token (``ref_token_logps``) or summed (``ref_logps [B, K]``, e.g. from a cache) log-probs.

    A batch with auxiliary slots (``batch.aux_slot``: KTO's mismatched completions) yields their
    detached log-ratios as ``extra["kl_logratios"]`` [B]; the slots themselves are dropped from the stats.
    """
    if ref_token_logps is not None:
        ref_logps = sum_per_slot(ref_token_logps, batch)
    logps = sum_per_slot(token_logps, batch)
    lengths, valid = batch.lengths.to(token_logps.dtype), batch.valid
    extra = dict(batch.extra)
    if batch.aux_slot is not None:
        if ref_logps is None:
            raise ValueError("the KL baseline (kl_logratios) needs reference log-probs")
        rows = torch.arange(logps.shape[0], device=logps.device)
        aux = batch.aux_slot.clamp(min=0)
        extra["kl_logratios"] = (logps[rows, aux] - ref_logps[rows, aux]).detach()
        valid = valid.clone()
        valid[rows, aux] = valid[rows, aux] & (batch.aux_slot < 0)
        if bool((batch.aux_slot == logps.shape[1] - 1).all()):  # the usual case: drop the last column
            logps, ref_logps, lengths, valid = (t[:, :-1] for t in (logps, ref_logps, lengths, valid))
    K = logps.shape[1]
    stats = SequenceStats(
        logps=logps,
        ref_logps=ref_logps,
        lengths=lengths,
        valid=valid,
        weights=batch.weights,
        **{k: v[:, :K] for k, v in batch.labels.items()},
        extra={k: v[:, :K] for k, v in extra.items() if v.dim() > 1} | {k: v for k, v in extra.items() if v.dim() == 1},
    )
    if with_token_logps:
        stats.token_logps, stats.token_mask = pad_per_slot(token_logps, batch)
        if ref_token_logps is not None:
            stats.extra["ref_token_logps"] = pad_per_slot(ref_token_logps, batch)[0]
        if stats.token_logps.shape[1] != K:
            for name in ("token_logps", "token_mask"):
                setattr(stats, name, getattr(stats, name)[:, :K])
            if "ref_token_logps" in stats.extra:
                stats.extra["ref_token_logps"] = stats.extra["ref_token_logps"][:, :K]
    return stats


class ExecutorMismatch(ModelError):
    """The executor's log-probs (or rewards) differ from the model's own forward for some response."""


def own_forward(scorer: nn.Module, ids: Tensor, keep: int = 0) -> Tensor:
    """The model's own forward through ``scorer`` (``logits_of``), keeping the logits of the last ``keep``
    positions only where the model takes ``logits_to_keep`` (0: all of them)."""
    try:
        return scorer(logits_of=ids, keep=keep)
    except TypeError:  # a remote-code model without logits_to_keep
        logits = scorer(logits_of=ids)
        return logits[:, -keep:] if keep else logits


def plain_sequences(batch: Batch) -> list[tuple[int, Tensor]]:
    """``(slot, ids [1, T])`` for every response in ``batch``: its prompt and the response alone, as the model's
    own forward would see them (the rows of a shared-prompt batch hold the other responses too)."""
    L = batch.input_ids.shape[1]
    out = []
    for slot in torch.unique(batch.slot).tolist():
        last = int(batch.pred_index[batch.slot == slot][-1]) + 1  # flat index of the last scored token
        row, t = divmod(last, L)
        keep = batch.attention_mask[row, 0, t] if batch.attention_mask.dim() == 4 else batch.attention_mask[row].bool()
        out.append((slot, batch.input_ids[row][keep][None]))
    return out


@torch.no_grad()
def verify_against_forward(model: nn.Module, batch: Batch, rtol: float, scorer: nn.Module | None = None) -> float:
    """Compare the executor with ``model(input_ids).logits.log_softmax(-1)`` for every response of ``batch``.

    Guards against model families whose forward does something the executor does not reproduce (an
    attention pattern the block mask misses, a logit transform). Returns the largest absolute difference of a
    summed log-prob; raises `ExecutorMismatch` when one exceeds ``rtol`` relative.
    ``scorer``: the trainer's prepared `LogProbModel` (under FSDP every process must call it, with the same
    batch); by default a `LogProbModel` around ``model``.
    """
    scorer = scorer if scorer is not None else LogProbModel(model)
    ours = sum_per_slot(scorer(batch).float(), batch).flatten()
    lengths = batch.lengths.flatten()
    worst = 0.0
    for slot, ids in plain_sequences(batch):
        n = int(lengths[slot])
        logits = own_forward(scorer, ids, n + 1).float().log_softmax(-1)[0]
        naive = float(logits[-n - 1 : -1].gather(-1, ids[0, -n:, None]).sum())
        diff = abs(float(ours[slot]) - naive)
        worst = max(worst, diff)
        if diff > rtol * max(1.0, abs(naive)):
            raise ExecutorMismatch(
                f"the log-prob executor disagrees with this model's own forward ({float(ours[slot]):.4f} vs "
                f"{naive:.4f} for a response of {n} tokens in {batch.layout} rows); the model family transforms its "
                "logits or attention in a way alignkit does not reproduce. Try packing=padded, or report the model type."
            )
    return worst
