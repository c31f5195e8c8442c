"""House rules that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "trainers")
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is installed with the test extra")
def test_ruff_clean():
    proc = subprocess.run([RUFF, "check", *PACKAGES, "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_dependency_direction():
    """nas -> trainers -> search_spaces; only nas imports ray or optuna."""
    rules = {"search_spaces": r"(ray|optuna|nas|trainers)\b", "trainers": r"(ray|optuna|nas)\b"}
    for pkg, forbidden in rules.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                assert not re.match(rf"\s*(import|from)\s+{forbidden}", line), (path, line)


def test_no_pickle_or_unsafe_loading():
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*import pickle|yaml\.load\(|torch\.load\(", text, re.M), path
