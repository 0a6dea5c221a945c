"""`make lint` as a test, so the suite CI runs keeps the code formatted, clean and typed.

The linters are pinned in pyproject.toml: a newer release with new rules must not fail a
build nobody changed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["geoincident", "geo", "detectors", "stream", "sim", "tests", "benchmarks", "setup.py"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", *SOURCES],
        ["ruff", "format", "--check", *SOURCES],
        ["mypy"],  # geo/ and detectors/, per [tool.mypy]
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint(command):
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
