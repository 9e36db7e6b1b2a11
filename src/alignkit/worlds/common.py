"""Building a world's pretrained model: tokenizer and tiny model from its corpus, then SFT with the
alignkit trainer; reused when a folder already holds one built with the same settings."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit import train
from alignkit.config import TrainConfig
from alignkit.io_atomic import atomic_write, atomic_write_text
from alignkit.models.tiny import build_tiny

log = logging.getLogger("alignkit")


@dataclass
class PretrainSettings:
    """Tokenizer, model and pretraining sizes shared by the worlds (each world adds its own fields)."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 96
    intermediate_size: int | None = None  # MLP width; None: 4 x hidden_size
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    pretrain_epochs: float = 3.0
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    progress: bool = False


def pretrained_world(out_dir: str | Path, settings: dict[str, Any], corpus: list[str], records: list[dict],
                     reuse: bool = True, max_length: int = 96, progress: bool = False) -> Path:
    """Checkpoint of a tiny model pretrained (``objective=sft``) on ``records``; ``corpus`` trains the BPE.

    ``settings`` needs ``seed, vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
    num_kv_heads, pretrain_epochs, pretrain_batch_size, pretrain_lr`` (other keys only identify the
    world). ``out_dir/world.json`` records the settings and the checkpoint relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "world.json"
    if reuse and manifest.exists():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        checkpoint = out_dir / saved.get("checkpoint", "")
        if saved.get("settings") == settings and (checkpoint / "config.json").is_file():
            log.info("world: reusing the pretrained model at %s", checkpoint)
            return checkpoint
    out_dir.mkdir(parents=True, exist_ok=True)
    s = settings
    base = build_tiny(out_dir / "base", corpus=corpus, vocab_size=s["vocab_size"], chat_template=False,
                      seed=s["seed"], hidden_size=s["hidden_size"], num_layers=s["num_layers"],
                      num_heads=s["num_heads"], num_kv_heads=s["num_kv_heads"],
                      intermediate_size=s["intermediate_size"], max_positions=256)
    data = out_dir / "corpus.jsonl"
    with atomic_write(data) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    log.info("world: pretraining a %d-layer, %d-wide model on %d records", s["num_layers"], s["hidden_size"],
             len(records))
    result = train(TrainConfig(
        model=str(base), objective="sft", data=str(data), output_dir=str(out_dir / "pretrain"),
        batch_size=s["pretrain_batch_size"], epochs=s["pretrain_epochs"], lr=s["pretrain_lr"],
        warmup=0.05, scheduler="cosine", seed=s["seed"], max_length=max_length, log_every=10, progress=progress,
        overwrite=True,  # a pretraining with other settings (the manifest did not match) is replaced
    ))
    if result.final_dir is None:
        raise RuntimeError(f"pretraining in {out_dir / 'pretrain'} was interrupted; run it again")
    checkpoint = Path(result.final_dir)
    relative = os.path.relpath(checkpoint, out_dir)  # the folder can move
    atomic_write_text(manifest, json.dumps({"settings": settings, "checkpoint": relative}, indent=2))
    return checkpoint


VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # head sizes vLLM's CPU attention accepts


def vllm_shape(hidden_size: int) -> dict[str, int]:
    """``num_heads`` / ``num_kv_heads`` overrides that give a world's model a head size vLLM's CPU attention
    accepts (the default worlds use head_dim 16, which it refuses): the most heads with such a head size,
    half as many KV heads (one for an odd count). ``build_world(out, **vllm_shape(64))`` builds the arithmetic
    world with 2 heads of 32; the default worlds, and their figures, are unchanged."""
    heads = [h for h in range(hidden_size, 0, -1) if hidden_size % h == 0 and hidden_size // h in VLLM_HEAD_DIMS]
    if not heads:
        raise ValueError(f"hidden_size {hidden_size} has no head size vLLM accepts ({VLLM_HEAD_DIMS})")
    return {"num_heads": heads[0], "num_kv_heads": heads[0] // 2 if heads[0] % 2 == 0 else 1}
