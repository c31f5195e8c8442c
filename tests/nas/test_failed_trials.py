"""A trial that fails is recorded, not lost: status `error` with its reason in the results
table, FAIL in the Optuna study, and the search goes on. Real local Ray, real storage; the
trainer raises the error the real training loop raises on a non-finite loss."""

from __future__ import annotations

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
    from trainers.loop import NonFiniteLoss

    def trainer(config, *, spec):
        if config["trial"] == 1:
            raise NonFiniteLoss(epoch=1, step=3, loss=float("nan"))
        tune.report({"accuracy": 0.5 + config["trial"] / 10, "latency_ms": 1.0, "epoch": 1,
                     "val_loss": 1.0, "trial": config["trial"]})

    spec = specs.load(sys.argv[1], ["trials=3", "concurrent_trials=1", "name=fails",
                                    "scheduler=asha",
                                    "results_dir=" + sys.argv[2]])
    run_search(spec, trainable=trainer)
""")


def test_failed_trial_is_recorded_and_search_goes_on(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "configs" / "quick.yaml"),
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = load_results(tmp_path / "fails")
    assert list(frame["status"]) == ["complete", "error", "complete"]
    assert "non-finite training loss nan at epoch 1, step 3" in frame.loc[1, "error"]
    assert "[2/3] trial 1 error" in proc.stdout
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{tmp_path}/fails/study.db")
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
