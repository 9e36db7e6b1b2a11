"""The resolved config (alignkit/config.py): an explicit mode, every word-valued key checked where it was set,
one spelling per value, frozen, and the run folder's config.yaml is exactly what the run used."""

import dataclasses

import pytest
import yaml

from alignkit.config import CHOICES, ConfigError, TrainConfig, load_config, resolve, run_mode


@pytest.mark.parametrize("keys, mode", [
    ({}, "offline"), ({"prompts": "p.txt"}, "online"), ({"prompts": "p.txt", "rounds": 2}, "iterative"),
    ({"mode": "online", "prompts": "p.txt"}, "online"),
])
def test_auto_mode_is_what_the_keys_say_and_the_resolved_config_names_it(keys, mode):
    config = TrainConfig(**keys)
    assert run_mode(config) == mode
    resolved = resolve(config)
    assert resolved.mode == mode and resolve(resolved) == resolved  # resolving twice changes nothing
    assert dataclasses.replace(resolved, mode=config.mode) == config  # nothing else changed


@pytest.mark.parametrize("overrides, message", [
    (["mode=offline", "prompts=p.txt"], "command line 'prompts=p.txt': 'prompts' is set but mode is offline"),
    (["mode=offline", "rounds=2"], "command line 'rounds=2': 'rounds' is set but mode is offline"),
    (["mode=online"], "command line: mode=online needs prompts=FILE"),
    (["mode=online", "prompts=p.txt", "rounds=1"], "command line 'rounds=1': mode=online takes no rounds"),
    (["mode=iterative", "prompts=p.txt"], "command line: mode=iterative needs rounds >= 1"),
])
def test_an_explicit_mode_that_the_keys_contradict_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, overrides)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_word_valued_key_is_checked_where_it_was_set(key, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"lr: 1.0e-5\n{key}: nonsense\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, str(path))
    assert str(e.value).startswith(f"{path}:2: key '{key}' must be ")
    assert str(e.value).endswith("got 'nonsense'")


def test_shuffle_takes_one_spelling_of_each_bool():
    assert load_config(TrainConfig, None, ["shuffle=yes"]).shuffle is True
    assert load_config(TrainConfig, None, ["shuffle=false"]).shuffle is False
    assert load_config(TrainConfig, None, ["shuffle=auto"]).shuffle == "auto"
    with pytest.raises(ConfigError, match="key 'shuffle' must be auto, true or false, got 'sometimes'"):
        load_config(TrainConfig, None, ["shuffle=sometimes"])


def test_reference_keys_that_need_another_key():
    with pytest.raises(ConfigError, match="ref_strategy=path needs ref_model=PATH"):
        resolve(TrainConfig(ref_strategy="path"))
    with pytest.raises(ConfigError, match="ref_strategy=disable_adapters needs lora=true"):
        resolve(TrainConfig(ref_strategy="disable_adapters"))
    with pytest.raises(ConfigError, match="ref_cache_file is set but ref_cache=off"):
        resolve(TrainConfig(ref_cache=False, ref_cache_file="x.safetensors"))


def test_the_config_is_frozen():
    config = resolve(TrainConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


def test_the_run_folder_records_the_resolved_config(tiny_path, pairs_path, tmp_path):
    from alignkit import train

    out = tmp_path / "run"
    train({"model": tiny_path, "data": pairs_path, "max_steps": 1, "batch_size": 2, "progress": False,
           "output_dir": str(out), "ref_cache": True, "shuffle": "auto"})
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["mode"], saved["ref_cache"], saved["shuffle"]) == ("offline", "on", "auto")
