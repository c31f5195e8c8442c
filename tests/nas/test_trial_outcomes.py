"""Every way a trial can end is recorded, in the results table and in the Optuna study:
complete, error (with its reason), stopped early by ASHA, infeasible (its measured costs
break a constraint, so it is never trained). And the front honours the study's constraints,
as Optuna's best_trials does. Real local Ray and storage; the trainer is a stand-in that
reports chosen numbers, so each outcome is certain."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from nas import load_results

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    from ray import tune
    from nas import spec as specs
    from nas.search import run_search
    from nas.trainable import reporting_failures
    from trainers.loop import NonFiniteLoss

    LATENCY = [1.0, 2.0, 3.0, 0.5, 4.0, 5.0]
    ACCURACY = [0.9, 0.5, 0.92, 0.4, 0.95, 0.99]

    @reporting_failures  # as the real trainer: a deterministic failure is not retried
    def trainer(config, spec, done):
        n = config["trial"]
        if n == 1:
            raise NonFiniteLoss(epoch=1, step=3, loss=float("nan"))
        costs = {"latency_ms": LATENCY[n], "trial": n}
        if n == 5:  # its cost breaks the constraint: reported once, never trained
            tune.report({**costs, "accuracy": 0.0, "epoch": 0, "infeasible": "latency_ms <= 4"})
            return
        for epoch in (1, 2, 3):  # trial 3 is worse than trial 0 at epoch 1: ASHA stops it
            tune.report({**costs, "epoch": epoch, "val_loss": 1.0,
                         "accuracy": ACCURACY[n] - (3 - epoch) / 100})

    spec = specs.load(sys.argv[1], ["trials=6", "concurrent_trials=1", "name=outcomes",
                                    "scheduler=asha", "train.epochs=3",
                                    "constraints=['latency_ms <= 3.5']",
                                    "results_dir=" + sys.argv[2]])
    run_search(spec, trainable=trainer)
""")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outcomes")
    script = folder / "search.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "configs" / "quick.yaml"),
                           str(folder)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "outcomes", proc


def test_each_outcome_is_recorded(outcomes):
    study, proc = outcomes
    frame = load_results(study).set_index("trial")
    assert list(frame["status"]) == ["complete", "error", "complete", "stopped", "complete",
                                     "infeasible"]
    assert "non-finite training loss nan at epoch 1, step 3" in frame.loc[1, "error"]
    assert "retrying" not in proc.stdout  # deterministic: not retried (retries default 2)
    assert frame.loc[3, "epochs"] == 1 and frame.loc[0, "epochs"] == 3
    assert frame.loc[5, "error"] == "latency_ms <= 4" and frame.loc[5, "epochs"] == 0
    assert frame.loc[5, "accuracy"] != frame.loc[5, "accuracy"]  # NaN: never trained
    assert "[2/6] trial 1 error" in proc.stdout and "trial 5 not trained" in proc.stdout
    ot = optuna.load_study(study_name="outcomes", storage=f"sqlite:///{study}/study.db")
    states = [t.state.name for t in sorted(ot.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]


def test_front_honours_constraints_like_optuna(outcomes, tmp_path, run_nas):
    study, _ = outcomes
    ot = optuna.load_study(study_name="outcomes", storage=f"sqlite:///{study}/study.db")
    proc = run_nas("pareto", str(study), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    front = [r["trial"] for r in json.loads(proc.stdout)]
    # trial 4 (0.95 at 4 ms) breaks latency_ms <= 3.5; trial 3 was stopped early
    assert sorted(front) == sorted(t.number for t in ot.best_trials) == [0, 2]
    loose = run_nas("pareto", str(study), "--all", "--format", "json", cwd=tmp_path)
    assert sorted(r["trial"] for r in json.loads(loose.stdout)) == [0, 2, 4]


def test_stopped_and_infeasible_trials_cannot_be_exported(outcomes, tmp_path, run_nas):
    study, _ = outcomes
    for trial, status in ((3, "stopped"), (5, "infeasible")):
        proc = run_nas("export", str(study), "--trial", str(trial), "--out",
                       str(tmp_path / str(trial)), cwd=tmp_path)
        assert proc.returncode == 2 and f"status is {status!r}" in proc.stderr
        assert not (tmp_path / str(trial)).exists()
