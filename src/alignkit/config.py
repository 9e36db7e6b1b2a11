"""Configs as dataclasses: YAML files (``yaml.safe_load``) plus ``key=value`` overrides.

Unknown keys and wrong types raise `ConfigError` naming the key, what was expected, and the closest
valid key. Values given on the command line are parsed as YAML scalars/lists (``beta=0.1``,
``lora=true``, ``objective=[{name: dpo}, {name: sft, weight: 0.1}]``) — never with ``eval``.

Every check of a `TrainConfig` value and every normalisation lives here (`check_bounds`, `resolve`): a run
holds the *resolved* config — frozen, its ``mode`` explicit (``offline``, ``online`` or ``iterative``, from
the keys set when ``mode: auto``), ``ref_cache`` and ``shuffle`` as words or bools of one spelling — and
writes exactly that to ``<output_dir>/config.yaml``. Nothing after `resolve` changes it; a different value
is a new config (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from alignkit.errors import ConfigError  # noqa: F401  (re-exported: alignkit.config.ConfigError)
from alignkit.io_atomic import atomic_write_text


@dataclass(frozen=True)
class TrainConfig:
    # what to train
    mode: str = "auto"  # auto (online with prompts, iterative with rounds > 0, else offline) | offline | online | iterative
    model: str = ""  # the policy to train: a transformers folder, or a Hub id (downloaded into the HF cache)
    objective: Union[str, list] = "dpo"  # a name, or a list of {name, weight, **hparams}
    beta: float | None = None  # shared hyper-parameter, applied to every objective that takes `beta`
    hparams: dict = field(default_factory=dict)  # extra hyper-parameters for a single objective
    # data
    data: str = ""  # a file, a save_to_disk folder, or a Hub dataset owner/name (downloaded and cached by datasets)
    eval_data: str | None = None  # held-out records (a file, folder or Hub dataset, like data), evaluated every eval_every steps
    data_split: str = "train"  # the split of a Hub / save_to_disk dataset in `data` (slices too: train[:2000])
    eval_data_split: str = "test"  # ... and of `eval_data` (e.g. eval_data=trl-lib/ultrafeedback_binarized)
    data_subset: str | None = None  # a Hub dataset's subset (configuration), for data and eval_data
    eval_split: float = 0.0  # hold out this fraction of `data` (by prompt) when eval_data is not given
    layout: str | None = None  # force a data layout instead of auto-detection
    columns: dict | None = None  # explicit column mapping {field: column}
    on_bad_row: str = "error"  # error | skip
    max_length: int | None = 512  # tokens of prompt + one response; longer is cut (prompt start, then completion tail), counted
    max_prompt_length: int | None = None  # prompt tokens kept when a sequence is too long (default: max_length // 2)
    chat_template: str = "auto"  # auto | always | never
    chat_template_kwargs: dict = field(default_factory=dict)  # to every apply_chat_template: enable_thinking, date_string
    transforms: list = field(default_factory=list)  # data transforms [{name, **options}] (docs/data_transforms.md)
    shuffle: Union[bool, str] = "auto"  # auto (true unless a curriculum transform orders the data) | true | false
    # online training (algorithms/online.py): sample from the policy each step, score, learn
    prompts: str | None = None  # a prompt file (.txt lines, or rows with `prompt` and fields such as `answer`)
    reward: Any = None  # rule:exact_answer | rule:regex:P | rm:PATH | module:function | [{reward, weight}]
    num_samples: int = 4  # K completions per prompt
    max_new_tokens: int = 64  # the most tokens sampled per completion
    temperature: float = 1.0  # sampling temperature of the rollouts (0: greedy)
    top_p: float = 1.0  # nucleus sampling of the rollouts (1: the whole distribution)
    stop: list = field(default_factory=list)  # stop strings, e.g. ["\n\n", "Question:"] (alignkit.generation.generate)
    updates_per_batch: int = 1  # optimizer steps on each rollout batch (GRPO's mu)
    unfinished_penalty: float | None = None  # reward of samples cut at max_new_tokens (None: keep their reward)
    log_samples_every: int = 0  # write sampled completions to samples.jsonl every N steps
    # PPO (objective=ppo; algorithms/ppo.py) and online evaluation
    value_model: str | None = None  # value model's start: a reward model or causal LM (default: the policy's checkpoint)
    value_lr: float | None = None  # learning rate of the value model's parameter group (default: lr)
    kl_coef: float = 0.05  # PPO: weight of the per-token KL to the reference in the reward (0: no reference)
    gamma: float = 1.0  # PPO: GAE discount
    gae_lambda: float = 0.95  # PPO: GAE lambda
    whiten_advantages: bool = True  # PPO: normalise advantages over the tokens of each rollout
    reward_normalize: bool = False  # PPO (PPO-max): standardise rewards by the running mean and std of all rewards so far
    reward_clip: float = 0.0  # PPO (PPO-max): clip the (normalised) rewards to [-reward_clip, reward_clip]; 0: no clipping
    advantage_clip: float = 0.0  # PPO (PPO-max): clip the (whitened) advantages to [-advantage_clip, advantage_clip]; 0: none
    eval_greedy: bool = False  # online evaluation samples greedily (temperature 0), not at `temperature`
    # self-play and iterative rounds (objectives/selfplay.py, rewards/preference.py, algorithms/iterative.py)
    rounds: int = 0  # > 0 with prompts + reward: iterative DPO / self-rewarding, N rounds of sample -> label -> train
    judge_template: str | None = None  # LLM-judge question (text with {prompt} {answer_a} {answer_b}, or a file)
    mixture_alpha: float = 0.5  # Nash-MD (reward=mixture:...): opponent from policy^(1-alpha) * reference^alpha
    # scale-out (rollout/ray_backend.py, pip install "alignkit[ray]"): rollouts on Ray actors
    rollout_workers: int = 0  # 0: in-process; W: prompts split into W chunks seeded per chunk, one Ray actor each
    rollout_backend: str = "ray"  # ray | local (the same W chunks in-process: reproduces a Ray run without Ray) | vllm (pip install "alignkit[vllm]": one vLLM engine in-process, rollout/vllm_engine.py; with rollout_workers=W, one in each Ray actor)
    rollout_worker_cpus: int = 1  # CPUs (and torch threads) per actor
    rollout_worker_gpus: float = 0.0  # GPUs per actor (its transformers generation, or its vLLM engine with rollout_backend=vllm)
    rollout_is: str = "none"  # rollout_backend=vllm: none | tis (each token's policy loss times min(pi_train/pi_vllm, rollout_is_cap))
    rollout_is_cap: float = 2.0  # the cap C of rollout_is=tis (rollout/correction.py)
    vllm_gpu_memory_utilization: float = 0.3  # GPU: vLLM's share of the GPU's memory (CPU: VLLM_CPU_KVCACHE_SPACE GiB, 1 by default)
    # reference model
    ref_model: str | None = None  # a checkpoint path; default: a frozen copy of the initial policy
    ref_strategy: str = "auto"  # auto | copy | path | disable_adapters | none
    ref_cache: Union[str, bool] = "auto"  # auto | on | off (YAML true/false too): precompute reference log-probs once
    ref_cache_dir: str | None = None  # default: <output_dir>/ref_cache (share it across runs of a sweep)
    ref_cache_file: str | None = None  # use exactly this cache (from `alignkit logprobs --cache`); refuse if stale
    teacher: str | None = None  # objectives distill / adpa / aligndistil: the teacher model (folder or hub id), with the policy's tokenizer
    teacher_top_k: int = 32  # distill: teacher tokens kept per position, the rest one bucket (>= vocabulary: exact KL)
    teacher_ref: str | None = None  # adpa / aligndistil: the model the teacher is weighed against (its reference, or a reverse-DPO model); default ref_model, else model
    teacher_cache: bool = True  # compute the teacher's top-k log-probs once per dataset and reuse them from disk (false: every batch)
    teacher_cache_dir: str | None = None  # default: <output_dir>/teacher_cache (share it across runs of a sweep)
    # optimisation
    batch_size: int = 8  # records per step and process; the global batch is batch_size x processes x grad_accum
    grad_accum: int = 1  # batches whose gradients are summed into one optimizer step
    max_steps: int = -1  # -1: run `epochs` epochs
    epochs: float = 1.0  # passes over the data when max_steps is -1 (fractions allowed)
    lr: float = 5e-6  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup: float = 0.0  # a fraction of the steps (< 1) or a number of steps (>= 1)
    scheduler: str = "linear"  # linear | cosine | constant
    max_grad_norm: float = 1.0  # clip the gradient norm to this (0: no clipping)
    seed: int = 0  # everything random: data order, eval_split, transforms, sampling, new heads
    ensemble: int = 1  # > 1: train this many members (reward models), see engine/ensemble.py
    ensemble_by: str = "seed"  # seed | fold (each member also leaves out one fold of the prompts)
    user_groups: int = 0  # > 1: MaxMin-RLHF's EM over user groups, one reward model per group (engine/user_groups.py)
    user_group_rounds: int = 4  # user_groups: at most this many EM rounds (M-step then E-step); stops when no user moves
    user_group_init: str = "spread"  # user_groups' start: spread (group g from one user, the worst explained so far) | random
    # model and precision
    dtype: str = "float32"  # weights are loaded in float32 | bfloat16 | float16
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that supports it, else no) | no | bf16 | fp16
    gradient_checkpointing: bool = False  # recompute decoder activations in backward: less memory, more time
    disable_dropout: bool = True  # dropout off in the trained model (else the policy differs from the reference at step 0)
    compile: bool = False  # torch.compile the decoder (dynamic shapes); pays a compile pause at start-up
    cudnn_attention: bool = False  # let SDPA use cuDNN's kernel on CUDA (off: costly per call with block masks)
    lora: bool = False  # train LoRA adapters, not all weights (final/ holds the merged model and adapter/)
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scale: the adapters' update is multiplied by lora_alpha / lora_r
    lora_dropout: float = 0.0  # dropout on the adapters' input
    lora_target_modules: Union[str, list] = "all-linear"  # modules that get adapters: all-linear or a list of names
    attn_implementation: str = "auto"  # auto (CUDA: flex attention where the model supports it; else SDPA, else eager) | flex | sdpa | eager | ...
    trust_remote_code: bool = False  # run Python code from the model's repository (only for ones you trust)
    offline: bool = False  # Hub models and datasets from the local cache only (as HF_HUB_OFFLINE=1)
    # executor
    packing: str = "auto"  # auto | shared_prompt | padded
    max_row_tokens: int = 256  # short records share a row up to this many tokens (dense masks are quadratic)
    verify_logprobs: bool = True  # check the executor against the model's own forward on one response
    chunk_size: int = 0  # completion tokens per vocabulary-projection chunk; 0: auto (2^23 logits a chunk)
    # output, logging, checkpoints
    output_dir: str = "runs/alignkit"  # the run folder: config.yaml, metrics.jsonl, checkpoints/, final/ (one run each)
    log_every: int = 1  # write a metrics line every N steps
    eval_every: int = 0  # 0: only at the end (when there is eval data)
    eval_prompts: str | None = None  # with eval_judge: sample on these prompts at every evaluation ...
    eval_judge: str | None = None  # ... and log reward, win rate over the reference and KL (rule:mod:fn | reward_model:PATH)
    eval_samples: int = 2  # samples per eval prompt
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (and the newest with finite weights); 0: keep all
    resume_from: str | None = None  # latest | PATH
    resume_override: Union[str, list] = field(default_factory=list)  # keys whose new values a resume applies: "lr,max_steps"
    overwrite: bool = False  # start a new run in an output_dir that holds one (its checkpoints, final/ and metrics go)
    trackers: list = field(default_factory=list)  # tensorboard, wandb
    max_bad_steps: int = 5  # stop after this many NaN/inf steps in a row
    progress: bool = True  # a progress bar on the console


# (key, test, what the key must be): checked after types, so a bad value names the key and the rule.
BOUNDS = [
    ("batch_size", lambda v: v >= 1, ">= 1"), ("grad_accum", lambda v: v >= 1, ">= 1"),
    ("max_bad_steps", lambda v: v >= 1, ">= 1"), ("lr", lambda v: v > 0, "> 0"),
    ("warmup", lambda v: v >= 0, ">= 0"), ("epochs", lambda v: v > 0, "> 0"),
    ("eval_split", lambda v: 0 <= v < 1, "in [0, 1)"), ("max_row_tokens", lambda v: v >= 1, ">= 1"),
    ("keep_checkpoints", lambda v: v >= 0, ">= 0"), ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("max_length", lambda v: v is None or v >= 2, ">= 2 or null"), ("chunk_size", lambda v: v >= 0, ">= 0"),
    ("teacher_top_k", lambda v: v >= 1, ">= 1"),
    ("lora_r", lambda v: v >= 1, ">= 1"), ("log_every", lambda v: v >= 1, ">= 1"),
    ("max_steps", lambda v: v == -1 or v >= 1, ">= 1, or -1 to run `epochs` epochs"),
    ("ensemble", lambda v: v >= 1, ">= 1"), ("num_samples", lambda v: v >= 1, ">= 1"),
    ("user_groups", lambda v: v >= 0, ">= 0"), ("user_group_rounds", lambda v: v >= 1, ">= 1"),
    ("updates_per_batch", lambda v: v >= 1, ">= 1"), ("max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("value_lr", lambda v: v is None or v > 0, "> 0 or null"), ("kl_coef", lambda v: v >= 0, ">= 0"),
    ("gamma", lambda v: 0 <= v <= 1, "in [0, 1]"), ("gae_lambda", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("reward_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"), ("advantage_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("stop", lambda v: all(isinstance(s, str) and s for s in v), "a list of non-empty strings"),
    ("rollout_workers", lambda v: v >= 0, ">= 0"), ("rollout_worker_cpus", lambda v: v >= 1, ">= 1"),
    ("rounds", lambda v: v >= 0, ">= 0"), ("mixture_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("rollout_worker_gpus", lambda v: v >= 0, ">= 0"), ("rollout_is_cap", lambda v: v >= 1, ">= 1"),
    ("vllm_gpu_memory_utilization", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("trackers", lambda v: all(t in ("tensorboard", "wandb") for t in v), "a list of tensorboard, wandb"),
]

# The keys that take one of a few words, checked with the rest (a typo is blamed on its file:line before the run
# starts); the modules that act on them take the value as given.
CHOICES: dict[str, tuple] = {
    "mode": ("auto", "offline", "online", "iterative"),
    "on_bad_row": ("error", "skip"),
    "chat_template": ("auto", "always", "never"),
    "shuffle": ("auto", True, False),
    "ref_strategy": ("auto", "copy", "path", "disable_adapters", "none"),
    "ref_cache": ("auto", "on", "off"),
    "scheduler": ("linear", "cosine", "constant"),
    "ensemble_by": ("seed", "fold"),
    "user_group_init": ("spread", "random"),
    "mixed_precision": ("auto", "no", "bf16", "fp16"),
    "packing": ("auto", "shared_prompt", "padded"),
    "rollout_backend": ("ray", "local", "vllm"),
    "rollout_is": ("none", "tis"),
}


def check_bounds(config: Any, source: str = "config", sources: Mapping[str, str] | None = None) -> None:
    """`BOUNDS` are TrainConfig's rules, after every float key is checked finite (``lr=.inf`` is refused);
    other option dataclasses (inference methods) check their own values, where a key of the same name can
    mean something else (nudging's ``gamma`` is not PPO's discount; a best-of-N temperature may be inf).
    ``sources`` names where each key was set (``file.yaml:12`` or the command line) for the message."""
    if not isinstance(config, TrainConfig):
        return
    where = (lambda key: (sources or {}).get(key, source))  # noqa: E731
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where(f.name)}: key '{f.name}' must be a finite number, got {value!r}")
        if (path := _nan_inside(value, f.name)) is not None:  # hparams, objective lists, transforms
            raise ConfigError(f"{where(f.name)}: '{path}' is not a number (nan)")
    for key, ok, rule in BOUNDS:
        if hasattr(config, key) and not ok(getattr(config, key)):
            raise ConfigError(f"{where(key)}: key '{key}' must be {rule}, got {getattr(config, key)!r}")
    for key, words in CHOICES.items():
        value = _normal(key, getattr(config, key))
        if value not in words or isinstance(value, bool) != isinstance(words[words.index(value)], bool):
            raise ConfigError(f"{where(key)}: key '{key}' must be {_or(words)}, got {getattr(config, key)!r}")
    _check_mode(config, where)
    _check_reference(config, where)
    hp = getattr(config, "hparams", None) or {}
    if getattr(config, "beta", None) is not None and "beta" in hp:
        raise ConfigError(f"{where('beta')}: 'beta' is set both at the top level and in hparams; keep one")


def _or(words: tuple) -> str:
    names = [str(w).lower() if isinstance(w, bool) else w for w in words]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _normal(key: str, value: Any) -> Any:
    """One spelling per value: YAML's ``ref_cache: on`` arrives as True (-> "on"); ``shuffle=yes`` -> True."""
    if key == "ref_cache" and isinstance(value, bool):
        return "on" if value else "off"
    if key == "shuffle" and isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    return value


def run_mode(config: TrainConfig) -> str:
    """The explicit mode: ``mode`` itself, or for ``auto`` what the keys set say (rounds > 0: iterative rounds of
    sample -> label -> train; prompts: online; else offline training on ``data``)."""
    if config.mode != "auto":
        return config.mode
    return "iterative" if config.rounds > 0 else "online" if config.prompts else "offline"


def _check_mode(config: TrainConfig, where: Callable[[str], str]) -> None:
    """An explicit ``mode`` and the keys that select one agree."""
    mode = config.mode
    if mode == "offline" and (config.prompts or config.rounds > 0):
        key = "prompts" if config.prompts else "rounds"
        raise ConfigError(f"{where(key)}: '{key}' is set but mode is offline (trains on `data`); drop it or set "
                          f"mode={'online' if key == 'prompts' else 'iterative'}")
    if mode == "online" and (not config.prompts or config.rounds > 0):
        key = "rounds" if config.rounds > 0 else "prompts"
        raise ConfigError(f"{where(key)}: mode=online " + ("takes no rounds (mode=iterative runs rounds)"
                                                            if key == "rounds" else "needs prompts=FILE"))
    if config.user_groups > 1 and run_mode(config) != "offline":
        raise ConfigError(f"{where('user_groups')}: user_groups trains reward models on `data` (offline); drop it or "
                          "the prompts / rounds keys")
    if mode == "iterative" and (config.rounds < 1 or not config.prompts):
        key = "rounds" if config.rounds < 1 else "prompts"
        raise ConfigError(f"{where(key)}: mode=iterative needs " + ("rounds >= 1" if key == "rounds" else "prompts=FILE"))


def _check_reference(config: TrainConfig, where: Callable[[str], str]) -> None:
    """The reference keys that need another key set (whether the objective reads a reference at all is the
    objective's to say: engine/reference.py)."""
    if config.ref_strategy == "path" and not config.ref_model:
        raise ConfigError(f"{where('ref_strategy')}: ref_strategy=path needs ref_model=PATH")
    if config.ref_strategy == "disable_adapters" and not config.lora:
        raise ConfigError(f"{where('ref_strategy')}: ref_strategy=disable_adapters needs lora=true")
    if config.ref_cache_file and _normal("ref_cache", config.ref_cache) == "off":
        raise ConfigError(f"{where('ref_cache_file')}: ref_cache_file is set but ref_cache=off")


def resolve(config: TrainConfig, source: str = "config", sources: Mapping[str, str] | None = None) -> TrainConfig:
    """The config a run uses and records: checked (`check_bounds`), one spelling per value (`_normal`) and the
    mode explicit (`run_mode`). Resolving a resolved config changes nothing."""
    check_bounds(config, source, sources)
    normal = {k: _normal(k, getattr(config, k)) for k in ("ref_cache", "shuffle")}
    return dataclasses.replace(config, mode=run_mode(config), **normal)


def _nan_inside(value: Any, path: str) -> str | None:
    """The dotted path of a NaN nested in a dict or list value (``hparams.beta``), else None. Nested infinities
    are left to the option (PPO's ``cliprange_value: .inf`` means no clipping)."""
    if isinstance(value, float) and math.isnan(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nan_inside(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


# Names users bring from transformers / TRL, mapped to ours for the "did you mean" hint.
ALIASES = {
    "learning_rate": "lr", "learning_rat": "lr", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "warmup_ratio": "warmup",
    "warmup_steps": "warmup", "model_name_or_path": "model", "ref_model_name_or_path": "ref_model",
    "lr_scheduler_type": "scheduler", "loss_type": "objective", "dataset": "data", "train_file": "data",
    "torch_dtype": "dtype", "bf16": "mixed_precision", "use_peft": "lora", "activation_checkpointing": "gradient_checkpointing", "logging_steps": "log_every",
    "save_steps": "save_every", "eval_steps": "eval_every", "resume_from_checkpoint": "resume_from",
    "dataset_name": "data", "dataset_config": "data_subset", "dataset_train_split": "data_split",
    "dataset_test_split": "eval_data_split", "split": "data_split", "subset": "data_subset",
}


def _allows(hint: Any, t: type) -> bool:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return t in typing.get_args(hint)
    return hint is t


# YAML 1.1 also reads these words as booleans; a ``key=value`` override keeps them as words (so that
# ``mixed_precision=no`` or ``ref_cache=off`` mean what they say) and a bool key turns them into bools
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "true": True, "no": False, "off": False, "n": False, "false": False}
# a YAML file's ``mixed_precision: no`` arrives as False: the word it was
_FALSE_WORD = {"mixed_precision": "no"}


def _coerce(value: Any, hint: Any) -> Any:
    """int -> float for float keys; '1e-5' (PyYAML reads it as a string) -> 1e-05; 'yes' / 'off' ... -> a bool
    for a key that takes bools and no text."""
    if isinstance(value, str) and _allows(hint, bool) and not _allows(hint, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    if not _allows(hint, float) or _allows(hint, str) or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def closest_keys(key: str, names: list[str], owner: str = "the config", n: int = 3) -> str:
    """`` Did you mean 'a', 'b' or 'c'?`` (up to ``n`` names close to ``key``, TRL/transformers aliases first),
    else where the keys are listed: never all of them."""
    close = ([ALIASES[key]] if key in ALIASES else []) + difflib.get_close_matches(key, names, n=n, cutoff=0.6)
    close = list(dict.fromkeys(close))[:n]
    if not close:
        return f" No key of the {len(names)} is close; they are the fields of {owner}."
    quoted = [f"'{c}'" for c in close]
    return f" Did you mean {' or '.join(quoted) if len(quoted) < 3 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]}?"


def from_dict(cls: type, values: dict[str, Any], source: str = "config",
              sources: Mapping[str, str] | None = None) -> Any:
    """Build a config dataclass, checking every key and type. Errors name ``sources[key]`` (where that key
    was set: ``file.yaml:12``, ``command line 'lr=.inf'``) or else ``source``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = (lambda key: (sources or {}).get(key, source))  # noqa: E731
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where(key)}: unknown key '{key}'.{closest_keys(key, names, cls.__name__)}")
        if value is False and key in _FALSE_WORD:
            value = _FALSE_WORD[key]
        value = values[key] = _coerce(value, hints[key])
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"{where(key)}: key '{key}' must be {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )
    config = cls(**values)
    if isinstance(config, TrainConfig):
        return resolve(config, source, sources)
    check_bounds(config, source, sources)
    return config


def _yaml_problem(e: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, one-line description) of a PyYAML error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return (mark.line + 1 if mark is not None else None), (
            f"the tag '{tag}' is not allowed: alignkit reads configs with yaml.safe_load (plain values only; "
            "no Python objects)")
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and start is not mark:
        problem += f" ({context} that starts on line {start.line + 1})"
    return (mark.line + 1 if mark is not None else None), f"YAML syntax error: {problem}"


def parse_mapping(text: str | None, source: str) -> dict | None:
    """A command-line option holding a mapping (``--chat-template-kwargs '{enable_thinking: false}'``), read as
    YAML (JSON is YAML); None when not given. Anything but a mapping is a `ConfigError` naming ``source``."""
    if text is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: cannot parse {text!r} as a mapping: {str(e).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected a mapping such as '{{enable_thinking: false}}', got {text!r}")
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["beta=0.1", "lora=true"]`` -> ``{"beta": 0.1, "lora": True}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line '{item}': an override must look like key=value")
        key, raw = item.split("=", 1)
        try:
            if raw.strip().lower() in _BOOL_WORDS and raw.strip().lower() not in ("true", "false"):
                value = raw.strip()  # yes / no / on / off stay words (see _BOOL_WORDS)
            else:
                value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line '{item}': cannot parse the value: {_yaml_problem(e)[1]}") from None
        out[key.strip()] = value
    return out


def read_yaml(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A YAML config file -> (values, ``{key: "path:line"}``). Every problem is one `ConfigError` line naming
    ``path:line``: a missing file, a syntax error, a ``!!python/...`` tag, a top level that is not a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({getattr(e, 'strerror', None) or e})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line, problem = _yaml_problem(e)
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {problem}") from None
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
    lines = {str(k.value): f"{path}:{k.start_mark.line + 1}" for k, _ in node.value}
    return loaded, lines


def load_config(cls: type, path: str | None = None, overrides: list[str] | None = None) -> Any:
    """YAML file (optional) + ``key=value`` overrides -> a checked config dataclass. A bad value is blamed
    where it was set: ``file.yaml:LINE`` for the file, ``command line 'key=value'`` for an override."""
    values, sources = read_yaml(path) if path is not None else ({}, {})
    for item in overrides or []:
        for key, value in parse_overrides([item]).items():
            values[key], sources[key] = value, f"command line '{item}'"
    return from_dict(cls, values, source=path or "command line", sources=sources)


def save_config(config: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
