"""The code base stays ruff-clean: a lint failure is a test failure, not a CI footnote."""

import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        proc = subprocess.run([*cmd, "check", "."], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
