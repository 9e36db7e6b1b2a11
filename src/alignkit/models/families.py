"""Tiny random-weight models of the families users bring, built from transformers' own config classes.

Each `Family` names the transformers config class, the options that make the family what it is
(sliding windows shorter than a test sequence, soft-capping, q/k norms, learned absolute positions,
MoE routing, multi-head latent attention) and the real tokenizer it pairs with (a folder name under
the vendored tokenizers, see `tokenizer_dir`). The models are a few hundred kilobytes of decoder plus
an embedding of the tokenizer's vocabulary, so the test suite can push every family through the
executor, the trainer and generation in seconds. ``scripts/model_matrix.py`` writes ``docs/models.md``
from the same list.

    from alignkit.models.families import FAMILIES, build_family_model, save_family
    model = build_family_model("gemma2")               # random weights, fp32
    path = save_family("mistral", "/tmp/mistral")      # model + its real tokenizer, one folder
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.models.load import attention_implementation
from alignkit.models.tiny import build_tokenizer

# a sliding window shorter than the test sequences (prompts of 20+ tokens), so a mask that ignores it differs
TEST_WINDOW = 8


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    tokenizer: str | None  # folder under the vendored tokenizers (None: the built-in tiny tokenizer)
    vocab_size: int  # >= the tokenizer's length; what the real checkpoints use where known
    what: str  # what sets the family apart for the executor
    options: dict = field(default_factory=dict)


_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
_ALTERNATING = dict(sliding_window=TEST_WINDOW, layer_types=["sliding_attention", "full_attention"])

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", "LlamaConfig", "llama-3.2", 128256, "Llama 3: RoPE, GQA, tied embeddings (3.2 1B/3B)",
           dict(tie_word_embeddings=True)),
    Family("qwen2", "Qwen2Config", "qwen2.5", 151936, "Qwen2/2.5: q/k/v biases", dict(tie_word_embeddings=True)),
    Family("qwen3", "Qwen3Config", "qwen3", 151936, "Qwen3: q/k RMS norms", dict(tie_word_embeddings=True)),
    Family("gemma2", "Gemma2Config", "gemma-3", 262208,
           "Gemma-2: logit and attention soft-capping, alternating sliding-window layers, no SDPA",
           dict(_ALTERNATING, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=8)),
    Family("gemma3", "Gemma3TextConfig", "gemma-3", 262208,
           "Gemma-3: alternating sliding-window (local) and global layers, q/k norms, scaled embeddings",
           dict(_ALTERNATING, query_pre_attn_scalar=8)),
    Family("mistral", "MistralConfig", "mistral-v3", 32768, "Mistral: a sliding window on every layer",
           dict(sliding_window=TEST_WINDOW)),
    Family("phi3", "Phi3Config", "phi-3", 32064, "Phi-3: fused qkv and gate/up projections, sliding window",
           dict(sliding_window=TEST_WINDOW)),
    Family("olmo2", "Olmo2Config", "olmo-2", 100352, "OLMo-2: norms after attention and MLP, q/k norms"),
    Family("gpt_neox", "GPTNeoXConfig", "gpt-neox-pythia", 50304,
           "GPT-NeoX/Pythia: partial rotary, parallel residual, fused qkv",
           dict(rotary_pct=0.25, use_parallel_residual=True)),
    Family("gpt2", "GPT2Config", "gpt2", 50257, "GPT-2: learned absolute positions, Conv1D layers"),
    Family("mixtral", "MixtralConfig", "mistral-v3", 32768, "Mixtral: sparse MoE (top-2 of 4 experts), sliding window",
           dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=TEST_WINDOW)),
    Family("qwen3_moe", "Qwen3MoeConfig", "qwen3", 151936, "Qwen3-MoE: top-2 of 4 experts with q/k norms",
           dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                tie_word_embeddings=True)),
    Family("deepseek_v3", "DeepseekV3Config", "deepseek-v3", 129280,
           "DeepSeek-V3: multi-head latent attention, shared + routed experts",
           dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                first_k_dense_replace=1, n_group=1, topk_group=1, num_key_value_heads=4, head_dim=4)),
]}


def _config_kwargs(family: Family, vocab_size: int, special: dict) -> dict:
    if family.config_class == "GPT2Config":
        base = dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=512)
    elif family.config_class == "GPTNeoXConfig":
        base = {k: _DECODER[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "max_position_embeddings")}
    else:
        base = dict(_DECODER)
    return {**base, **family.options, "vocab_size": vocab_size, **special}


def build_family_model(name: str, vocab_size: int | None = None, seed: int = 0, special_tokens: dict | None = None,
                       dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """A randomly initialised causal LM of family ``name`` (``FAMILIES``), in eval mode.

    ``special_tokens``: bos/eos/pad token ids for the config (ids outside the vocabulary are dropped)."""
    import transformers
    from transformers import AutoModelForCausalLM

    family = FAMILIES[name]
    vocab = vocab_size or family.vocab_size
    config_class = getattr(transformers, family.config_class)
    defaults = config_class()
    special = {k: None for k in ("bos_token_id", "eos_token_id", "pad_token_id")  # class defaults outside the vocab
               if isinstance(getattr(defaults, k, None), int) and getattr(defaults, k) >= vocab}
    special.update({k: v for k, v in (special_tokens or {}).items() if v is None or v < vocab})
    config = config_class(**_config_kwargs(family, vocab, special))
    torch.manual_seed(seed)
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attention_implementation(config, attn_implementation)
    return AutoModelForCausalLM.from_config(config, **kwargs).eval()


def tokenizer_dir(name: str | None = None) -> Path | None:
    """The vendored real tokenizers (``$ALIGNKIT_TOKENIZERS``, else ``../shared/tokenizers`` beside the
    repository), or one family's folder in it; None where they are not on this machine."""
    root = os.environ.get("ALIGNKIT_TOKENIZERS")
    base = Path(root) if root else Path(__file__).resolve().parents[4] / "shared" / "tokenizers"
    if not base.is_dir():
        return None
    if name is None:
        return base
    folder = base / name
    return folder if folder.is_dir() else None


def special_token_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def save_family(name: str, path: str | Path, seed: int = 0, tokenizer=None) -> Path:
    """Save a tiny model of family ``name`` with a tokenizer to one folder (like a Hub checkpoint).

    The tokenizer is the family's real one when the vendored tokenizers are here (the model's vocabulary
    is then the real checkpoint's), else the built-in tiny tokenizer (vocabulary 512)."""
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    vocab, folder = None, None
    if tokenizer is None:
        folder = tokenizer_dir(family.tokenizer) if family.tokenizer else None
        if folder is not None:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:
            tokenizer, vocab = build_tokenizer(), 512
    vocab = vocab or max(family.vocab_size, len(tokenizer))
    special = special_token_ids(tokenizer)
    if special["pad_token_id"] is None:
        special["pad_token_id"] = tokenizer.eos_token_id  # what alignkit.models.load.load_tokenizer pads with
    model = build_family_model(name, vocab, seed, special)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if folder is not None:  # the real files as they are (save_pretrained would re-serialise them)
        for f in folder.iterdir():
            if f.is_file():
                shutil.copyfile(f, path / f.name)
    else:
        tokenizer.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    return path
