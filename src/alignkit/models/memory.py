"""Peak training memory of one optimizer step, estimated from a model's config (no weights needed).

The formula (bytes; ``P`` parameters, ``P_t`` trainable ones, ``b`` bytes per parameter of ``dtype``, ``a``
bytes per activation value: 2 under bf16/fp16 autocast or a 16-bit ``dtype``, else 4):

* weights ``P·b``; gradients ``P_t·b``; AdamW's two moments ``2·P_t·b`` (torch keeps them in the parameter
  dtype). Full fine-tuning: ``P_t = P`` (16 bytes a parameter in fp32); LoRA: ``P_t`` = the adapters, and
  the frozen base is the reference (adapters off), so no second copy. A frozen reference copy (full
  fine-tuning with ``ref_cache=off``) adds ``P·b``, shown apart.
* activations kept for backward, over ``T = batch_size · K · max_length`` tokens (K = 2 responses a pair,
  each padded to ``max_length``: an upper bound, as shared-prompt packing encodes each prompt once):
  per token and decoder layer ``8h + 2·kv + g·I`` values (``h`` hidden size, ``kv`` the key/value width,
  ``I`` the MLP width or, for MoE, the active experts' width; ``g`` = 4 for gated MLPs — gate, up, their
  product, the activation — and 2 for plain ones), plus ``4h`` a token outside the layers (embeddings,
  final norm, head input). Activation checkpointing keeps ``h`` a token a layer plus one layer's full set.
  Eager attention also keeps the ``heads · L²`` attention probabilities of every row and layer
  (SDPA kernels keep a log-sum-exp instead).
* the shared-prompt block mask: ``batch_size · (K·L)² · a`` per distinct sliding window (packed rows only).
* one vocabulary chunk of the log-prob executor (`alignkit.executor.logprobs.chunked_token_logps`, checkpointed
  per chunk): ``C · V · (a + 3·4)`` bytes for ``C = min(chunk rows, T)`` tokens of a ``V``-entry vocabulary:
  the logits, their fp32 copy, the log-softmax and its gradient.

Not counted: the allocator's fragmentation and CUDA context (add ~0.5-1 GB on a GPU), the reference's
forward (transient, without gradients), generation caches of online methods. A test holds the estimate
within a factor of 1.5 of the measured peak of a tiny model's step on CPU (tests/test_doctor.py).
"""

from __future__ import annotations

from dataclasses import dataclass

NON_GATED = {"gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt", "bloom", "falcon", "phi", "starcoder2", "mpt"}
BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass
class MemoryEstimate:
    """Bytes of each part of one training step's peak (see the module docstring for the formula)."""

    weights: int
    full_grads: int
    full_adamw: int
    lora_adapters: int  # LoRA weights + gradients + AdamW moments
    activations: int
    checkpointed_activations: int
    mask: int
    logits_chunk: int
    reference_copy: int  # a frozen reference for full fine-tuning without the reference cache

    def full(self, checkpointing: bool = False) -> int:
        return self.weights + self.full_grads + self.full_adamw + self._transient(checkpointing)

    def lora(self, checkpointing: bool = False) -> int:
        return self.weights + self.lora_adapters + self._transient(checkpointing)

    def _transient(self, checkpointing: bool) -> int:
        acts = self.checkpointed_activations if checkpointing else self.activations
        return acts + self.mask + self.logits_chunk


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    return default


def estimate_training_memory(config, n_params: int, n_lora: int, batch_size: int, max_length: int, *,
                             responses: int = 2, dtype: str = "float32", autocast_16bit: bool = True,
                             attn: str = "sdpa", windows: int = 1, packed: bool = True,
                             chunk_rows: int = 441) -> MemoryEstimate:
    """`MemoryEstimate` of one step for a causal LM with ``config`` (a transformers config) and ``n_params``
    parameters (``n_lora`` of them LoRA adapters when LoRA is on), ``batch_size`` records of ``responses``
    responses each at ``max_length`` tokens. ``autocast_16bit``: bf16/fp16 mixed precision (alignkit's
    ``mixed_precision=auto`` on a GPU); ``windows``: distinct sliding windows (block masks) when
    ``packed``; ``chunk_rows``: tokens per vocabulary chunk (`alignkit.executor.logprobs.auto_chunk_size`)."""
    b = BYTES[dtype]
    a = 2 if autocast_16bit or b == 2 else 4
    h = _get(config, "hidden_size", "n_embd", "d_model")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(config, "num_attention_heads", "n_head")
    head_dim = _get(config, "head_dim", default=h // heads)
    kv = _get(config, "num_key_value_heads", default=heads) * head_dim
    vocab = config.vocab_size
    inter = _get(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * h)
    if active := _get(config, "num_experts_per_tok", "moe_topk"):  # MoE: the experts a token goes through
        inter = active * _get(config, "moe_intermediate_size", default=inter)
        inter += _get(config, "n_shared_experts", default=0) * _get(config, "moe_intermediate_size", default=0)
    gate = 2 if getattr(config, "model_type", "") in NON_GATED else 4
    per_layer = 8 * h + 2 * kv + gate * inter
    tokens = batch_size * responses * max_length
    attn_probs = heads * max_length**2 * a * batch_size * responses if attn == "eager" else 0
    activations = tokens * (layers * per_layer + 4 * h) * a + layers * attn_probs
    checkpointed = tokens * (layers * h + per_layer + 4 * h) * a + attn_probs
    mask = batch_size * (responses * max_length) ** 2 * a * windows if packed else 0
    return MemoryEstimate(
        weights=n_params * b, full_grads=n_params * b, full_adamw=2 * n_params * b, lora_adapters=4 * n_lora * b,
        activations=activations, checkpointed_activations=checkpointed, mask=mask,
        logits_chunk=min(chunk_rows, tokens) * vocab * (a + 12), reference_copy=n_params * b,
    )


def gib(n: int) -> str:
    """``n`` bytes for people: ``1.23 GB`` (GiB), ``45.6 MB`` (MiB)."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
