"""The documentation: the site builds strictly, its runnable examples run, and the README stays
a short door that links every page.

A fenced ```python block whose first line starts with ``# runnable`` is an example the docs
promise runs as shown: each one is run here in a fresh interpreter, from a scratch folder
that looks like the repository root (``configs/`` is there), with the repository importable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = "# runnable"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
SETUP = (".ci/in-env nas search               # the main job: the default search on Fashion-MNIST",
         ".ci/in-env python -m pytest -q      # the test suite (what CI runs)")


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks() -> list[tuple[str, str, str]]:
    """(where, info string, code) of every fenced block marked runnable."""
    found = []
    for page in _pages():
        text = page.read_text()
        for match in FENCE.finditer(text):
            info, code = match.group(1).strip(), match.group(2)
            if code.lstrip().startswith(MARK):
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", info, code))
    return found


def _nav_pages() -> list[str]:
    """The .md files of mkdocs.yml's nav, relative to docs/."""
    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node] if node.endswith(".md") else []
        if isinstance(node, dict):
            return [p for value in node.values() for p in walk(value)]
        return [p for item in node for p in walk(item)]
    return walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_the_site_builds_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "img" / "pareto.png").is_file()


def test_there_are_runnable_examples_and_all_are_python():
    blocks = _blocks()
    assert len(blocks) >= 3, f"only {len(blocks)} blocks marked {MARK!r}"
    wrong = [where for where, info, _ in blocks if info.split()[:1] != ["python"]]
    assert not wrong, f"blocks marked {MARK!r} must be ```python blocks: {wrong}"


@pytest.mark.parametrize(("where", "code"), [pytest.param(w, c, id=w) for w, _, c in _blocks()])
def test_a_runnable_example_runs(where, code, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"{where}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"


def test_the_readme_is_a_short_door_to_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    for line in SETUP:  # .ci/run runs the README's test command
        assert line in text.splitlines(), f"the README lost its set-up line {line!r}"
    pages = _nav_pages()
    assert "index.md" in pages and len(pages) >= 9
    unlinked = [p for p in pages if f"](docs/{p})" not in text]
    assert not unlinked, f"pages of mkdocs.yml's nav the README does not link: {unlinked}"
    assert "](docs/img/pareto.png)" in text


def test_the_readme_links_point_at_files():
    text = README.read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
                if not re.match(r"[a-z]+:", t)}
    missing = sorted(t for t in targets if t and not (ROOT / t).exists())
    assert not missing, missing
