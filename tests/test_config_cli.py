"""Config files, key=value overrides and their errors; the CLI end to end (in-process)."""

import json

import pytest
import yaml

from alignkit.cli import main
from alignkit.config import ConfigError, TrainConfig, load_config, parse_overrides


def test_overrides_are_parsed_as_yaml_scalars_not_eval():
    got = parse_overrides(["beta=0.1", "lora=true", "max_steps=50", "objective=[{name: dpo}, {name: sft, weight: 0.1}]",
                           "output_dir=runs/x", "ref_model=null"])
    assert got == {"beta": 0.1, "lora": True, "max_steps": 50, "objective": [{"name": "dpo"}, {"name": "sft", "weight": 0.1}],
                   "output_dir": "runs/x", "ref_model": None}
    assert parse_overrides(["model=__import__('os')"]) == {"model": "__import__('os')"}  # a string, never evaluated


def test_yaml_file_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"objective": "ipo", "beta": 0.2, "lr": 1e-5, "batch_size": 4}))
    c = load_config(TrainConfig, str(path), ["beta=0.3", "lr=2"])
    assert (c.objective, c.beta, c.lr, c.batch_size) == ("ipo", 0.3, 2.0, 4)
    assert isinstance(c.lr, float)  # an int given for a float key is accepted as a float


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rat'.*Did you mean") as e:
        load_config(TrainConfig, None, ["learning_rat=0.1"])
    assert str(e.value) == "command line 'learning_rat=0.1': unknown key 'learning_rat'. Did you mean 'lr'?"
    with pytest.raises(ConfigError, match=r"unknown key 'bta'. Did you mean 'beta'"):
        load_config(TrainConfig, None, ["bta=0.1"])


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'batch_size' must be int, got 'eight'"):
        load_config(TrainConfig, None, ["batch_size=eight"])
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(TrainConfig, str(path))


def test_yaml_1_1_boolean_words_stay_words_unless_the_key_takes_bools(tmp_path):
    # YAML 1.1 reads no / off / yes / on as booleans; an override keeps the word the user typed
    config = load_config(TrainConfig, overrides=["mixed_precision=no", "ref_cache=off", "output_dir=on", "lora=yes",
                                                 "progress=off", "verify_logprobs=false"])
    assert (config.mixed_precision, config.ref_cache, config.output_dir) == ("no", "off", "on")
    assert config.lora is True and config.progress is False and config.verify_logprobs is False
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\nlora: yes\n")  # a file: yaml.safe_load's False becomes the word back
    config = load_config(TrainConfig, str(path))
    assert config.mixed_precision == "no" and config.lora is True


def test_cli_errors_are_one_line_messages(tiny_path, pairs_path, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["train", f"model={tiny_path}", f"data={pairs_path}", "bta=0.1"]) == 2
    assert "unknown key 'bta'. Did you mean 'beta'?" in capsys.readouterr().err
    assert main(["train", f"model={tiny_path}", f"data={pairs_path}", "objective=dpoo"]) == 2
    assert "Did you mean 'dpo'?" in capsys.readouterr().err
    assert main(["train", f"model={tiny_path}", f"data={pairs_path}", "objective=simpo", "hparams={gama: 1}"]) == 2
    assert "gamma" in capsys.readouterr().err


def test_cli_train_yaml_resume_and_logprobs(tiny_path, pairs_path, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({"objective": "dpo", "beta": 0.5, "model": tiny_path, "data": pairs_path,
                                   "batch_size": 4, "lr": 1e-3, "output_dir": str(out), "progress": False}))
    assert main(["train", str(cfg), "max_steps=4", "save_every=2"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 4 and saved["beta"] == 0.5
    # Resume the finished run for two more steps: it continues from step 4 (a longer schedule is a change of
    # result, so it is asked for by name)
    assert main(["train", str(out / "config.yaml"), "max_steps=6", "resume_from=latest"]) == 2
    assert main(["train", str(out / "config.yaml"), "max_steps=6", "resume_from=latest",
                 "resume_override=max_steps"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    lp = tmp_path / "lp.jsonl"
    assert main(["logprobs", "--model", str(out / "final"), "--data", pairs_path, "--out", str(lp)]) == 0
    rows = [json.loads(x) for x in lp.read_text().splitlines()]
    assert len(rows) == 64 and rows[0]["id"] == 0 and rows[1]["response_index"] == 1
    assert all(r["logp"] < 0 and r["n_tokens"] >= 2 for r in rows)


def test_bad_rows_stop_with_file_line_field_or_are_skipped_next_to_the_run(tiny_path, pairs_path, tmp_path, capsys):
    lines = open(pairs_path).read().splitlines()
    bad = json.loads(lines[2])
    bad["chosen"] = ""
    lines[2] = json.dumps(bad)
    lines[5] = "{not json"
    data = tmp_path / "dirty.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    common = ["train", f"model={tiny_path}", f"data={data}", "max_steps=1", "batch_size=4", f"output_dir={out}",
              "progress=false"]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "dirty.jsonl line 3" in err and "'chosen'" in err
    assert main([*common, "on_bad_row=skip"]) == 0
    rejects = [json.loads(x) for x in (out / "train.dirty.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [(3, "empty_field"), (6, "bad_json")]


def test_cli_logprobs_equal_a_naive_transformers_forward(tiny_llama_path, tmp_path):
    """`alignkit logprobs` on a Llama-style checkpoint (no chat template) against logits.log_softmax gathered."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "ranked.jsonl"
    rows = [{"id": "r1", "prompt": "Answer: ", "completions": ["yes", " no", "the movie was great"], "ranks": [0, 1, 2]},
            {"id": "r2", "prompt": "The mov", "completions": ["ie was fun", " x"], "ranks": [1, 0]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "lp.jsonl"
    assert main(["logprobs", "--model", tiny_llama_path, "--data", str(data), "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["id"], g["response_index"]) for g in got] == [("r1", 0), ("r1", 1), ("r1", 2), ("r2", 0), ("r2", 1)]
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    g = iter(got)
    for row in rows:
        for completion in row["completions"]:
            prompt_ids = tok(row["prompt"])["input_ids"]
            full = tok(row["prompt"] + completion)["input_ids"] + [tok.eos_token_id]
            start = next(i for i, (a, b) in enumerate(zip(prompt_ids + [-1], full)) if a != b)
            with torch.no_grad():
                lp = model(torch.tensor([full])).logits.double().log_softmax(-1)[0]
            naive = sum(lp[t - 1, full[t]].item() for t in range(start, len(full)))
            rec = next(g)
            assert rec["n_tokens"] == len(full) - start
            assert abs(rec["logp"] - naive) < 2e-5


@pytest.mark.parametrize("override,message", [
    ("batch_size=0", "key 'batch_size' must be >= 1, got 0"),
    ("grad_accum=0", "key 'grad_accum' must be >= 1, got 0"),
    ("max_bad_steps=0", "key 'max_bad_steps' must be >= 1"),
    ("eval_split=1", "key 'eval_split' must be in [0, 1)"),
    ("lr=-1", "key 'lr' must be > 0"),
    ("max_steps=0", "key 'max_steps' must be >= 1, or -1"),
])
def test_out_of_range_values_name_the_key_and_the_rule(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, [override])
    assert message in str(e.value)


def test_beta_in_two_places_is_an_error():
    with pytest.raises(ConfigError, match="'beta' is set both at the top level and in hparams"):
        load_config(TrainConfig, None, ["beta=0.1", "hparams={beta: 0.2}"])


def test_resume_after_a_crash_keeps_one_metrics_line_per_step(tiny_path, pairs_path, tmp_path):
    from alignkit.engine.trainer import Trainer

    out = tmp_path / "run"
    base = dict(model=tiny_path, data=pairs_path, batch_size=4, max_steps=5, output_dir=str(out), progress=False,
                save_every=2)
    first = Trainer(TrainConfig(**base))
    step = first.step

    def crash_after_three():
        rec = step()
        if rec["step"] == 3:
            raise KeyboardInterrupt("killed")
        return rec

    first.step = crash_after_three
    with pytest.raises(KeyboardInterrupt):
        first.train()
    lines = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2]  # step 3 never finished logging
    Trainer(TrainConfig(**base, resume_from="latest")).train()
    lines = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 5]


def test_python_api_from_the_readme(tiny_path, pairs_path, tmp_path):
    import alignkit

    result = alignkit.train({"objective": "dpo", "beta": 0.1, "model": tiny_path, "data": pairs_path,
                             "batch_size": 8, "max_steps": 2, "lr": 1e-3, "output_dir": str(tmp_path / "dpo"),
                             "progress": False})
    assert result.final_dir == tmp_path / "dpo" / "final"
    assert [h["step"] for h in result.history] == [1, 2]
    assert 0.0 <= result.history[-1]["rewards/accuracy"] <= 1.0
    assert isinstance(alignkit.Trainer, type) and alignkit.TrainConfig().objective == "dpo"
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'. Did you mean 'lr'"):
        alignkit.train({"learning_rate": 0.1})
