"""The contract every inference-time method follows, and the registry that names them.

A method is a function ``fn(model, tokenizer, prompts, rows, settings, options, reward_fn=None,
helper=None) -> list[InferenceOutput]`` — one output per prompt — registered with `register` under the
name ``alignkit generate --method NAME`` uses:

* ``model`` — the base policy π (a transformers causal LM, eval mode is the method's business);
* ``prompts`` — texts or chats; ``rows`` — each prompt's source row (fields a reward reads, e.g. ``answer``);
* ``settings`` — `InferenceSettings` shared by all methods (length, sampling temperature, seed, batch);
* ``options`` — an instance of the method's own options dataclass (``n``, ``tau``, ``w``, ...), built from
  ``--set key=value`` on the command line or a dict in Python, checked like a training config;
* ``reward_fn`` — a reward function from `alignkit.rewards.build_reward` (``fn(prompts, completions, rows)``);
* ``helper`` — a second causal LM sharing the tokenizer: the small aligned model of ``nudging``, the
  autoregressive reward model of ``genarm``, the aligned model whose log-ratio is ``cd``'s value.

Every output reports the cost it took (``calls``: forward passes of any model, a reward-model batch
counting one per scored text; ``tokens``: tokens those passes processed) and, for sampling methods, an
estimate of its KL divergence to the base policy in nats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.config import from_dict
from alignkit.data.schema import Text
from alignkit.errors import ConfigError


@dataclass
class InferenceSettings:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16  # prompts processed together
    chat_template: str = "auto"
    chat_template_kwargs: dict | None = None  # passed to every chat-template render, as train's key


@dataclass
class InferenceOutput:
    """The chosen completion of one prompt and what it cost."""

    prompt: Text
    text: str
    token_ids: list[int]
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    reward: float | None = None  # the guiding reward of the returned text (None if the method used none)
    candidates: list[str] | None = None  # every scored candidate, when the method has them (best-of-N family)
    rewards: list[float] | None = None  # their rewards, aligned with ``candidates``
    calls: int = 0
    tokens: int = 0
    kl: float | None = None  # estimate of KL(method's output distribution ‖ base policy), nats
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = {"prompt": self.prompt, "completion": self.text, "finished": self.finished, "reward": self.reward,
               "calls": self.calls, "tokens": self.tokens, "kl": self.kl}
        if self.candidates is not None:
            row["candidates"], row["rewards"] = self.candidates, self.rewards
        return {**row, **self.extra}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., list[InferenceOutput]]
    options: type  # a dataclass; every field has a default
    needs_reward: bool = False
    needs_helper: bool = False
    summary: str = ""


METHODS: dict[str, MethodSpec] = {}
# modules whose import registers the built-in methods (imported on first use, not with the package)
BUILTIN_MODULES = ("bon", "guided", "blockwise", "search", "urial", "grammar", "speculative")
ALIASES = {"rps": "rsd"}  # other names a method answers to (``--method rps`` is ``rsd``)


def builtin_methods() -> dict[str, MethodSpec]:
    """`METHODS` with every built-in method registered."""
    import importlib

    for name in BUILTIN_MODULES:
        importlib.import_module(f"alignkit.inference.{name}")
    return METHODS


def register(name: str, options: type, needs_reward: bool = False, needs_helper: bool = False, summary: str = ""):
    """Decorator: add an inference method to `METHODS` under ``name``."""

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"inference method {name!r} is registered twice")
        METHODS[name] = MethodSpec(name, fn, options, needs_reward, needs_helper, summary or (fn.__doc__ or "").split("\n")[0])
        return fn

    return deco


def method_options(name: str, values: dict[str, Any] | None = None):
    """The options dataclass of method ``name`` from a dict, with keys and types checked."""
    return from_dict(get_method(name).options, dict(values or {}), source=f"--method {name} options")


def get_method(name: str) -> MethodSpec:
    builtin_methods()
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ConfigError(f"unknown inference method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def run_method(name: str, model, tokenizer, prompts: list[Text], rows: list[dict] | None = None,
               settings: InferenceSettings | None = None, options: dict[str, Any] | Any = None,
               reward_fn=None, helper=None) -> list[InferenceOutput]:
    """Run inference method ``name`` on ``prompts``; ``options`` a dict or the method's options dataclass."""
    spec = get_method(name)
    if spec.needs_reward and reward_fn is None:
        raise ConfigError(f"method {name} needs a reward (--reward SPEC, e.g. rm:PATH or module:function)")
    if spec.needs_helper and helper is None:
        raise ConfigError(f"method {name} needs a helper model (--helper PATH)")
    opts = options if isinstance(options, spec.options) else method_options(name, options)
    rows = rows if rows is not None else [{} for _ in prompts]
    if len(rows) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(rows)} rows")
    return spec.fn(model, tokenizer, list(prompts), list(rows), settings or InferenceSettings(), opts,
                   reward_fn=reward_fn, helper=helper)
