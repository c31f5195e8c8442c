"""The lock (.ci/lock-cpu.txt) is the exact tested set: every distribution the package needs,
directly or through another, is pinned there, at the version this environment runs."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "lock-cpu.txt"
EXTRAS = ("test", "dashboard", "onnx")  # what .ci/in-env installs


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def needed() -> set[str]:
    """vitnas[EXTRAS] and everything it pulls in, as installed here."""
    seen: set[str] = set()
    todo = [("vitnas", set(EXTRAS))]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep not in seen or req.extras:
                seen.add(dep)
                todo.append((dep, set(req.extras)))
    return seen


def test_the_lock_pins_every_needed_distribution_at_the_installed_version():
    try:
        metadata.version("vitnas")
    except metadata.PackageNotFoundError:
        pytest.skip("the package is not installed (pip install -e .)")
    pins = locked()
    missing = sorted(needed() - set(pins))
    assert not missing, f"not in {LOCK.name} (run .ci/lock): {missing}"
    gpu_build = {n for n in ("torch", "torchvision")  # a GPU machine keeps its own CUDA build
                 if n in needed() and "+cpu" not in metadata.version(n)}
    differ = {name: (pins[name], metadata.version(name)) for name in needed() - gpu_build
              if metadata.version(name) != pins[name]}
    assert not differ, f"installed versions differ from {LOCK.name}: {differ}"


def test_the_lock_has_only_exact_pins():
    body = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert len(body) > 50
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", line) for line in body), body
    assert {"torch", "optuna", "ray", "timm", "fvcore", "pandas"} <= set(locked())
