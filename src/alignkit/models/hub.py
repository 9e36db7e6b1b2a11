"""Model, tokenizer and dataset names, read the way transformers and datasets read them.

A name is a local path when one exists. Otherwise, when it can be a Hub repo id, the Hugging Face Hub client
resolves it: on a connected machine the files are downloaded into the Hugging Face cache (``HF_HUB_CACHE``,
by default ``~/.cache/huggingface/hub``; datasets into ``HF_DATASETS_CACHE`` too) and read from there;
offline only the cache is read. Offline means ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``, read
as huggingface_hub reads them; ``HF_DATASETS_OFFLINE`` decides for datasets where it is set), or alignkit's
own ``offline=true`` / ``--offline`` (`set_offline`, `offline_mode`).

How a name is read:

* a folder that exists is used as it is; the network is never asked;
* a name that can only be a path fails at once when missing (`local_only_reason`): it starts with ``.``,
  ``/`` or ``~``, has more than one ``/``, is not a valid repo id, or has a ``/`` and the folder before it
  exists (``models/my-llama`` where ``models/`` exists);
* anything else (``Qwen/Qwen2.5-0.5B-Instruct``; ``models/my-llama`` where ``models/`` does not exist) is
  a Hub id. As transformers does, the Hub is asked first — one metadata request with a short timeout
  (``ALIGNKIT_HUB_TIMEOUT``, default 5 s) and no retries, where transformers spends a minute retrying —
  and the cache is read when the Hub cannot be reached. A process asks an unreachable Hub only once.

A model resolves to one local folder (the cache's snapshot folder for a Hub id) that every loader reads:
the files transformers reads (configs, tokenizer files, chat templates) and the weights in one format
(``model*.safetensors``, else ``pytorch_model*.bin``; never both, nor other formats in the repo).
Every failure is one `ModelError` / `DataError` line: what was tried (local folder, cache, Hub), what was
missing, and what to do.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignkit.errors import DataError, ModelError

logger = logging.getLogger("alignkit")

DEFAULT_TIMEOUT = 5.0  # seconds for the first Hub request about a name ($ALIGNKIT_HUB_TIMEOUT)
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]  # configs, tokenizers, templates
WEIGHT_PATTERNS = ["model*.safetensors", "pytorch_model*.bin"]  # the first format the repo has is fetched
EXAMPLE = "Qwen/Qwen2.5-0.5B-Instruct"
OFFLINE_HELP = "read Hub names from the local Hugging Face cache only, never the network (as HF_HUB_OFFLINE=1)"
_TRUE = {"1", "ON", "YES", "TRUE"}

_offline: str | None = None  # why alignkit itself is offline: "offline=true" (a run), "--offline" (a command)
_resolved: dict[tuple, str] = {}
_unreachable: dict[str, str] = {}  # Hub endpoint -> why it could not be reached (asked once per process)
_infos: dict[tuple[str, str], Any] = {}  # (repo, repo type) -> its Hub info (asked once per process)


# ------------------------------------------------------------------------------------------ offline mode
def set_offline(flag: bool, why: str = "--offline") -> None:
    """Read Hub names from the cache only, for the rest of the process (``--offline``)."""
    global _offline
    _offline = why if flag else None


@contextlib.contextmanager
def offline_mode(flag: bool) -> Iterator[None]:
    """Within the block, offline if ``flag`` (a run's ``offline=true``); the previous setting afterwards."""
    if not flag:
        yield
        return
    global _offline
    before, env = _offline, os.environ.get("HF_HUB_OFFLINE")
    _offline = before or "offline=true"
    os.environ["HF_HUB_OFFLINE"] = "1"  # for the processes a run starts (Ray actors)
    try:
        yield
    finally:
        _offline = before
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def offline_reason(datasets: bool = False) -> str | None:
    """Why the Hub must not be asked (``"HF_HUB_OFFLINE=1"``, ``"offline=true"``...), or None when it may."""
    if _offline:
        return _offline
    names = ("HF_DATASETS_OFFLINE",) if datasets and os.environ.get("HF_DATASETS_OFFLINE") is not None else (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    for name in names:  # the first one set decides, as in huggingface_hub.constants and datasets.config
        if value := os.environ.get(name):
            return f"{name}={value}" if value.upper() in _TRUE else None
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else None  # set before huggingface_hub was imported


def hub_timeout() -> float:
    return float(os.environ.get("ALIGNKIT_HUB_TIMEOUT") or DEFAULT_TIMEOUT)


def clear_cache() -> None:
    """Forget resolved names and an unreachable Hub (tests; a long-lived process whose network came back)."""
    _resolved.clear()
    _unreachable.clear()
    _infos.clear()


# ------------------------------------------------------------------------------------------ names
def local_only_reason(name: str) -> str | None:
    """Why ``name`` can only be a local path (None: it can also be a Hub repo id)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for start in (".", "/", "~", "\\"):
        if name.startswith(start):
            return f"it starts with '{start}'"
    if name.count("/") > 1:
        return "it has more than one '/'"
    if "/" in name and Path(name).parent.is_dir():
        return f"the folder '{Path(name).parent}' exists, so it names a path inside it"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "it is not a valid Hub id: letters, digits, '-', '_', '.' and at most one '/'"
    return None


def _brief(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_connection_error(e: BaseException) -> bool:
    """A network that is down, filtered or refused (not an answer from the Hub), anywhere in the chain."""
    try:
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover - huggingface_hub < 2 used httpx / requests
        TransportError = OSError  # noqa: N806
    from huggingface_hub.errors import HfHubHTTPError

    return any(isinstance(x, (TransportError, ConnectionError, TimeoutError)) and not isinstance(x, HfHubHTTPError)
               for x in _chain(e))


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def hub_refusal(e: BaseException, repo: str, repo_type: str = "model") -> str | None:
    """What the Hub's answer means for the user (gated, missing or private, a server error); None when ``e``
    is not an answer from the Hub."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    url = f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    for x in _chain(e):
        if isinstance(x, GatedRepoError):
            return (f"{url} is a gated repo and this machine has no access to it (HTTP {_status(x)}); accept its "
                    f"licence on that page, then log in with `hf auth login` (or set HF_TOKEN)")
        if isinstance(x, RepositoryNotFoundError):
            return (f"no such {repo_type} on the Hub ({url}: HTTP {_status(x)}; a private repo reads the same: "
                    "log in with `hf auth login` if it is yours); check the name or the path")
        if isinstance(x, HfHubHTTPError):
            code = _status(x) or 0
            fix = ("retry later" if code >= 500 else "check the name" if code == 404 else
                   "check HF_ENDPOINT and your token (`hf auth login`)")
            return f"the Hub answered HTTP {code} for {url} ({_brief(x)}); {fix}"
    return None


def _probe(repo: str, repo_type: str):
    """Repo info from the Hub, or the reason it could not be reached (a string). Hub answers raise."""
    from huggingface_hub import HfApi, constants

    if constants.ENDPOINT in _unreachable:
        return _unreachable[constants.ENDPOINT]
    if (repo, repo_type) in _infos:
        return _infos[repo, repo_type]
    try:
        info = _infos[repo, repo_type] = HfApi().repo_info(repo, repo_type=repo_type, timeout=hub_timeout())
        return info
    except Exception as e:
        if not is_connection_error(e):
            raise
        _unreachable[constants.ENDPOINT] = why = f"the Hub ({constants.ENDPOINT}) could not be reached ({_brief(e)})"
        return why


# ------------------------------------------------------------------------------------------ models
def resolve_model(name: str | os.PathLike, *, weights: bool = True, trust_remote_code: bool = False,
                  what: str = "model") -> str:
    """The local folder holding model (or tokenizer) ``name``: the folder itself, or the Hugging Face
    cache's snapshot of Hub id ``name`` (downloaded when online). ``weights=False``: configs and tokenizer
    files only (a tokenizer, `alignkit doctor`). Raises `ModelError` (one line) for anything missing."""
    name = os.fspath(name)
    path = Path(name).expanduser()
    if path.is_dir():
        _check_folder(name, path, weights, what)
        return str(path)
    if path.exists():
        raise ModelError(f"{what} '{name}': {path} is a file; pass the folder that holds config.json (and the weights)")
    if why := local_only_reason(name):
        raise ModelError(f"{what} '{name}': no such folder ({path.absolute()}); it can only be a local path ({why}), "
                         f"so neither the Hugging Face cache nor the Hub was tried; pass the folder that holds "
                         f"config.json and the weights, or a Hub id such as {EXAMPLE}")
    key = (name, weights, trust_remote_code, offline_reason())
    if key not in _resolved:
        _resolved[key] = _from_hub(name, weights, trust_remote_code, what)
    return _resolved[key]


def _check_folder(name: str, path: Path, weights: bool, what: str) -> None:
    wanted = ("config.json", "adapter_config.json") if weights else ("config.json", "tokenizer_config.json",
                                                                      "tokenizer.json")
    if not any((path / f).is_file() for f in wanted):
        held = sorted(p.name for p in path.iterdir())
        shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "") if held else "nothing"
        raise ModelError(f"{what} '{name}': the folder has no {' or '.join(wanted[:2])} (it holds {shown}); pass "
                         "the folder of a saved model (e.g. a run's final/ folder)")


def _from_hub(name: str, weights: bool, trust_remote_code: bool, what: str) -> str:
    import huggingface_hub as hf

    patterns = CONFIG_PATTERNS + (["*.py"] if trust_remote_code else [])
    local = f"no local folder {Path(name).absolute()}"
    if offline := offline_reason():
        return _from_cache(name, patterns, weights, f"the Hub was not asked ({offline})", what, local)
    try:
        info = _probe(name, "model")
    except Exception as e:
        if (refusal := hub_refusal(e, name)) is None:
            raise
        raise ModelError(f"{what} '{name}': {local}, and {refusal}") from None
    if isinstance(info, str):  # unreachable: the cache, as transformers does
        folder = _from_cache(name, patterns, weights, info, what, local)
        logger.warning("%s; using %s from the Hugging Face cache (%s)", info, name, folder)
        return folder
    if weights:
        files = [s.rfilename for s in info.siblings or []]
        pattern = next((p for p in WEIGHT_PATTERNS if any(fnmatch.fnmatch(f, p) for f in files)), None)
        if pattern is None:
            raise ModelError(f"{what} '{name}': the Hub repo has no weights transformers loads ({' or '.join(WEIGHT_PATTERNS)}); "
                             f"its files: {', '.join(sorted(files)[:8]) or 'none'}")
        patterns = patterns + [pattern]
    logger.info("%s: downloading from the Hub into the Hugging Face cache (files already there are reused)", name)
    try:
        return hf.snapshot_download(name, allow_patterns=patterns)
    except Exception as e:
        if (refusal := hub_refusal(e, name)) is not None:
            raise ModelError(f"{what} '{name}': {refusal}") from None
        if is_connection_error(e) or isinstance(e, OSError):
            raise ModelError(f"{what} '{name}': the download into the Hugging Face cache stopped ({_brief(e)}); "
                             "run again to finish it (files already downloaded are kept)") from None
        raise


def _from_cache(name: str, patterns: list[str], weights: bool, why_not_hub: str, what: str, local: str) -> str:
    import huggingface_hub as hf
    from huggingface_hub import constants
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    fix = "run once with a network to download it into the cache, or copy the model folder here and pass its path"
    try:
        folder = hf.snapshot_download(name, allow_patterns=patterns, local_files_only=True)
        missing = _missing_weights(Path(folder)) if weights else None
    except IncompleteSnapshotError as e:  # the cached file list says some are not there
        found = re.search(r"(\d+) file\(s\) are missing \((.*?)\)\.", str(e))
        folder, missing = e.snapshot_path, f"{found[1]} of its files ({found[2]})" if found else "some of its files"
    except LocalEntryNotFoundError:
        raise ModelError(f"{what} '{name}': {local}, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
                         f"{why_not_hub}; {fix}") from None
    if missing:
        raise ModelError(f"{what} '{name}': in the Hugging Face cache ({folder}) without {missing}, and {why_not_hub}; "
                         f"{fix}")
    return folder


def _missing_weights(folder: Path) -> str | None:
    """What is missing of a snapshot's weights (a sharded checkpoint's index names its shards); None if whole."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            gone = [s for s in shards if not (folder / s).is_file()]
            return f"{len(gone)} of its {len(shards)} weight shards ({gone[0]}, ...)" if gone else None
    if any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        return None
    return f"its weights ({' or '.join(WEIGHT_PATTERNS)})"


# ------------------------------------------------------------------------------------------ datasets
@contextlib.contextmanager
def _datasets_offline() -> Iterator[None]:
    """datasets and huggingface_hub read their offline flags at import: set them for the block."""
    from unittest import mock

    import datasets
    import huggingface_hub.constants as hub_constants

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}))
        for module in (datasets.config, hub_constants):
            stack.enter_context(mock.patch.object(module, "HF_HUB_OFFLINE", True))
        yield


def load_hub_dataset(name: str, split: str = "train", subset: str | None = None) -> Any:
    """``datasets.load_dataset(name, name=subset, split=split)``: downloaded and cached by datasets when
    online, from its cache offline or when the Hub cannot be reached. Raises `DataError` (one line)."""
    import datasets

    where = f"dataset '{name}'" + (f" (subset '{subset}')" if subset else "")
    if offline := offline_reason(datasets=True):
        why_not_hub = f"the Hub was not asked ({offline})"
    else:
        try:
            info = _probe(name, "dataset")
        except Exception as e:
            if (refusal := hub_refusal(e, name, "dataset")) is None:
                raise
            raise DataError(f"{where}: no local file or folder {Path(name).absolute()}, and {refusal}") from None
        why_not_hub = info if isinstance(info, str) else None
    try:
        if why_not_hub is None:
            return datasets.load_dataset(name, name=subset, split=split)
        with _datasets_offline():
            ds = datasets.load_dataset(name, name=subset, split=split)
        if not offline:
            logger.warning("%s; using %s from the datasets cache", why_not_hub, name)
        return ds
    except Exception as e:
        raise DataError(_dataset_problem(e, where, name, split, why_not_hub)) from None


def _dataset_problem(e: Exception, where: str, name: str, split: str, why_not_hub: str | None) -> str:
    import datasets

    if (refusal := hub_refusal(e, name, "dataset")) is not None:
        return f"{where}: {refusal}"
    text = " ".join(str(e).split())
    gated = re.search(r"is a gated dataset on the Hub", text)
    if gated:  # datasets words it without the Hub's error attached
        return (f"{where}: a gated dataset on the Hub and this machine has no access to it; accept its terms at "
                f"https://huggingface.co/datasets/{name}, then log in with `hf auth login` (or set HF_TOKEN)")
    if isinstance(e, ValueError) and not is_connection_error(e):  # a split or subset that is not there
        return f"{where}: {text[:300].rstrip('.')}; choose the split (data_split=..., now '{split}') or subset (data_subset=...)"
    cache = datasets.config.HF_DATASETS_CACHE
    if why_not_hub is not None:
        return (f"{where}: no local file or folder {Path(name).absolute()}, not in the datasets cache ({cache}), "
                f"and {why_not_hub}; run once with a network to download it into the cache, or save it to a "
                ".jsonl/.parquet file (or save_to_disk) and pass the path")
    if is_connection_error(e) or isinstance(e, OSError):
        return f"{where}: the download stopped ({_brief(e)}); run again to finish it (the cache keeps what arrived)"
    raise e
