"""The README's promises stay true: its test command is what CI runs, and every subcommand is documented."""

import re
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

from stormguard.cli import build_parser

README = (PROJECT_ROOT / "README.md").read_text()


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_ci_runs_the_readme_test_command() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), f"README test command {test_cmd!r} is not a line of .ci/run"


@pytest.mark.parametrize("sub", _subcommands())
def test_every_subcommand_documented_and_has_help(sub: str) -> None:
    assert f"### `stormguard {sub}" in README, f"README has no usage section for 'stormguard {sub}'"
    proc = subprocess.run([sys.executable, "-m", "stormguard", sub, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: stormguard " + sub in proc.stdout
