"""`scheduler: moasha` in real searches (real Ray, real trainer, real Fashion-MNIST subset):
it stops trials, which the study records as PRUNED, and its decisions are the rung logic's
on the per-epoch values the study recorded, also across a driver killed and resumed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nas.moasha import Rungs, minimised, rung_levels
from nas.results import load_results
from nas.searcher import PER_EPOCH

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRIALS = 6
SETS = [f"trials={TRIALS}", "concurrent_trials=1", "scheduler=moasha", "train.epochs=2",
        "train.batch_size=50", "data.train_size=600", "data.val_size=100",
        "latency.repeats=3", "latency.rounds=2", "space.dims.num_stages=2",
        "sampler.population_size=2", "halving.reduction_factor=3"]
OBJECTIVES = [("accuracy", "max"), ("latency_ms", "min")]


def _search_args(name: str, folder: Path) -> list[str]:
    """The arguments of `nas search` for study ``name`` in ``folder``."""
    sets = [x for s in SETS for x in ("--set", s)]
    return [str(ROOT / "configs" / "quick.yaml"), "--name", name, "--results-dir", str(folder),
            *sets]


def _args(name: str, folder: Path) -> list[str]:
    return [sys.executable, "-m", "nas", "search", *_search_args(name, folder)]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _trials(study: Path) -> list[optuna.trial.FrozenTrial]:
    ot = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study / 'study.db'}")
    return sorted(ot.trials, key=lambda t: t.number)


def _replayed_stops(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The trials the rung logic stops when their recorded per-epoch values arrive in trial
    order (one trial at a time: trial n reaches a rung after trial n - 1 ended)."""
    rungs = Rungs(rung_levels(1, 3, 2), reduction_factor=3)
    stopped = set()
    for t in trials:
        for entry in t.user_attrs.get(PER_EPOCH, []):
            if not rungs.decide(t.number, entry["epoch"], minimised(entry, OBJECTIVES)):
                stopped.add(t.number)
    return stopped


def _check(study: Path) -> set[int]:
    trials = _trials(study)
    assert [t.number for t in trials] == list(range(TRIALS))
    pruned = {t.number for t in trials if t.state.name == "PRUNED"}
    assert {t.state.name for t in trials} <= {"PRUNED", "COMPLETE"}
    frame = load_results(study).set_index("trial")
    for t in trials:
        row = frame.loc[t.number]
        epochs = [e["epoch"] for e in t.user_attrs[PER_EPOCH]]
        stopped = [e.get("stopped", False) for e in t.user_attrs[PER_EPOCH]]
        if t.number in pruned:
            assert row["status"] == "stopped" and row["epochs"] == 1 and epochs == [1]
            assert stopped == [True]  # recorded before Optuna was told: what a resume reads
        else:
            assert row["status"] == "complete" and row["epochs"] == 2 and epochs == [1, 2]
            assert stopped == [False, False]
    assert _replayed_stops(trials) == pruned
    return pruned


def test_moasha_stops_trials_and_records_them_pruned(tmp_path):
    proc = subprocess.run(_args("mo", tmp_path), cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pruned = _check(tmp_path / "mo")
    assert pruned, "no trial was stopped"
    assert 0 not in pruned  # the first trial is alone at its rung
    assert any(f"trial {n} stopped" in proc.stdout for n in pruned)


def test_moasha_rungs_survive_a_resume(driver, tmp_path):
    proc = driver.start(_search_args("killed", tmp_path), tmp_path)
    driver.read_until(proc, "trial 3 epoch 1/2", [])  # three trials recorded at the rung
    driver.kill(proc)
    study = tmp_path / "killed"
    before = {t.number: t.user_attrs.get(PER_EPOCH) for t in _trials(study)}
    assert len(before) >= 4
    resumed = subprocess.run([sys.executable, "-m", "nas", "search", "--resume", str(study)],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming:" in resumed.stdout
    _check(study)  # the resumed driver decided on the rungs of the trials before the kill
    after = {t.number: t.user_attrs[PER_EPOCH] for t in _trials(study)}
    for number, epochs in before.items():
        if epochs:  # what the first driver recorded stays (an orphan adds its later epochs)
            assert after[number][:len(epochs)] == epochs
