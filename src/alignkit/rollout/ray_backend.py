"""Scale-out on Ray: rollouts (generation + reward scoring) and `alignkit score` on a pool of Ray actors.

Install the extra (``pip install "alignkit[ray]"``) and set ``rollout_workers=W`` for online training, or
``alignkit score --workers N``. The driver connects with ``ray.init()`` (a running cluster when
``RAY_ADDRESS`` is set, else a local instance); workers are plain Ray actors, nothing more.

* **Rollouts** (`rollout_pool`): W actors each hold a copy of the policy (and of the reward, e.g. its
  reward model for ``rm:PATH``), created once. For every rollout the driver puts the current weights in
  the object store once (``ray.put``), every actor loads them, and actor ``i`` samples and scores chunk
  ``i`` of the prompts — contiguous, near-equal chunks — with the seed ``chunk_seed(seed, i)``; the driver
  joins the chunks in prompt order. Results therefore depend on W (and not on the machine): with
  ``rollout_backend=local`` the same W chunks run one after another in this process, with the same seeds
  and the actors' torch thread count, reproducing a Ray run exactly without Ray.
  ``rollout_workers=0`` (the default) is the unchunked in-process rollout, unchanged.
* **Scoring** (`score_on_workers`): N actors each load the reward model(s) and score a contiguous chunk
  of the records; scores are per response, so they equal the in-process ones up to float round-off.

* **vLLM on the actors** (``rollout_backend=vllm`` with ``rollout_workers=W``): each actor holds one vLLM
  engine instead of a transformers model (a `VLLMRollout`, built once; ``rollout_worker_gpus`` places it on
  a GPU). For every rollout the driver puts the policy's weights in the object store once, as `hf_weights`
  gives them (Hugging Face names, a LoRA policy merged), every actor loads them into its engine in place
  (`VLLMRollout.load_weights`, no disk), samples chunk ``i`` with ``chunk_seed(seed, i)`` and returns the
  tokens with the engine's log-probs. `run_chunks` with a colocated `VLLMRollout` reproduces it in-process.
  With ``rollout_workers=0`` the engine is colocated in the training process (`alignkit.rollout.vllm_engine`).

GPU actors (``rollout_worker_gpus``) without vLLM generate with the transformers model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os

import torch
from torch import Tensor

from alignkit.data.dataset import TokenizedDataset
from alignkit.errors import ConfigError
from alignkit.executor.reward_model import load_reward_model
from alignkit.models.load import load_tokenizer
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.rm_scores import reward_info, score_records
from alignkit.rollout.correction import ROLLOUT_LOGPS, join_rollout_logps
from alignkit.rollout.experience import Experience, chunk_seed, sample_experience
from alignkit.rollout.vllm_engine import VLLMRollout, hf_weights

logger = logging.getLogger("alignkit")
BACKENDS = ("ray", "local", "vllm")


def require_ray():
    """The ``ray`` module, initialised (an existing cluster via ``RAY_ADDRESS``, else a local instance)."""
    try:
        import ray
    except ImportError:
        raise ImportError('Ray workers need the ray extra: pip install "alignkit[ray]" (or pip install ray); '
                          "rollout_workers=0 / --workers 0 runs in-process") from None
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    return ray


def check_resources(ray, workers: int, cpus: float, gpus: float = 0.0) -> None:
    """Warn when the cluster cannot place ``workers`` actors now (they wait for an autoscaler, or forever)."""
    have = ray.cluster_resources()
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        if each and have.get(name, 0) < workers * each:
            logger.warning("%d Ray workers need %g %ss; the cluster has %g: they wait until it grows", workers,
                           workers * each, name, have.get(name, 0))


def split(n: int, parts: int) -> list[range]:
    """``n`` items in ``parts`` contiguous near-equal chunks (the first ``n % parts`` one longer); empty
    chunks are dropped."""
    if parts < 1:
        raise ValueError(f"need at least one chunk, got {parts}")
    size, extra = divmod(n, parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _join(values: list):
    first = values[0]
    if isinstance(first, Tensor):
        return torch.cat(values)
    if isinstance(first, TokenizedDataset):
        items = [dataclasses.replace(tr) for v in values for tr in v.items]
        for i, tr in enumerate(items):
            tr.index = i
        return TokenizedDataset([r for v in values for r in v.records], items)
    if isinstance(first, dict):  # an Experience's extra: the engine's log-probs are ragged across chunks
        return {key: (join_rollout_logps if key == ROLLOUT_LOGPS else _join)([v[key] for v in values])
                for key in first}
    if isinstance(first, list):
        return [x for v in values for x in v]
    raise TypeError(f"cannot join experience fields of type {type(first).__name__}")


def merge_experiences(parts: list[Experience]) -> Experience:
    """Chunks of one rollout, in order, as one `Experience` (every field joined along prompts; the reward's
    metrics averaged over the chunks, weighted by their prompts)."""
    if len(parts) == 1:
        return parts[0]
    fields = [f.name for f in dataclasses.fields(Experience) if f.name != "reward_metrics"]
    merged = Experience(**{name: _join([getattr(p, name) for p in parts]) for name in fields})
    sizes = [len(p.prompts) for p in parts]
    keys = {k for p in parts for k in p.reward_metrics}
    merged.reward_metrics = {k: sum(n * p.reward_metrics.get(k, 0.0) for n, p in zip(sizes, parts)) / sum(sizes)
                             for k in sorted(keys)}
    return merged


def _chunks(rows: list[dict], seed: int, workers: int):
    """(rows, seed) of each chunk, in order."""
    return [([rows[i] for i in r], chunk_seed(seed, j)) for j, r in enumerate(split(len(rows), workers))]


def run_chunks(rollout, rows: list[dict], seed: int, workers: int, **kwargs) -> Experience:
    """``rollout(rows, seed, **kwargs)`` (e.g. a colocated `VLLMRollout`'s) on the W chunks of a Ray rollout,
    one after another, joined in prompt order: the in-process reference of ``rollout_backend=vllm`` on actors."""
    return merge_experiences([rollout(part, s, **kwargs) for part, s in _chunks(rows, seed, workers)])


class LocalRollout:
    """The chunked rollout in this process (``rollout_backend=local``): the Ray path's reference."""

    def __init__(self, model, tokenizer, reward_fn, workers: int, threads: int = 1):
        self.model, self.tokenizer, self.reward_fn = model, tokenizer, reward_fn
        self.workers, self.threads = workers, threads

    def rollout(self, rows: list[dict], seed: int, **kwargs) -> Experience:
        with torch_threads(self.threads):
            return run_chunks(self._sample, rows, seed, self.workers, **kwargs)

    def _sample(self, rows: list[dict], seed: int, **kwargs) -> Experience:
        return sample_experience(self.model, self.tokenizer, [r["prompt"] for r in rows], rows, self.reward_fn,
                                 seed=seed, **kwargs)

    def close(self) -> None:
        pass


def _worker_setup(threads: int) -> None:
    """An actor's process: ``threads`` torch threads (as the in-process reference uses), quiet loading."""
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)


class RolloutWorker:
    """A Ray actor (`RayRollout`): a copy of the policy and the reward; samples and scores its chunks."""

    def __init__(self, model_bytes: bytes, tokenizer, reward, threads: int, gpu: bool):
        _worker_setup(threads)
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.model = torch.load(io.BytesIO(model_bytes), map_location=self.device, weights_only=False)
        self.tokenizer = tokenizer
        self.reward = build_group_reward(reward, tokenizer, self.device)

    def sample(self, state: dict, rows: list[dict], seed: int, kwargs: dict) -> Experience:
        self.model.load_state_dict(state)
        exp = sample_experience(self.model, self.tokenizer, [r["prompt"] for r in rows], rows, self.reward, seed=seed,
                                **kwargs)
        exp.rewards = exp.rewards.cpu()
        return exp


class VLLMWorker:
    """A Ray actor (`RayRollout` with ``rollout_backend=vllm``): one vLLM engine, wrapped in a `VLLMRollout`
    built once, and the reward; loads the weights the driver pushes and samples its chunks."""

    def __init__(self, structure: bytes, tokenizer, reward, threads: int, gpu: bool, config):
        _worker_setup(threads)
        device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        # the engine is built from the policy's checkpoint path, dtype and generation config; weights are pushed
        model = torch.load(io.BytesIO(structure), map_location="meta", weights_only=False)
        self.vllm = VLLMRollout(config, model, tokenizer, build_group_reward(reward, tokenizer, device), device.type)

    def sample(self, weights: dict, rows: list[dict], seed: int, kwargs: dict) -> Experience:
        self.vllm.load_weights(list(weights.items()))
        exp = self.vllm.sample(rows, seed, **kwargs)
        exp.rewards = exp.rewards.cpu()
        return exp


def _module_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def _structure_bytes(model) -> bytes:
    """``model`` pickled with its parameters and buffers on the meta device: its classes, config and
    generation config, without the weights."""
    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.to("meta") for b in model.buffers()})
    return _module_bytes(copy.deepcopy(model, memo))


class RayRollout:
    """W `RolloutWorker` actors (with ``vllm``, the run's config: W `VLLMWorker` actors); each rollout ships
    the current weights once and joins the chunks."""

    def __init__(self, model, tokenizer, reward, workers: int, cpus: int = 1, gpus: float = 0.0, vllm=None):
        ray = require_ray()
        self.ray, self.model, self.vllm = ray, model, vllm is not None
        check_resources(ray, workers, cpus, gpus)
        blob = ray.put(_structure_bytes(model) if self.vllm else _module_bytes(model))
        worker, extra = (VLLMWorker, (vllm,)) if self.vllm else (RolloutWorker, ())
        actor = ray.remote(worker).options(num_cpus=cpus, num_gpus=gpus)
        self.actors = [actor.remote(blob, tokenizer, reward, cpus, gpus > 0, *extra) for _ in range(workers)]
        logger.info("rollouts on %d Ray actors (%d CPUs, %s GPUs each%s)", workers, cpus, gpus,
                    ", a vLLM engine in each" if self.vllm else "")

    def rollout(self, rows: list[dict], seed: int, **kwargs) -> Experience:
        if self.vllm:  # what the engines load: Hugging Face names, a LoRA policy merged
            weights = {name: w.cpu() for name, w in hf_weights(self.model)}
        else:
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        state = self.ray.put(weights)
        futures = [actor.sample.remote(state, part, s, kwargs)
                   for actor, (part, s) in zip(self.actors, _chunks(rows, seed, len(self.actors)))]
        return merge_experiences(self.ray.get(futures))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def rollout_pool(config, model, tokenizer, reward_fn):
    """The rollout a config asks for: `RayRollout` (a vLLM engine in each actor with ``rollout_backend=vllm``),
    `LocalRollout` (``rollout_backend=local``) or, with ``rollout_backend=vllm`` and ``rollout_workers=0``,
    one `VLLMRollout` engine colocated in this process."""
    workers, cpus = config.rollout_workers, config.rollout_worker_cpus
    if config.rollout_backend == "vllm" and not workers:
        return VLLMRollout(config, model, tokenizer, reward_fn)
    if config.rollout_backend == "local":
        return LocalRollout(model, tokenizer, reward_fn, workers, cpus)
    if config.rollout_backend not in BACKENDS:
        raise ConfigError(f"rollout_backend must be one of {BACKENDS}, got {config.rollout_backend!r}")
    if reward_fn.needs_models:  # it decodes with the driver's live policy and reference
        raise ConfigError(f"reward {config.reward!r} samples from the trainer's own models and runs in-process only; "
                         "use rollout_workers=0 or rollout_backend=local")
    return RayRollout(model, tokenizer, config.reward, workers, cpus, config.rollout_worker_gpus,
                      vllm=config if config.rollout_backend == "vllm" else None)


class ScoreWorker:
    """A Ray actor holding reward model(s) for `alignkit score --workers N`."""

    def __init__(self, paths: list[str], dtype: str, trust_remote_code: bool, threads: int):

        _worker_setup(threads)
        self.tokenizer = load_tokenizer(paths[0], trust_remote_code=trust_remote_code)
        self.models = [load_reward_model(p, dtype=dtype, trust_remote_code=trust_remote_code) for p in paths]
        self.infos = [reward_info(p) for p in paths]

    def score(self, records: list, kwargs: dict):

        return score_records(self.models, self.tokenizer, records, progress=False, infos=self.infos, **kwargs)


def score_on_workers(paths: list[str], records: list, workers: int, dtype: str = "float32",
                     trust_remote_code: bool = False, cpus: int = 1, **kwargs) -> tuple[list, list | None]:
    """`score_records` of ``records`` split across ``workers`` Ray actors; ``kwargs`` go to `score_records`
    (batch_size, aggregate, lam, tokenize). Returns (scores, uncertainty) in record order."""
    if not records:
        return [], None
    ray = require_ray()
    chunks = split(len(records), workers)
    check_resources(ray, len(chunks), cpus)
    actor = ray.remote(ScoreWorker).options(num_cpus=cpus)
    actors = [actor.remote(list(paths), dtype, trust_remote_code, cpus) for _ in chunks]
    try:
        parts = ray.get([a.score.remote([records[i] for i in r], kwargs) for a, r in zip(actors, chunks)])
    finally:
        for a in actors:
            ray.kill(a)
    scores = [s for part, _ in parts for s in part]
    unc = None if parts[0][1] is None else [u for _, part in parts for u in part]
    return scores, unc
