"""Hub names: models, tokenizers and datasets resolve through the Hub client, never the network in tests.

The Hub client is replaced by fakes that record what reached them and serve the tiny local model; the
offline cache is a real Hugging Face cache layout in a temporary folder read by the real
``snapshot_download(local_files_only=True)``; the no-network failures use the real client against a closed
local port and a local socket that never answers.
"""

import logging
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from alignkit.errors import DataError, ModelError
from alignkit.models import hub
from alignkit.models.hub import CONFIG_PATTERNS, resolve_model

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "Qwen/Qwen2.5-0.5B-Instruct"
FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "original/consolidated.00.pth", "tokenizer.json"]


@pytest.fixture(autouse=True)
def fresh_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, nothing resolved yet, alignkit's own offline switch off."""
    monkeypatch.setattr(logging.getLogger("alignkit"), "handlers", [])  # a console handler on this test's stderr
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.clear_cache()
    hub.set_offline(False)
    yield
    hub.clear_cache()
    hub.set_offline(False)


@pytest.fixture
def online(monkeypatch):
    """A connected machine as far as the libraries can tell (the conftest sets HF_HUB_OFFLINE=1)."""
    import datasets.config

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


REAL_SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download


class FakeHub:
    """``HfApi.repo_info`` and ``snapshot_download`` that record their calls and serve ``folder``; reads of the
    local cache (``local_files_only=True``) go to the real ``snapshot_download``."""

    def __init__(self, monkeypatch, folder=None, files=FILES, info_error=None, download_error=None):
        self.info_calls, self.download_calls = [], []
        self.folder, self.files, self.info_error, self.download_error = folder, files, info_error, download_error
        monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda api, repo_id, **kw: self.repo_info(repo_id, **kw))
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def repo_info(self, repo_id, **kwargs):
        self.info_calls.append((repo_id, kwargs))
        if self.info_error is not None:
            raise self.info_error
        return SimpleNamespace(sha=SHA, siblings=[SimpleNamespace(rfilename=f) for f in self.files])

    def snapshot_download(self, repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            return REAL_SNAPSHOT_DOWNLOAD(repo_id, **kwargs)
        self.download_calls.append((repo_id, kwargs))
        if self.download_error is not None:
            raise self.download_error
        return self.folder


def no_hub(monkeypatch):
    """Any call to the Hub fails the test (reading the local cache is allowed)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub client was called")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: REAL_SNAPSHOT_DOWNLOAD(repo, **kw) if kw.get("local_files_only") else refuse())


def http_error(cls, status: int, url: str):
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error. Cannot access repo for url {url}.", response=response)


def fake_cache(tiny_path: str, repo: str = REPO, weights: bool = True) -> Path:
    """``repo`` in the Hugging Face cache layout (refs/main -> snapshots/<sha>/...), as a download leaves it."""
    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / SHA
    shutil.copytree(tiny_path, snapshot)
    if not weights:
        (snapshot / "model.safetensors").unlink()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)
    return snapshot


# ------------------------------------------------------------------------------------------- models
def test_hub_model_and_tokenizer_download_through_the_hub_client(online, monkeypatch, tiny_path):
    from alignkit.models.load import load_model, load_tokenizer

    fake = FakeHub(monkeypatch, tiny_path)
    model, tok = load_model(REPO), load_tokenizer(REPO)
    assert fake.info_calls == [(REPO, {"repo_type": "model", "timeout": 5.0})]  # asked once, short timeout
    assert fake.download_calls == [  # weights in one format only: safetensors, not the .bin or original/*.pth
        (REPO, {"allow_patterns": CONFIG_PATTERNS + ["model*.safetensors"]}),
        (REPO, {"allow_patterns": CONFIG_PATTERNS}),  # the tokenizer: configs and tokenizer files only
    ]
    assert model.config.hidden_size == 64 and tok.eos_token == "<|im_end|>"  # the tiny model, served


def test_a_repo_with_only_bin_weights_fetches_the_bin_shards(online, monkeypatch, tiny_path):
    fake = FakeHub(monkeypatch, tiny_path, files=["config.json", "pytorch_model-00001-of-00002.bin",
                                                  "pytorch_model-00002-of-00002.bin", "model.gguf"])
    assert resolve_model("owner/old-model", trust_remote_code=True) == tiny_path
    assert fake.download_calls == [("owner/old-model",
                                    {"allow_patterns": CONFIG_PATTERNS + ["*.py", "pytorch_model*.bin"]})]


def test_a_repo_without_loadable_weights_is_one_line(online, monkeypatch):
    FakeHub(monkeypatch, files=["README.md", "model-q4.gguf"])
    with pytest.raises(ModelError) as e:
        resolve_model("owner/gguf-only")
    assert str(e.value) == ("model 'owner/gguf-only': the Hub repo has no weights transformers loads "
                            "(model*.safetensors or pytorch_model*.bin); its files: README.md, model-q4.gguf")


def test_reward_models_resolve_through_the_hub_client(online, monkeypatch, tiny_path):
    """load_reward_model (rm:PATH rewards, reward_model:PATH judges, score/eval-rm) and reward_info."""
    from alignkit.executor.reward_model import load_reward_model
    from alignkit.rewards.rm_scores import reward_info

    fake = FakeHub(monkeypatch, tiny_path)
    model = load_reward_model("owner/rm", num_outputs=1)
    assert type(model).__name__ == "Qwen2ForSequenceClassification" and reward_info("owner/rm") == {}
    assert [c[0] for c in fake.download_calls] == ["owner/rm", "owner/rm"]


def test_offline_reads_the_cache_only(monkeypatch, tiny_path):
    """HF_HUB_OFFLINE=1 (set by the conftest): the real snapshot_download finds the cached snapshot."""
    from alignkit.models.load import load_model

    snapshot = fake_cache(tiny_path)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    assert resolve_model(REPO) == str(snapshot)
    assert load_model(REPO).config.hidden_size == 64


def test_offline_flag_reads_the_cache_only_on_a_connected_machine(online, monkeypatch, tiny_path):
    snapshot = fake_cache(tiny_path)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    with hub.offline_mode(True):
        assert hub.offline_reason() == "offline=true" and resolve_model(REPO) == str(snapshot)
    assert hub.offline_reason() is None


def test_offline_cache_without_weights_names_what_is_missing(tiny_path):
    snapshot = fake_cache(tiny_path, weights=False)
    assert resolve_model(REPO, weights=False) == str(snapshot)  # enough for the tokenizer
    with pytest.raises(ModelError) as e:
        resolve_model(REPO)
    assert str(e.value) == (
        f"model '{REPO}': in the Hugging Face cache ({snapshot}) without its weights (model*.safetensors or "
        "pytorch_model*.bin), and the Hub was not asked (HF_HUB_OFFLINE=1); run once with a network to download "
        "it into the cache, or copy the model folder here and pass its path")


@pytest.mark.parametrize("name, why", [
    ("/nonexistent/model", "it starts with '/'"),
    ("./my-model", "it starts with '.'"),
    ("~/models/llama", "it starts with '~'"),
    ("runs/dpo/final", "it has more than one '/'"),
    ("models/my-llama", "the folder 'models' exists, so it names a path inside it"),
    ("my--model", "it is not a valid Hub id: letters, digits, '-', '_', '.' and at most one '/'"),
])
def test_names_that_can_only_be_paths_never_reach_the_hub(online, monkeypatch, tmp_path, name, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    no_hub(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ModelError) as e:
        resolve_model(name)
    assert time.perf_counter() - start < 0.5
    where = Path(name).expanduser().absolute()
    assert str(e.value) == (
        f"model '{name}': no such folder ({where}); it can only be a local path ({why}), so neither the Hugging "
        "Face cache nor the Hub was tried; pass the folder that holds config.json and the weights, or a Hub id "
        "such as Qwen/Qwen2.5-0.5B-Instruct")


def test_a_folder_without_config_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ModelError, match=r"the folder has no config.json or adapter_config.json \(it holds "
                                         r"metrics.jsonl\); pass the folder of a saved model"):
        resolve_model(str(tmp_path / "run"))


def test_ambiguous_name_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    no_hub_cache = constants.HF_HUB_CACHE
    with pytest.raises(ModelError) as e:
        resolve_model("models/my-llama")
    assert str(e.value) == (
        f"model 'models/my-llama': no local folder {tmp_path}/models/my-llama, not in the Hugging Face cache "
        f"({no_hub_cache}), and the Hub was not asked (HF_HUB_OFFLINE=1); run once with a network to download it "
        "into the cache, or copy the model folder here and pass its path")


def test_ambiguous_name_without_network_fails_fast_and_asks_once(online, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    fake = FakeHub(monkeypatch, info_error=httpx2.ConnectError("[Errno -2] Name or service not known"))
    start = time.perf_counter()
    for _ in range(2):
        with pytest.raises(ModelError) as e:
            resolve_model("models/my-llama", weights=False)
    assert time.perf_counter() - start < 2.0
    assert len(fake.info_calls) == 1 and fake.download_calls == []  # an unreachable Hub is asked once
    assert str(e.value) == (
        f"model 'models/my-llama': no local folder {tmp_path}/models/my-llama, not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and the Hub (https://huggingface.co) could not be reached (ConnectError: "
        "[Errno -2] Name or service not known); run once with a network to download it into the cache, or copy "
        "the model folder here and pass its path")


def test_train_with_an_ambiguous_name_and_no_network_asks_the_hub_once_through_the_resolver(online, monkeypatch,
                                                                                         tmp_path, pairs_path):
    """Every model read of a run goes through the resolver: `alignkit train` (its start-up checks included) asks
    the unreachable Hub once, never through transformers' own retrying download (which once cost 24 s here)."""
    import huggingface_hub.file_download as fd

    import alignkit

    monkeypatch.chdir(tmp_path)
    fake = FakeHub(monkeypatch, info_error=httpx2.ConnectError("[Errno -2] Name or service not known"))
    monkeypatch.setattr(fd, "get_hf_file_metadata", lambda *a, **k: pytest.fail("a read bypassed the resolver"))
    start = time.perf_counter()
    with pytest.raises(ModelError, match="model 'models/my-llama': no local folder"):
        alignkit.train({"model": "models/my-llama", "data": pairs_path, "output_dir": str(tmp_path / "run")})
    assert time.perf_counter() - start < 5.0 and len(fake.info_calls) == 1


def test_unreachable_hub_falls_back_to_the_cache(online, monkeypatch, tiny_path):
    snapshot = fake_cache(tiny_path)
    FakeHub(monkeypatch, info_error=httpx2.ConnectError("[Errno 101] Network is unreachable"))
    assert resolve_model(REPO) == str(snapshot)


def test_real_client_refused_port_fails_in_about_a_second(online, monkeypatch):
    """The real huggingface_hub client against a closed local port: one request, no retries."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"the Hub \(http://127.0.0.1:9\) could not be reached \(ConnectError"):
        resolve_model("models/my-llama")
    assert time.perf_counter() - start < 3.0


def test_real_client_silent_server_times_out_after_alignkit_hub_timeout(online, monkeypatch):
    """A server that accepts the connection and never answers: the probe gives up after ALIGNKIT_HUB_TIMEOUT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("ALIGNKIT_HUB_TIMEOUT", "1")
    start = time.perf_counter()
    try:
        with pytest.raises(ModelError, match=r"could not be reached \(ReadTimeout"):
            resolve_model("models/my-llama")
    finally:
        server.close()
    assert 0.9 < time.perf_counter() - start < 3.0


def test_gated_repo_says_accept_the_licence_and_log_in(online, monkeypatch):
    url = "https://huggingface.co/meta-llama/Llama-3.2-1B/resolve/main/config.json"
    FakeHub(monkeypatch, download_error=http_error(GatedRepoError, 403, url))
    with pytest.raises(ModelError) as e:
        resolve_model("meta-llama/Llama-3.2-1B")
    assert str(e.value) == (
        "model 'meta-llama/Llama-3.2-1B': https://huggingface.co/meta-llama/Llama-3.2-1B is a gated repo and this "
        "machine has no access to it (HTTP 403); accept its licence on that page, then log in with `hf auth login` "
        "(or set HF_TOKEN)")


def test_missing_repo_says_check_the_name(online, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    FakeHub(monkeypatch, info_error=http_error(RepositoryNotFoundError, 401, "https://huggingface.co/api/models/x"))
    with pytest.raises(ModelError) as e:
        resolve_model("models/my-llama")
    assert str(e.value) == (
        f"model 'models/my-llama': no local folder {tmp_path}/models/my-llama, and no such model on the Hub "
        "(https://huggingface.co/models/my-llama: HTTP 401; a private repo reads the same: log in with "
        "`hf auth login` if it is yours); check the name or the path")


def test_cli_prints_one_line_and_offline_flag_keeps_off_the_hub(online, monkeypatch, tmp_path, pairs_path, capsys):
    from alignkit import cli

    monkeypatch.chdir(tmp_path)
    no_hub(monkeypatch)
    argv = ["logprobs", "--model", "models/my-llama", "--data", pairs_path, "--out", str(tmp_path / "o.jsonl")]
    assert cli.main([*argv, "--offline"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        f"alignkit logprobs: error: model 'models/my-llama': no local folder {tmp_path}/models/my-llama, not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}), and the Hub was not asked (--offline); run once with a "
        "network to download it into the cache, or copy the model folder here and pass its path"]


def test_train_offline_key_holds_for_the_whole_run(online, monkeypatch):
    from alignkit import training

    seen = []

    class Recorder:
        def __init__(self, config, **wiring):  # sampled_eval
            seen.append(hub.offline_reason())

        def train(self):
            return "done"

    monkeypatch.setattr(training, "Trainer", Recorder)
    assert training.train({"model": "m", "data": "d.jsonl", "offline": True}) == "done"
    assert training.train({"model": "m", "data": "d.jsonl"}) == "done"
    assert seen == ["offline=true", None]


# ------------------------------------------------------------------------------------------- datasets
UF_ROWS = [{"chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
            "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
            "score_chosen": 9.0, "score_rejected": 2.0}]


def test_hub_dataset_loads_with_datasets_and_the_configured_split(online, monkeypatch, tmp_path):
    import datasets

    from alignkit.config import TrainConfig
    from alignkit.engine.prepare import read_split

    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(UF_ROWS)

    fake = FakeHub(monkeypatch)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = TrainConfig(data="trl-lib/ultrafeedback_binarized", data_split="train[:100]", data_subset="default",
                         output_dir=str(tmp_path))
    records = read_split(config, config.data, "train") + read_split(config, config.data, "eval")
    assert calls == [("trl-lib/ultrafeedback_binarized", {"name": "default", "split": "train[:100]"}),
                     ("trl-lib/ultrafeedback_binarized", {"name": "default", "split": "test"})]
    assert fake.info_calls == [("trl-lib/ultrafeedback_binarized", {"repo_type": "dataset", "timeout": 5.0})]
    assert records[0].to_dict()["responses"] == [[{"role": "assistant", "content": "4"}],
                                                  [{"role": "assistant", "content": "5"}]]


def test_hub_dataset_without_network_fails_fast(online, monkeypatch, tmp_path):
    import datasets.config

    from alignkit.data.io import read_records

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "ds-cache"))
    FakeHub(monkeypatch, info_error=httpx2.ConnectError("[Errno -2] Name or service not known"))
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_records("trl-lib/ultrafeedback_binarized")
    assert time.perf_counter() - start < 5.0
    assert str(e.value) == (
        f"dataset 'trl-lib/ultrafeedback_binarized': no local file or folder {tmp_path}/trl-lib/ultrafeedback_binarized"
        f", not in the datasets cache ({tmp_path}/ds-cache), and the Hub (https://huggingface.co) could not be "
        "reached (ConnectError: [Errno -2] Name or service not known); run once with a network to download it into "
        "the cache, or save it to a .jsonl/.parquet file (or save_to_disk) and pass the path")


def test_gated_dataset_says_accept_the_terms(online, monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from alignkit.data.io import read_records

    def gated(path, **kwargs):
        raise DatasetNotFoundError(f"Dataset '{path}' is a gated dataset on the Hub. You must be authenticated.")

    FakeHub(monkeypatch)
    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(DataError) as e:
        read_records("owner/gated-prefs")
    assert str(e.value) == (
        "dataset 'owner/gated-prefs': a gated dataset on the Hub and this machine has no access to it; accept its "
        "terms at https://huggingface.co/datasets/owner/gated-prefs, then log in with `hf auth login` (or set HF_TOKEN)")


def test_a_data_path_inside_an_existing_folder_is_never_a_hub_name(online, monkeypatch, tmp_path):
    from alignkit.data.io import read_records

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    no_hub(monkeypatch)
    with pytest.raises(DataError, match="no such file or folder: data/prefs"):
        read_records("data/prefs")


def test_offline_config_key_is_a_bool():
    from alignkit.config import ConfigError, TrainConfig, load_config

    assert load_config(TrainConfig, None, ["offline=true", "data_split=train[:2000]"]).offline is True
    with pytest.raises(ConfigError, match="unknown key 'dataset_train_split'. Did you mean 'data_split'"):
        load_config(TrainConfig, None, ["dataset_train_split=train"])
