import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """A tiny Qwen2-style model + BPE tokenizer with a chat template, saved like a real checkpoint."""
    from alignkit.models.tiny import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """A tiny Llama-style model whose tokenizer has no chat template."""
    from alignkit.models.tiny import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny_llama"), arch="llama", chat_template=False, seed=1))


@pytest.fixture(scope="session")
def tiny(tiny_path):
    from alignkit.models.load import load_model, load_tokenizer

    return load_model(tiny_path), load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def pairs_path(tmp_path_factory):
    """32 sentiment pairs in the paired layout (prompt, chosen, rejected)."""
    import json
    import random

    rng = random.Random(0)
    pos, neg = "great good brilliant wonderful fun".split(), "bad awful boring terrible dull".split()
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for _ in range(32):
            subj = rng.choice(["The movie", "The film", "The story", "The plot"])
            row = {"prompt": f"{subj} was", "chosen": f" {rng.choice(pos)}.", "rejected": f" {rng.choice(neg)}."}
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def review_world(tmp_path_factory):
    """The demo's review world at the quick test size: a pretrained tiny model (path) whose outputs have
    a known gold reward (`alignkit.worlds.reviews.reward`). Built once per test session."""
    from alignkit.demo import QUICK
    from alignkit.worlds import reviews

    return str(reviews.build_world(tmp_path_factory.mktemp("review_world") / "world", seed=0, n_corpus=QUICK.n_corpus,
                                   pretrain_epochs=QUICK.pretrain_epochs, hidden_size=QUICK.hidden_size))


@pytest.fixture(scope="module")
def review_model_pair(review_world):
    """(the pretrained review model, a noisy copy of it, the tokenizer), both in eval mode: two models on one
    tokenizer whose greedy reviews differ (the copy's weights moved by 0.02·N(0, 1), seed 0). One per module."""
    import copy

    import torch

    from alignkit.models.load import load_model, load_tokenizer

    model, tok = load_model(review_world), load_tokenizer(review_world)
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval(), other.eval(), tok


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (restored after): tiny models run faster, and samples do not
    depend on the machine's thread count. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _alignkit_logs_reach_caplog(request):
    """alignkit's logger does not propagate to the root logger (its console handler prints once); a test that
    asks for ``caplog`` gets its records anyway, whichever tests ran before it."""
    if "caplog" not in request.fixturenames:
        yield
        return
    import logging

    handler = request.getfixturevalue("caplog").handler
    logger = logging.getLogger("alignkit")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
