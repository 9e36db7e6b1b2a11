"""``alignkit doctor``: what it prints for real tokenizers with tiny random models, its exit status, and the
memory estimate against a measured peak."""

import json
import logging
import shutil
import weakref

import pytest
import torch

from alignkit import cli
from alignkit.doctor import diagnose, render
from alignkit.models.families import FAMILIES, tokenizer_dir

CHAT = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
     "rejected": [{"role": "assistant", "content": "I think it is Lyon."}]},
    {"prompt": [{"role": "user", "content": "Name a prime number."}],
     "chosen": [{"role": "assistant", "content": "Seven."}], "rejected": [{"role": "assistant", "content": "Nine."}]},
]
real_tokenizers = pytest.mark.skipif(tokenizer_dir() is None, reason="the vendored real tokenizers are not here")


@pytest.fixture(autouse=True)
def console_on_this_tests_stderr(monkeypatch):
    """alignkit's console handler, if an earlier test set one up, writes to that test's closed stream."""
    monkeypatch.setattr(logging.getLogger("alignkit"), "handlers", [])


@pytest.fixture(scope="module")
def chat_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("doctor") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    return str(path)


def config_only(family: str, path):
    """A family's config (its real vocabulary size) and real tokenizer in one folder, no weights: all that
    doctor reads without --load-weights (save_family would also write the random weights)."""
    import transformers

    from alignkit.models.families import _config_kwargs

    spec = FAMILIES[family]
    path.mkdir()
    for f in tokenizer_dir(spec.tokenizer).iterdir():
        shutil.copyfile(f, path / f.name)
    getattr(transformers, spec.config_class)(**_config_kwargs(spec, spec.vocab_size, {})).save_pretrained(path)
    return path


def screen(argv, capsys) -> tuple[int, list[str]]:
    code = cli.main(["doctor", *argv])
    return code, capsys.readouterr().out.splitlines()


COMMON = {
    "lora": "  lora        all-linear -> down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj "
            "(0.01M trainable at r=8)",
    "positions": "✓ positions   max_length 512 <= 512 positions",
    "data": "  data        chat.jsonl: 2 records; detected layout 'paired' from columns prompt, chosen, rejected",
}
EXPECTED = {
    "qwen2": [
        "  family      qwen2 · Qwen2ForCausalLM · 4.9M parameters (tied embeddings)",
        "✓ tokenizer   Qwen2Tokenizer: 151,665 tokens, embedding 151,936 rows",
        "✓ chat        template present (2,507 characters)",
        "✓ special     bos none  eos '<|im_end|>' (151645)  pad '<|endoftext|>' (151643)",
        "  attention   sdpa: Qwen2ForCausalLM supports torch SDPA; SDPA and eager take the block mask, "
        "flash-attention cannot (padded rows)",
        "  windows     full attention on every layer",
        "✓ layout      shared-prompt packing: a prompt once, its responses behind a block mask (padded rows where "
        "cheaper)",
        COMMON["lora"], COMMON["positions"], COMMON["data"],
        "✓   record 1  prompt 36 + completion 8 tokens: …?<|im_end|>\\n<|im_start|>assistant\\n│Paris is the capital "
        "of France.<|im_end|>",
        "✓   record 2  prompt 34 + completion 3 tokens: ….<|im_end|>\\n<|im_start|>assistant\\n│Seven.<|im_end|>",
    ],
    "gemma2": [
        "  family      gemma2 · Gemma2ForCausalLM · 8.4M parameters (tied embeddings)",
        "✓ tokenizer   GemmaTokenizer: 262,145 tokens, embedding 262,208 rows",
        "✓ chat        template present (1,532 characters)",
        "✓ special     bos '<bos>' (2)  eos '<eos>' (1)  pad '<pad>' (0)",
        "  attention   eager: Gemma2ForCausalLM does not support SDPA; SDPA and eager take the block mask, "
        "flash-attention cannot (padded rows)",
        "  windows     sliding_attention: window 8 (1 of 2 layers); full_attention: full (1 of 2 layers)",
        "✓ layout      shared-prompt packing: a prompt once, its responses behind a block mask + windows (padded "
        "rows where cheaper)",
        COMMON["lora"], COMMON["positions"], COMMON["data"],
        "✓   record 1  prompt 16 + completion 8 tokens: …?<end_of_turn>\\n<start_of_turn>model\\n│Paris is the "
        "capital of France.<end_of_turn>",
        "✓   record 2  prompt 14 + completion 3 tokens: ….<end_of_turn>\\n<start_of_turn>model\\n│Seven.<end_of_turn>",
    ],
}


@real_tokenizers
@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_doctor_screen_for_two_families(family, chat_path, tmp_path, capsys):
    """Qwen2.5's tokenizer on a Qwen2 model (SDPA, full attention); Gemma's on Gemma-2 (eager: no SDPA for
    soft-capping; alternating sliding windows). The Gemma boundary shows the <eos> appended after
    <end_of_turn>\\n, which data/tokenize.py's end-of-turn work is to change."""
    path = config_only(family, tmp_path / family)
    code, lines = screen([str(path), "--data", chat_path], capsys)
    assert code == 0
    assert lines[0] == f"alignkit doctor {path}"
    assert lines[1:13] == EXPECTED[family]
    assert lines[13].startswith("  memory      peak of one DPO step on a GPU, estimated (alignkit.models.memory): "
                                "batch 8 x 2 x 512 tokens, float32 weights, bf16 autocast")
    assert lines[-1] == "✓ nothing found that would stop a run"


def test_doctor_load_weights_checks_the_executor(tiny_path, capsys):
    code, lines = screen([tiny_path, "--load-weights"], capsys)
    assert code == 0
    executor = next(line for line in lines if "executor" in line)
    assert executor.startswith("✓ executor    matches the model's own forward on the longest of 1 record(s): shared_prompt: |diff| ")
    assert "; padded: |diff| " in executor


def test_doctor_reads_no_weights_of_a_hub_model(monkeypatch, tiny_path):
    """Without --load-weights a Hub id resolves to configs and tokenizer files only."""
    import huggingface_hub
    from huggingface_hub import constants

    from alignkit.models import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []
    info = type("Info", (), {"siblings": [type("S", (), {"rfilename": "model.safetensors"})()]})()
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda api, repo, **kw: info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append((repo, kw)) or tiny_path)
    hub.clear_cache()
    try:
        d = diagnose("Qwen/Qwen2.5-0.5B-Instruct")
    finally:
        hub.clear_cache()
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", {"allow_patterns": hub.CONFIG_PATTERNS})]
    assert render(d).splitlines()[0] == f"alignkit doctor Qwen/Qwen2.5-0.5B-Instruct  ({tiny_path})"


def test_doctor_exit_status_names_what_would_fail(tiny_path, tmp_path, capsys):
    """A tokenizer of 512 tokens beside an embedding of 256 rows, with neither pad nor eos, and a max_length
    beyond the 1024 positions: three failures, exit status 1."""
    from transformers import AutoConfig, AutoTokenizer

    broken = tmp_path / "broken"
    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.pad_token, tok.eos_token = None, None
    tok.save_pretrained(broken)
    config = AutoConfig.from_pretrained(tiny_path)
    config.vocab_size, config.pad_token_id, config.eos_token_id = 256, None, None
    config.save_pretrained(broken)
    code, lines = screen([str(broken), "--max-length", "4096"], capsys)
    assert code == 1
    assert lines[2] == ("✗ tokenizer   Qwen2Tokenizer: 512 tokens, embedding 256 rows; token ids up to 511 do "
                        "not fit: use the model's own tokenizer, or resize the embeddings "
                        "(model.resize_token_embeddings) before training")
    assert lines[4] == "✗ special     bos none  eos none  pad none: no pad and no eos; add a pad token to the tokenizer and save it"
    # training lowers max_length to the limit (with a warning), so doctor warns rather than fails
    assert lines[9] == ("! positions   max_length 4096 is beyond the model's 1,024 positions (max_position_embeddings): "
                        "training cuts sequences at 1,024; set max_length <= 1024 to keep this")
    assert lines[-1] == "✗ 2 problem(s): tokenizer; special"


def test_doctor_chat_data_without_a_template_fails(tiny_llama_path, chat_path, capsys):
    code, lines = screen([tiny_llama_path, "--data", chat_path], capsys)
    assert code == 1
    assert "! chat        no chat template: plain-text prompts only (chat data needs one: use an -Instruct/-chat " \
           "tokenizer)" in lines
    record = next(line for line in lines if "record 1" in line)
    assert record.startswith("✗   record 1  ") and "no chat template" in record
    assert lines[-1] == "✗ 1 problem(s): record 1"


def test_doctor_missing_model_is_one_line_exit_2(capsys):
    assert cli.main(["doctor", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alignkit doctor: error: model '/nonexistent/model': no such folder (/nonexistent/model); it can "
                   "only be a local path (it starts with '/'), so neither the Hugging Face cache nor the Hub was "
                   "tried; pass the folder that holds config.json and the weights, or a Hub id such as "
                   "Qwen/Qwen2.5-0.5B-Instruct"]


class PeakBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the tensor storages alive, and their peak: every storage an op creates, plus those registered
    with `track` (parameters, optimizer state), counted until the storage is freed."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or key in self.live:
            return
        self.live[key] = n
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            self.track(t)
        return out


def test_memory_estimate_is_within_a_factor_of_1_5_of_the_measured_peak(tiny_path, tmp_path):
    """One full fine-tuning DPO step of the tiny model on CPU (fp32, padded rows, every response at max_length)
    against `estimate_training_memory` with the same settings: measured / estimated in [1/1.5, 1.5]
    (0.76 when written: the estimate counts every token, prompt tokens included, as a response token)."""
    import random

    from transformers import AutoConfig

    from alignkit.config import TrainConfig
    from alignkit.engine.trainer import Trainer
    from alignkit.executor.logprobs import auto_chunk_size
    from alignkit.models.memory import estimate_training_memory

    rng = random.Random(0)
    words = "the a movie film plot was great bad good awful story fun dull and or it is".split()
    data = tmp_path / "long.jsonl"
    with data.open("w") as f:
        for _ in range(8):  # prompts and responses longer than max_length: every sequence is cut to it
            prompt, chosen, rejected = (" ".join(rng.choice(words) for _ in range(150)) for _ in range(3))
            f.write(json.dumps({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected}) + "\n")
    batch, length = 4, 256
    trainer = Trainer(TrainConfig(model=tiny_path, data=str(data), batch_size=batch, max_length=length, max_steps=2,
                                  packing="padded", verify_logprobs=False, progress=False, output_dir=str(tmp_path / "run")))
    trainer.step()  # AdamW's moments exist from here on
    peak = PeakBytes()
    for p in trainer.policy.parameters():
        peak.track(p)
    for state in trainer.optimizer.state.values():
        for value in state.values():
            peak.track(value)
    with peak:
        trainer.step()
    config = AutoConfig.from_pretrained(tiny_path)
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    estimate = estimate_training_memory(config, n_params, 0, batch, length, autocast_16bit=False, packed=False,
                                        chunk_rows=auto_chunk_size(config.vocab_size, torch.device("cpu"))).full()
    assert 1 / 1.5 <= peak.peak / estimate <= 1.5, (peak.peak, estimate)
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
