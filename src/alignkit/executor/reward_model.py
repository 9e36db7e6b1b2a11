"""Reward models: a transformer backbone plus a linear head, read at each response's last token.

A reward model *is* a transformers ``AutoModelForSequenceClassification`` (``num_labels`` = the number of
head outputs: 1 for Bradley–Terry, m attributes for regression, H heads for a mixture, the embedding size
for GPM), so a trained one loads with plain transformers too. It can start from any causal-LM checkpoint:
the decoder weights are reused and the ``score`` head is new.

**Where the reward is read.** Where transformers' own ``ForSequenceClassification`` forward reads it: at
the last token of each response that is not the pad token — its EOS (which the tokenizer appends) when the
tokenizer has a pad token of its own, the hidden state that has seen the whole prompt and response. With a
tokenizer whose pad *is* its EOS (Llama-3, Mistral, GPT-2 have no pad token; alignkit pads with EOS), the
HF forward cannot tell the EOS from padding and reads the token before it, and so does alignkit (a trained
model then scores the same in plain transformers, TRL's reward pipelines and alignkit). `RewardScorer` reads
by position (`reading_index`), so it is the same token in shared-prompt packed rows (each response is its
own segment) and in right-padded rows. Left-padded inputs are never built by alignkit; a user calling the HF
model directly with left padding must pass the attention mask, and HF then reads the last non-pad token too.

**Prompt gates** (mixture of heads, ArmoRM-style gating): an extra linear layer ``alignkit_gate`` on the
hidden state of the prompt's last token, softmax over H. It is a submodule of the HF model (so it is
trained, checkpointed and saved with it); plain transformers ignores its weights with a warning, and
`load_reward_model` restores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from alignkit.data.collate import Batch
from alignkit.errors import ConfigError, ModelError
from alignkit.executor.logprobs import ExecutorMismatch, decoder_mask, plain_sequences, unwrap
from alignkit.io_atomic import atomic_write_text
from alignkit.models.hub import resolve_model
from alignkit.models.load import LoraConfig, apply_lora, attention_implementation, resolve_dtype
from alignkit.objectives.personal import user_table
from alignkit.objectives.stats import SequenceStats

GATE = "alignkit_gate"


def load_reward_model(path: str, num_outputs: int | None = None, gate: int = 0, dtype="float32",
                      attn_implementation: str | None = "auto", trust_remote_code: bool = False,
                      lora: LoraConfig | None = None, pad_token_id: int | None = None):
    """A sequence-classification model from a reward-model or causal-LM checkpoint.

    ``num_outputs``: head size (None: the checkpoint's own ``num_labels``); ``gate``: H > 0 adds (or
    restores) a prompt gate with H outputs. With ``lora`` the head and gate stay fully trainable.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(path, trust_remote_code=trust_remote_code)  # a local folder, or a Hub id's cached snapshot
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn := attention_implementation(config, attn_implementation, task="seq-cls"):
        kwargs["attn_implementation"] = attn
    if num_outputs is not None:
        kwargs["num_labels"] = num_outputs
    if getattr(config, "num_labels", None) not in (None, num_outputs) and num_outputs is not None and _is_rm(config):
        raise ModelError(f"{path} is a reward model with {config.num_labels} outputs, but {num_outputs} were asked for")
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # HF's own forward finds the last non-pad token with it
    gate = gate or int(getattr(model.config, "alignkit_gate", 0) or 0)
    if gate:
        hidden = model.config.hidden_size
        setattr(model, GATE, nn.Linear(hidden, gate, bias=True, dtype=resolve_dtype(dtype)))
        model.config.alignkit_gate = gate
        _restore_gate(model, path)
    if lora is not None:
        lora.extra = {**lora.extra, "modules_to_save": ["score"] + ([GATE] if gate else [])}
        model = apply_lora(model, lora, task_type="SEQ_CLS")
    return model


def _is_rm(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def _restore_gate(model, path: str) -> None:
    """Load a trained gate; a checkpoint whose config declares one but holds no weights for it is refused."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            keys = [k for k in sf.keys() if k.startswith(GATE + ".")]  # noqa: SIM118 (safe_open is not iterable)
            if keys:
                getattr(model, GATE).load_state_dict({k[len(GATE) + 1:]: sf.get_tensor(k) for k in keys})
                return
    if getattr(model.config, "alignkit_gate", 0) and _is_rm(model.config):
        raise ModelError(f"{path}: the config declares a prompt gate (alignkit_gate={model.config.alignkit_gate}) "
                         f"but no {GATE}.* weights are in {[f.name for f in files] or 'any .safetensors file'}")


def reward_head(model) -> nn.Module:
    base = unwrap(model)
    head = getattr(base, "score", None)
    if head is None:
        raise ModelError(f"{type(base).__name__} has no `score` head; reward models need a decoder-style "
                         "AutoModelForSequenceClassification (Llama, Qwen2, Mistral, Gemma, GPT-2, ...)")
    return head


class RewardScorer(nn.Module):
    """Reward model -> (rewards [B, K, m] at each response's last token, gate [B, H] or None)."""

    _alignkit_wrapper = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def _no_split_modules(self):
        return getattr(unwrap(self.model), "_no_split_modules", None)

    def forward(self, batch: Batch | None = None, logits_of: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(rewards, gate) of ``batch``; with ``logits_of`` (token ids ``[1, T]``) instead, the model's own forward
        (``.logits``), so `verify_against_forward` goes through a sharded (FSDP) wrapper around this module."""
        if logits_of is not None:
            return self.model(input_ids=logits_of).logits
        base = unwrap(self.model)
        backbone = getattr(base, base.base_model_prefix)
        head = reward_head(self.model)
        mask = decoder_mask(batch, base.config, head.weight.dtype)
        hidden = backbone(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])
        B, K = batch.shape
        if "step_pos" in batch.extra:  # process reward: one reward at each step's last token -> [B, K, S]
            first = batch.last_index - (batch.lengths - 1)  # flat index of each completion's first token
            where = (first[..., None] + batch.extra["step_pos"]).clamp(min=0, max=flat.shape[0] - 1)
            rewards = head(flat.index_select(0, where.reshape(-1))).float().view(*where.shape)
        else:
            last = flat.index_select(0, reading_index(batch, base.config.pad_token_id).reshape(-1)).view(B, K, -1)
            rewards = head(last).float()
        gate = getattr(base, GATE, None)
        if gate is None:
            return rewards, None
        return rewards, torch.softmax(gate(flat.index_select(0, batch.prompt_index)).float(), dim=-1)


def reading_index(batch: Batch, pad_token_id: int | None) -> Tensor:
    """[B, K] flat index of the token each response's reward is read at: its last token that is not
    ``pad_token_id`` (transformers' rule), never before the response's first token."""
    last = batch.last_index
    if pad_token_id is None:
        return last
    ids, back = batch.input_ids.reshape(-1), torch.zeros_like(last)
    while True:
        step = (ids[last] == pad_token_id) & (back < batch.lengths - 1)
        if not bool(step.any()):
            return last
        last, back = last - step.long(), back + step.long()


@torch.no_grad()
def verify_against_forward(model: nn.Module, batch: Batch, rtol: float, scorer: nn.Module | None = None) -> float:
    """The reward read by `RewardScorer` for every response of ``batch`` equals the HF model's own output for
    that response alone. ``scorer``: the trainer's prepared `RewardScorer` (under FSDP every process calls it
    with the same batch). Raises `ExecutorMismatch`; returns the largest difference."""
    scorer = scorer if scorer is not None else RewardScorer(model)
    batch.extra = {k: v for k, v in batch.extra.items() if k != "step_pos"}  # compare at the last token
    ours, _ = scorer(batch)
    ours = ours.flatten(0, 1)
    worst = 0.0
    for slot, ids in plain_sequences(batch):
        theirs = scorer(logits_of=ids).float()[0]
        diff = float((ours[slot] - theirs).abs().max())
        worst = max(worst, diff)
        if diff > rtol * (1 + float(theirs.abs().max())):
            raise ExecutorMismatch(f"the reward read by alignkit differs from the model's own forward by {diff:.3g} "
                                   f"in {batch.layout} rows; try packing=padded, or report the model type")
    return worst


def write_info(final: Path, objective, num_outputs: int, gate: int) -> Path:
    """``alignkit_reward.json`` next to the weights: how the model was trained and how to read it, so
    `alignkit score` / `eval-rm` know a process reward model or a GPM from a scalar head."""
    term = objective.terms[0]
    info = {"objective": objective.name, "hparams": {k: v for k, v in {**term.spec.defaults, **term.hparams}.items()
                                                     if isinstance(v, (int, float, str, bool, list)) or v is None},
            "num_outputs": num_outputs, "gate": gate, "read_at": "last completion token (EOS)"}
    if users := user_table(term.state):  # a personalised model (pal): each user's weights over the outputs
        info["users"] = users
    path = Path(final) / "alignkit_reward.json"
    atomic_write_text(path, json.dumps(info, indent=2))
    return path


def head_size(objective, score_dim: int | None) -> tuple[int, int]:
    """(head outputs, gate size) a reward-model objective needs: from its registration's
    ``reward_outputs`` ("1" or the name of a hyper-parameter; 0 there means "the data's score-vector
    length") and whether it reads the ``gate`` extra."""
    sizes = set()
    for t in objective.terms:
        want = t.spec.reward_outputs
        n = 1 if want == "1" else int(t.hparams.get(want, t.spec.defaults.get(want)) or 0)
        if n == 0:
            if not score_dim:
                raise ConfigError(f"objective '{t.spec.name}': set {want}=N, or give records with score vectors")
            n = score_dim
        sizes.add(n)
    if len(sizes) > 1:
        raise ConfigError(f"objective {objective.name}: its terms need different head sizes {sorted(sizes)}")
    n = sizes.pop()
    return n, (n if "gate" in objective.extras else 0)


def build_reward_stats(batch: Batch, rewards: Tensor, gate: Tensor | None):
    """`SequenceStats` for reward-model objectives: ``rewards`` [B, K] (one output) or [B, K, m]."""

    K = batch.valid.shape[1]
    extra = dict(batch.extra)
    if gate is not None:
        extra["gate"] = gate
    return SequenceStats(
        logps=None,
        rewards=rewards.squeeze(-1) if rewards.shape[-1] == 1 and "step_pos" not in batch.extra else rewards,
        lengths=batch.lengths.to(rewards.dtype),
        valid=batch.valid,
        weights=batch.weights,
        extra=extra,
        **{k: v[:, :K] for k, v in batch.labels.items()},
    )
