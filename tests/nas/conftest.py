"""One real search, shared by the end-to-end tests: `nas search` in a subprocess, real local
Ray, real Optuna SQLite storage, real Fashion-MNIST (a small subset, one epoch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "trials=3", "--set", "concurrent_trials=2", "--set", "data.train_size=300",
        "--set", "data.val_size=100", "--set", "train.epochs=1", "--set", "train.batch_size=50",
        "--set", "latency.repeats=3", "--set", "latency.rounds=2",
        "--set", "space.dims.num_stages=2", "--set", "sampler.population_size=2"]


def nas(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _export_point(study: Path, trial: int, point: int, out: Path) -> dict:
    import json

    proc = nas("export", str(study), "--trial", str(trial), "--point", str(point), "--out",
               str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="session")
def export_point():
    """``export_point(study, trial, point, out)``: `nas export` of a budget point (must
    succeed); returns its config.json."""
    return _export_point


def _trial_configs(frame) -> dict[int, dict]:
    import json

    return {t: json.loads(c) for t, c in zip(frame["trial"], frame["config"], strict=True)}


@pytest.fixture(scope="session")
def trial_configs():
    """``trial_configs(frame)``: each results row's config (a dict) by trial number."""
    return _trial_configs


def _prune_policy_trial(study: Path, policy: str, out: Path) -> tuple[dict, dict]:
    """`nas prune --keep 0.5` of the study's first trial of token policy ``policy`` into
    ``out`` (must succeed); returns that trial's config and the pruned config."""
    import json

    from nas.results import load_results

    configs = _trial_configs(load_results(study))
    trial = next(t for t, c in configs.items() if c["token_policy"] == policy)
    proc = nas("prune", str(study), "--trial", str(trial), "--keep", "0.5", "--out", str(out),
               cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return configs[trial], json.loads((out / "config.json").read_text())["config"]


@pytest.fixture(scope="session")
def prune_policy_trial():
    """``prune_policy_trial(study, policy, out)``: `nas prune --keep 0.5` of the first trial
    of that token policy; returns (its config, the pruned config)."""
    return _prune_policy_trial


@pytest.fixture(scope="session")
def run_nas():
    """``run_nas(*args, cwd=...)``: the CLI in a subprocess."""
    return nas


def _search_study(work: Path, config: Path, name: str,
                  args: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    proc = nas("search", str(config), "--name", name, "--results-dir", str(work), *args,
               cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / name, proc


@pytest.fixture(scope="session")
def search_study():
    """``search_study(work, config, name, args)``: `nas search` of a spec file into ``work``
    (must succeed); returns the study folder and the finished process."""
    return _search_study


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("study")
    proc = nas("search", str(ROOT / "configs" / "quick.yaml"), "--name", "tiny",
               "--results-dir", str(work), *TINY, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "tiny", proc
