"""Executor extras for non-pair objectives (KTO's mismatched KL completions, preference-tree shared
prefixes) and the reference cache's identity: file digests, explicit cache files, stale caches refused."""

import json
import shutil

import pytest
import torch

from alignkit.config import TrainConfig
from alignkit.data.dataset import TokenizedDataset, mismatched_partners, prompt_key
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig
from alignkit.engine.score import score_logps
from alignkit.engine.trainer import Trainer
from alignkit.executor.logprobs import LogProbModel, build_stats


def unpaired(n=6):
    prompts = ["The movie was", "The film was", "The plot was"]
    words = [" great.", " awful.", " fun.", " dull.", " good.", " bad."]
    return [PreferenceRecord(prompt=prompts[i % 3], responses=[words[i % 6]], labels=[i % 2 == 0]) for i in range(n)]


def test_mismatched_partners_pair_every_record_with_another_prompt():
    records = unpaired(9)
    partners = mismatched_partners(records, seed=3)
    assert partners == mismatched_partners(records, seed=3)  # seeded
    for i, j in enumerate(partners):
        assert prompt_key(records[i]) != prompt_key(records[j])
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_partners([PreferenceRecord(prompt="a", responses=["b"], labels=[True])] * 3, 0)


def test_kl_logratios_are_the_mismatched_pairs_log_ratios(tiny):
    model, tok = tiny
    records = unpaired(6)
    data = TokenizedDataset.build(records, tok, TokenizeConfig(), extras=("kl_logratios",), seed=1)
    partners = mismatched_partners(records, seed=1)
    assert data.slots == 2 and data.k_range == (1, 1)
    for layout in ("shared_prompt", "padded"):
        batch = data.collate(list(range(6)), tok.pad_token_id, layout, 256)
        with torch.no_grad():
            token_logps = LogProbModel(model)(batch)
        ref = torch.full((6, 2), -1.0)  # a constant reference: kl = s - (-1)
        stats = build_stats(batch, token_logps, ref_logps=ref)
        assert stats.logps.shape == (6, 1) and stats.labels.shape == (6, 1)
        own = score_logps(model, tok, [r.prompt for r in records], [r.responses for r in records])
        torch.testing.assert_close(stats.logps, own.to(stats.logps.dtype), atol=1e-5, rtol=1e-5)
        cross = score_logps(model, tok, [r.prompt for r in records], [[records[j].responses[0]] for j in partners])
        torch.testing.assert_close(stats.extra["kl_logratios"], cross[:, 0].to(stats.logps.dtype) + 1.0,
                                   atol=1e-5, rtol=1e-5)
        assert not stats.extra["kl_logratios"].requires_grad


def test_shared_tokens_count_the_common_step_prefix(tiny):
    _, tok = tiny
    tree = PreferenceRecord(prompt="Q: plan", responses=[" step one. step two.", " step one. step three.", " other."],
                            ranks=[0, 1, 2])
    data = TokenizedDataset.build([tree], tok, TokenizeConfig(), extras=("shared_tokens",))
    tr = data.items[0]
    a, b, c = (tr.completion_ids(k) for k in range(3))
    n = tr.shared[0]
    assert n == tr.shared[1] > 0 and a[:n] == b[:n] and a[n] != b[n]
    assert tr.shared[2] == 0
    batch = data.collate([0], tok.pad_token_id, "shared_prompt", 256)
    assert batch.extra["shared_tokens"].tolist() == [[float(n), float(n), 0.0]]


def cfg(tiny_path, pairs_path, out, **kw):
    base = dict(model=tiny_path, data=pairs_path, objective="dpo", beta=0.5, batch_size=4, max_steps=3, lr=1e-3,
                output_dir=str(out), progress=False, seed=0, ref_cache="on")
    base.update(kw)
    return TrainConfig(**base)


def test_cache_file_from_logprobs_cli_trains_without_any_reference(tiny_path, pairs_path, tmp_path, monkeypatch):
    import alignkit.engine.trainer as trainer_mod
    from alignkit import cli

    out = tmp_path / "ref.safetensors"
    assert cli.main(["logprobs", "--model", tiny_path, "--data", pairs_path, "--out", str(out), "--cache"]) == 0
    auto = Trainer(cfg(tiny_path, pairs_path, tmp_path / "auto")).train().history

    def no_reference(*a, **k):
        raise AssertionError("a cache hit must not build a reference")

    monkeypatch.setattr(trainer_mod, "build_reference", no_reference)
    hist = Trainer(cfg(tiny_path, pairs_path, tmp_path / "file", ref_cache_file=str(out))).train().history
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in auto], abs=1e-6)


def test_stale_cache_file_is_refused_with_the_reason(tiny_path, pairs_path, tmp_path):
    from alignkit import cli

    out = tmp_path / "ref.safetensors"
    assert cli.main(["logprobs", "--model", tiny_path, "--data", pairs_path, "--out", str(out), "--cache",
                     "--max-length", "3"]) == 0
    with pytest.raises(ValueError, match="token ids differ"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", ref_cache_file=str(out)))
    other = tmp_path / "other_model"
    shutil.copytree(tiny_path, other)
    from alignkit.models.load import load_model

    m = load_model(str(other))
    with torch.no_grad():
        m.lm_head.weight.mul_(1.01) if not m.config.tie_word_embeddings else m.model.embed_tokens.weight.mul_(1.01)
    m.save_pretrained(other)
    assert cli.main(["logprobs", "--model", str(other), "--data", pairs_path, "--out", str(out), "--cache"]) == 0
    with pytest.raises(ValueError, match="reference weights differ"):
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", ref_cache_file=str(out)))
    assert cli.main(["train", f"model={tiny_path}", f"data={pairs_path}", f"ref_cache_file={out}",
                     f"output_dir={tmp_path / 'c'}", "progress=false", "max_steps=1"]) == 2


def test_reference_checkpoint_is_not_loaded_on_a_cache_hit(tiny_path, pairs_path, tmp_path, monkeypatch):
    import alignkit.engine.reference as reference

    ref_dir = tmp_path / "ref"
    shutil.copytree(tiny_path, ref_dir)
    first = Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", ref_model=str(ref_dir),
                        ref_cache_dir=str(tmp_path / "cache")))
    loaded = []
    monkeypatch.setattr(reference, "load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(
        AssertionError("loaded")))
    again = Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", ref_model=str(ref_dir),
                        ref_cache_dir=str(tmp_path / "cache")))
    assert not loaded
    idx = list(range(8))
    b = first.train_data.collate(idx, first.tokenizer.pad_token_id, "padded", 256)
    torch.testing.assert_close(again.reference.sequence_logps(b), first.reference.sequence_logps(b))


def test_config_transforms_and_curriculum_order(tiny_path, tmp_path):
    rows = [{"prompt": f"Item {i} is", "responses": [" good.", " bad.", " fine."], "scores": [i, 0.0, i / 2]}
            for i in range(1, 9)]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = Trainer(TrainConfig(model=tiny_path, data=str(path), objective="dpo", batch_size=2, max_steps=2,
                            output_dir=str(tmp_path / "run"), progress=False,
                            transforms=[{"name": "pairs", "strategy": "best_vs_worst"},
                                        {"name": "curriculum", "stages": 2}]))
    assert all(r.k == 2 for r in t.train_data.records)
    assert not t.order.shuffle and t.order.indices(0) == [0, 1]
    margins = [r.meta["margin"] for r in t.train_data.records]
    assert margins[0] >= margins[-1]  # easy (large gap) first


def test_ref_cache_off_from_an_override_or_a_yaml_file_is_off(tiny_path, pairs_path, tmp_path):
    from alignkit.config import load_config, resolve
    from alignkit.engine.refcache import CachedReference

    c = load_config(TrainConfig, None, [f"model={tiny_path}", f"data={pairs_path}", "ref_cache=off",
                                        f"output_dir={tmp_path}", "progress=false"])
    assert c.ref_cache == "off"  # an override keeps the word
    (tmp_path / "c.yaml").write_text("ref_cache: off\n")  # a YAML file reads it as false: resolved to the word
    assert load_config(TrainConfig, str(tmp_path / "c.yaml")).ref_cache == "off"
    assert TrainConfig(ref_cache=True).ref_cache is True and resolve(TrainConfig(ref_cache=True)).ref_cache == "on"
    t = Trainer(c)
    assert not isinstance(t.reference, CachedReference) and t.config.ref_cache == "off"


def test_cache_refusal_names_the_setting_that_changed_the_records(tiny_path, pairs_path, tmp_path):
    """configs/dpo.yaml holds out eval_split=0.05: a cache of the whole file then covers more records than the
    run trains on; the refusal says that eval_split did it (the cache stores the settings that shape records)."""
    from alignkit import cli
    from alignkit.errors import ConfigError

    out = tmp_path / "ref.safetensors"
    assert cli.main(["logprobs", "--model", tiny_path, "--data", pairs_path, "--out", str(out), "--cache"]) == 0
    with pytest.raises(ConfigError) as e:
        Trainer(cfg(tiny_path, pairs_path, tmp_path / "a", ref_cache_file=str(out), eval_split=0.25))
    assert "the number of records differs (cache: 32, this run: 23)" in str(e.value)
    assert ("settings that shape the records and differ: eval_split (cache: 0.0, this run: 0.25) -- eval_split=0.25 "
            "holds part of `data` out for evaluation") in str(e.value)
    assert "max_length" not in str(e.value).split("settings that shape")[1]  # both lowered to the position limit
    Trainer(cfg(tiny_path, pairs_path, tmp_path / "b", ref_cache_file=str(out)))  # eval_split=0: accepted
