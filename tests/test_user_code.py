"""Issue 18, code named in configs: ``reward=module:function`` and ``rule:module:function`` judges resolve from the
current directory as ``python -m`` would, standard-library modules are refused in one line, and the resolved file
(with its sha256) is logged and recorded in the run folder as code.json."""

import hashlib
import json
import logging
import sys

import pytest

from alignkit import cli
from alignkit.config import ConfigError
from alignkit.rewards.functions import build_reward
from alignkit.user_code import collect, record

SCORER = "def score(completion):\n    return float(len(completion))\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's folder holding myrewards.py, as the current directory, with sys.path as the `alignkit` console
    script has it: its own bin/ folder first, not the current directory."""
    (tmp_path / "myrewards.py").write_text(SCORER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["/nonexistent/bin"] + [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "myrewards", raising=False)
    return tmp_path


def test_reward_module_resolves_from_the_current_directory(project, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"), collect() as refs:
        fn = build_reward("myrewards:score")
    assert fn(["p", "q"], ["ab", "abcd"], [{}, {}]) == [2.0, 4.0]
    digest = hashlib.sha256(SCORER.encode()).hexdigest()
    assert [(r.role, r.spec, r.module, r.function, r.file, r.line, r.sha256) for r in refs] == [
        ("reward", "myrewards:score", "myrewards", "score", str(project / "myrewards.py"), 1, digest)]
    assert f"reward myrewards:score: {project / 'myrewards.py'}:1 (sha256 {digest[:16]})" in caplog.text
    assert str(project) not in sys.path  # put first only while importing


def test_the_run_folder_records_which_code_scored_it(project):
    with collect() as refs:
        build_reward([{"reward": "myrewards:score", "weight": 1.0}, {"reward": "rule:exact_answer", "weight": 0.5}])
    path = record(project / "run", refs)
    saved = json.loads(path.read_text())["functions"]
    assert [(e["role"], e["spec"], e["file"], e["sha256"]) for e in saved] == [
        ("reward", "myrewards:score", str(project / "myrewards.py"), hashlib.sha256(SCORER.encode()).hexdigest())]
    assert record(project / "run2", []) is None and not (project / "run2").exists()


def test_training_eval_judge_is_recorded_in_output_dir(project, tiny):
    from alignkit.config import TrainConfig
    from alignkit.eval.training_metrics import TrainingEvaluator

    (project / "prompts.txt").write_text("Review: the movie was\n")
    config = TrainConfig(model="m", eval_prompts=str(project / "prompts.txt"), eval_judge="rule:myrewards:score",
                         output_dir=str(project / "run"))
    TrainingEvaluator(config, tiny[1])
    saved = json.loads((project / "run" / "code.json").read_text())["functions"]
    assert [(e["role"], e["spec"], e["file"]) for e in saved] == [
        ("judge", "myrewards:score", str(project / "myrewards.py"))]


@pytest.mark.parametrize("spec", ["os:system", "subprocess:run", "builtins:eval", "shutil:rmtree", "os.path:join"])
def test_standard_library_modules_are_refused_as_rewards(spec):
    top = spec.split(":")[0].split(".")[0]
    with pytest.raises(ConfigError) as e:
        build_reward(spec)
    assert str(e.value) == (f"reward {spec!r}: '{top}' is a Python standard-library module; a reward must be your own "
                            "function (module:function in a .py file of the current directory or an installed package)")


def test_standard_library_judge_is_one_line_on_the_command_line(project, capfd):
    (project / "a.jsonl").write_text(json.dumps({"prompt": "p", "completions": ["x"]}) + "\n")
    (project / "b.jsonl").write_text(json.dumps({"prompt": "p", "completions": ["y"]}) + "\n")
    logging.getLogger("alignkit").handlers.clear()
    rc = cli.main(["eval", "--models", "a.jsonl", "b.jsonl", "--judge", "rule:subprocess:getoutput", "--out", "ev"])
    err = capfd.readouterr().err
    assert rc == 2 and err.splitlines() == [
        "alignkit eval: error: judge 'subprocess:getoutput': 'subprocess' is a Python standard-library module; a "
        "judge must be your own function (module:function in a .py file of the current directory or an installed "
        "package)"]


def test_eval_records_the_judge_in_its_out_folder(project):
    (project / "a.jsonl").write_text(json.dumps({"prompt": "p", "completions": ["xx"]}) + "\n")
    (project / "b.jsonl").write_text(json.dumps({"prompt": "p", "completions": ["y"]}) + "\n")
    assert cli.main(["eval", "--models", "a.jsonl", "b.jsonl", "--judge", "rule:myrewards:score", "--bootstrap", "10",
                     "--out", "ev"]) == 0
    saved = json.loads((project / "ev" / "code.json").read_text())["functions"]
    assert [(e["role"], e["file"]) for e in saved] == [("judge", str(project / "myrewards.py"))]
