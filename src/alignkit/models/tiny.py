"""Tiny tokenizers and models built locally, for tests, benchmarks and the demo.

Nothing is downloaded: a byte-level BPE tokenizer is trained with `tokenizers` on a small corpus,
a Qwen2- or Llama-style model is built from a config with random weights, and both are written with
``save_pretrained``. They are then loaded back through `alignkit.models.load` — the same
``from_pretrained`` path a user's real checkpoint takes.

    from alignkit.models.tiny import build_tiny
    path = build_tiny("/tmp/tiny")          # tokenizer + model folder
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import torch

# A ChatML-style template (as Qwen2 uses). The assistant turn ends with <|im_end|>, which is also EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_WORDS = ["the", "a", "an", "movie", "film", "story", "actor", "plot", "scene", "music", "great", "good", "bad", "awful", "boring", "brilliant", "wonderful", "terrible", "dull", "fun", "loved", "hated", "was", "is", "it", "this", "that", "and", "but", "very", "really", "not", "so", "I", "we", "you", "they", "watched", "saw", "think", "felt", "ending", "beginning", "character", "characters", "director", "question", "answer", "what", "why", "how", "when", "where", "who", "yes", "no", "please", "thanks", "hello", "world", "system", "user", "assistant", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "plus", "minus", "equals", "number"]


def default_corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """Random sentences over a small English vocabulary, with punctuation and digits."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 999)))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"]))
    return lines


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, chat_template: bool = True):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer.

    Byte-level BPE merges a leading space into the next word ("Ġgood"), so tokenizing a prompt
    and a completion separately differs from tokenizing their concatenation — exactly the case
    the exact-boundary tokenizer must handle.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus or default_corpus()), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    vocab_size: int,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_positions: int = 1024,
    tie_embeddings: bool = True,
    seed: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A randomly initialised Qwen2- or Llama-style causal LM."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_tiny(
    path: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    arch: str = "qwen2",
    chat_template: bool = True,
    seed: int = 0,
    **model_kwargs,
) -> Path:
    """Build a tokenizer and a model and save both to ``path`` (one folder, like a Hub checkpoint)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size, chat_template=chat_template)
    model = build_model(
        len(tokenizer),
        arch=arch,
        seed=seed,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **model_kwargs,
    )
    tokenizer.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    return path
