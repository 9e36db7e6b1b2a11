"""`alignkit ... --help` documents everything: every subcommand and option has help, `train --help` lists
every config key (read from `TrainConfig`'s source), `generate --help` every registered inference method,
`data inspect --out` what inspect really writes, and `alignkit --version` the package version."""

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest

from alignkit import __version__, cli
from alignkit.config import TrainConfig
from alignkit.config_help import config_keys, format_keys

ROOT = Path(__file__).resolve().parents[1]


def subparsers(parser, path=()):
    """(command path, parser, help of the command) for every (sub)command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from subparsers(sub, (*path, name))


def test_every_subcommand_and_every_option_has_help():
    parser = cli.build_parser()
    commands = list(subparsers(parser))
    assert len(commands) == 18  # 11 commands + 7 data subcommands: a new one is checked as well
    missing = [" ".join(path) for path, _, text in commands if not (text or "").strip()]
    for path, sub, _ in [((), parser, None), *commands]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(" ".join((*path, "/".join(action.option_strings) or action.dest)))
    assert missing == []


def test_every_config_key_has_a_group_and_a_help_line_from_the_class_source():
    keys = config_keys()
    assert [k.name for k in keys] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert [k.name for k in keys if not k.help or not k.group] == []
    by_name = {k.name: k for k in keys}
    # the comments of config.py, as written there
    assert (by_name["lr"].group, by_name["lr"].default, by_name["lr"].help) == ("optimisation", 5e-6,
                                                                                 "peak learning rate of AdamW")
    assert by_name["ref_cache"].help.startswith("auto | on | off (YAML true/false too)")
    assert by_name["transforms"].default == [] and by_name["data"].group == "data"


def test_train_help_lists_the_keys_by_group_one_line_each(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert format_keys() in text
    lines = text.split("config keys", 1)[1].splitlines()
    for k in config_keys():
        matching = [line for line in lines if re.match(rf"  {k.name} +\S", line)]
        assert len(matching) == 1 and matching[0].endswith(k.help), k.name
    groups = [line[:-1] for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert groups[:3] == ["what to train", "data",
                          "online training (algorithms/online.py): sample from the policy each step, score, learn"]
    assert len(groups) == len(dict.fromkeys(k.group for k in config_keys())) == 11


def test_generate_help_lists_every_registered_method_including_a_new_one(capsys):
    from alignkit.inference.base import METHODS, builtin_methods, register

    @dataclasses.dataclass
    class Options:
        width: int = 3

    register("zz_help_probe", Options, needs_reward=True, summary="a probe registered by the test")(lambda *a, **k: [])
    try:
        with pytest.raises(SystemExit):
            cli.main(["generate", "--help"])
    finally:
        del METHODS["zz_help_probe"]
    text = capsys.readouterr().out
    names = sorted(builtin_methods())
    assert len(names) == 13
    for name in [*names, "zz_help_probe"]:
        assert re.search(rf"^  {name} +\S", text, re.M), name
    assert re.search(r"^  zz_help_probe +a probe registered by the test \[needs --reward\]\n +--set width=3$", text, re.M)
    assert "--set n=16 unfinished_penalty=null m=0 t=.inf" in text  # calibrated_bon's options, as --set takes them


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"alignkit {__version__}\n"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == __version__


def test_inspect_out_help_names_what_inspect_writes(tmp_path, capsys):
    data = tmp_path / "lists.jsonl"
    rows = [{"prompt": "p1", "completions": ["a b", "c"], "scores": [1.0, 0.0]},
            {"prompt": "p2", "completions": ["d", "e f g"], "scores": [0.0, 2.0]}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["data", "inspect", str(data), "--out", str(tmp_path / "insp")]) == 0
    written = sorted(p.name for p in (tmp_path / "insp").iterdir())
    assert written == ["inspection.json", "prompt_lengths.png", "response_lengths.png", "scores.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["data", "inspect", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in written:
        assert name in help_text
    assert "folder for inspection.json" in help_text and "output file" not in help_text
