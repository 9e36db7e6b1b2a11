"""Issue 18, errors users can act on: every sub-command, given a typical mistake, exits 2 with exactly one line on
stderr (``alignkit CMD: error: ...``) naming its source; anything outside `AlignkitError` is a bug and keeps its
traceback; config values are blamed where they were set (YAML file:line or the command line)."""

import dataclasses
import json
import logging
import re

import pytest

from alignkit import cli
from alignkit.config import ConfigError, TrainConfig, load_config

PAIR = {"prompt": "The movie was", "chosen": " great.", "rejected": " awful."}


def jsonl(path, *lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def files(tmp):
    """The mistaken inputs: each a file a user could well hand alignkit."""
    out = {
        "good": jsonl(tmp / "good.jsonl", PAIR, PAIR),
        "bad_json": jsonl(tmp / "bad.jsonl", PAIR, '{"prompt": "p", "chosen": "c"'),
        "nan": jsonl(tmp / "nan.jsonl", {"prompt": "p", "completions": ["a", "b"], "scores": [1, 0]},
                     '{"prompt": "p", "completions": ["a", "b"], "scores": [1e999, 0]}'),
        "surrogate": jsonl(tmp / "sur.jsonl", PAIR, '{"prompt": "\\ud800", "chosen": "c", "rejected": "r"}'),
        "empty": jsonl(tmp / "empty.jsonl"),
        "evil": str(tmp / "evil.yaml"),
    }
    (tmp / "quote.csv").write_text('prompt,chosen,rejected\nq0,c0,r0\n"q1 oops,c1,r1\nq2,c2,r2\n')
    out["csv"] = str(tmp / "quote.csv")
    (tmp / "evil.yaml").write_text('model: m\ndata: d\nlr: !!python/object/apply:os.system ["echo pwned"]\n')
    (tmp / "no_run").mkdir()
    return out


# (sub-command, argv with {placeholders}, the error line after "alignkit CMD: error: ")
CASES = [
    ("train", ["train", "model=m", "data=d", "lr=.inf"], "command line 'lr=.inf': key 'lr' must be a finite number, got inf"),
    ("train", ["train", "{evil}"], "{evil}:3: the tag '!!python/object/apply:os.system' is not allowed: alignkit "
                                  "reads configs with yaml.safe_load (plain values only; no Python objects)"),
    ("train", ["train", "model=m", "data=d", "learning_rate=1e-5"],
     "command line 'learning_rate=1e-5': unknown key 'learning_rate'. Did you mean 'lr'?"),
    ("logprobs", ["logprobs", "--model", "m", "--data", "{csv}", "--out", "{tmp}/lp.jsonl"],
     "quote.csv row 2 (line 3): unclosed quote: a quoted cell opened on line 3 never closes (the file ends inside it)"),
    ("generate", ["generate", "--model", "m", "--prompts", "{tmp}/missing.txt", "--out", "{tmp}/g.jsonl"],
     "prompts file {tmp}/missing.txt does not exist"),
    ("score", ["score", "--reward-model", "rm", "--data", "{good}", "--out", "{tmp}/s.jsonl", "--workers", "-1"],
     "--workers must be >= 0, got -1"),
    ("eval-rm", ["eval-rm", "--reward-model", "rm", "--data", "{nan}"],
     "nan.jsonl line 2, field 'scores[0]': 1e999 is outside the float range (it would read as inf)"),
    ("eval", ["eval", "--models", "{tmp}/missing.jsonl", "--out", "{tmp}/ev"],
     "{tmp}/missing.jsonl is neither a model folder nor an outputs file"),
    ("report", ["report", "{tmp}/no_run", "--out", "{tmp}/rep"],
     "{tmp}/no_run: no metrics.jsonl (give a run folder written by `alignkit train`)"),
    ("data convert", ["data", "convert", "{bad_json}", "--out", "{tmp}/c.jsonl"],
     "bad.jsonl line 2: invalid JSON: Expecting ',' delimiter (column 30)"),
    ("data inspect", ["data", "inspect", "{csv}"],
     "quote.csv row 2 (line 3): unclosed quote: a quoted cell opened on line 3 never closes (the file ends inside it)"),
    ("data pairs", ["data", "pairs", "{nan}", "--out", "{tmp}/p.jsonl"],
     "nan.jsonl line 2, field 'scores[0]': 1e999 is outside the float range (it would read as inf)"),
    ("data dedup", ["data", "dedup", "{surrogate}", "--out", "{tmp}/d.jsonl"],
     "sur.jsonl line 2, field 'prompt': not valid Unicode: a lone surrogate \\ud800 at character 1 (no tokenizer "
     "can encode it)"),
    ("data select", ["data", "select", "{tmp}/nope.jsonl", "--out", "{tmp}/s.jsonl", "--fraction", "0.5"],
     "no such file or folder: {tmp}/nope.jsonl"),
    ("data split", ["data", "split", "{empty}"], "empty.jsonl: no valid records in 0 rows"),
    ("data synthesize", ["data", "synthesize", "--model", "{tiny}", "--n", "0", "--out", "{tmp}/m.jsonl"],
     "synthesize: n, k and batch_size must be >= 1, got 0, 1, 16"),
    ("demo", ["demo", "--evaluate", "x", "--out", "{tmp}/no_run"],
     "no demo world in {tmp}/no_run: run `alignkit demo` (or `make demo`) first"),
]


@pytest.mark.parametrize("command, argv, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_typical_mistake_is_one_line(command, argv, message, tmp_path, tiny_path, capfd):
    names = {**files(tmp_path), "tmp": str(tmp_path), "tiny": tiny_path}
    logging.getLogger("alignkit").handlers.clear()  # the console handler writes to this test's stderr
    rc = cli.main([a.format(**names) for a in argv])
    err = capfd.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.splitlines() == [f"alignkit {command}: error: {message.format(**names)}"]


def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch):
    import alignkit.data.tools.commands as commands

    def broken(args):
        raise KeyError("an alignkit bug")  # not a user's mistake: main must not hide it

    monkeypatch.setattr(commands, "convert_command", broken)
    with pytest.raises(KeyError, match="an alignkit bug"):
        cli.main(["data", "convert", "x.jsonl", "--out", "y.jsonl"])


def test_config_values_are_blamed_where_they_were_set(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: m\ndata: d\n\nbatch_size: 0\nlr: 1.0e-5\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, str(cfg))
    assert str(e.value) == f"{cfg}:4: key 'batch_size' must be >= 1, got 0"
    with pytest.raises(ConfigError) as e:  # the file is fine; the override is wrong: blame the command line
        load_config(TrainConfig, str(cfg), ["batch_size=2", "warmup=-1"])
    assert str(e.value) == "command line 'warmup=-1': key 'warmup' must be >= 0, got -1.0"
    assert load_config(TrainConfig, str(cfg), ["batch_size=2"]).batch_size == 2


@pytest.mark.parametrize("text, message", [
    ("model: m\nlr: [1, 2\n", "{cfg}:3: YAML syntax error: expected ',' or ']', but got '<stream end>' (while "
                              "parsing a flow sequence that starts on line 2)"),
    ("model: m\n  lr: 3\n", "{cfg}:2: YAML syntax error: mapping values are not allowed here"),
    ("model: !!python/name:os.system\n", "{cfg}:1: the tag '!!python/name:os.system' is not allowed: alignkit reads "
                                         "configs with yaml.safe_load (plain values only; no Python objects)"),
    ("- a\n- b\n", "{cfg}: a config file must be a mapping of key: value"),
])
def test_yaml_problems_are_one_line_with_file_and_line(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, str(cfg))
    assert str(e.value) == message.format(cfg=cfg)


def test_unknown_key_shows_the_closest_keys_not_all_of_them():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["batch_sise=4"])
    assert str(e.value) == ("command line 'batch_sise=4': unknown key 'batch_sise'. Did you mean 'batch_size' or "
                            "'chunk_size'?")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["zzzz=1"])
    n = len(dataclasses.fields(TrainConfig))  # ~90: never all listed
    assert str(e.value) == f"command line 'zzzz=1': unknown key 'zzzz'. No key of the {n} is close; they are the fields of TrainConfig."


@pytest.mark.parametrize("item", ["lr=.inf", "lr=.nan", "epochs=.inf", "kl_coef=.inf", "value_lr=.inf",
                                  "max_grad_norm=.nan", "beta=.inf", "temperature=-.inf"])
def test_every_float_key_must_be_finite(item):
    with pytest.raises(ConfigError, match=rf"command line '{item}': key '{item.split('=')[0]}' must be "):
        load_config(TrainConfig, None, [item])


@pytest.mark.parametrize("item, path", [("hparams={beta: .nan}", "hparams.beta"),
                                        ("objective=[{name: dpo, beta: .nan}]", "objective[0].beta")])
def test_a_nan_nested_in_a_key_is_named_by_its_path(item, path):
    with pytest.raises(ConfigError, match=rf"command line '{re.escape(item)}': '{re.escape(path)}' is not a number"):
        load_config(TrainConfig, None, [item])
    load_config(TrainConfig, None, ["hparams={cliprange_value: .inf}"])  # an infinity an option gives a meaning
