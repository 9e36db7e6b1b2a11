"""Every ``alignkit`` command in README.md's shell blocks parses: argparse accepts it and ``train``'s
``key=value`` settings are valid config keys and values. None of them is run here; the ones that name Hub
ids (they need a network) are listed and must stay in the section that says they were not run."""

import re
import shlex
from pathlib import Path

import pytest

from alignkit.cli import build_parser
from alignkit.config import TrainConfig, load_config

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_IDS = re.compile(r"\b(Qwen/Qwen2\.5-0\.5B-Instruct|trl-lib/ultrafeedback_binarized)\b")
NETWORK_SECTION = "## Your own model and data"


def readme_commands() -> list[tuple[str, str]]:
    """(section title, command line) of every alignkit command in a ```bash block (continuations joined)."""
    text = README.read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"```bash\n(.*?)```", text, re.S):
        section = (re.findall(r"^## .*$", text[:match.start()], re.M) or ["# alignkit"])[-1]
        for line in re.sub(r"\\\n\s*", " ", match.group(1)).splitlines():
            line = line.strip()
            if line.startswith("accelerate launch"):
                line = "alignkit " + line.split("-m alignkit.cli", 1)[1]
            if line.startswith("alignkit "):
                out.append((section, line))
    return out


COMMANDS = readme_commands()


@pytest.mark.parametrize("section, line", COMMANDS, ids=[c[1][:60] for c in COMMANDS])
def test_readme_command_parses(section, line):
    argv = [a for a in shlex.split(line, comments=True)[1:] if a != "..."]  # "..." elides settings shown above
    args = build_parser().parse_args(argv)
    if args.command == "train":
        items = list(args.items)
        path = items.pop(0) if items and "=" not in items[0] else None
        if path is not None and path.startswith("configs/"):
            assert (README.parent / path).is_file(), path
        load_config(TrainConfig, None, items)  # unknown keys, wrong types, out-of-range values raise


def test_network_commands_are_only_in_the_section_that_says_they_were_not_run():
    network = [(section, line) for section, line in COMMANDS if HUB_IDS.search(line)]
    assert [line.split()[1] for _, line in network] == ["doctor", "train", "train", "data"]
    assert {section for section, _ in network} == {NETWORK_SECTION}
    assert "**Not run here.**" in README.read_text(encoding="utf-8").split(NETWORK_SECTION, 1)[1].split("\n## ", 1)[0]
