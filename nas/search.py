"""``run_search(spec)``: a Ray Tune ``Tuner`` driven by Optuna, writing results/<study>/."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from .results import (
    RAY,
    SPEC,
    STUDY_DB,
    Printer,
    TableWriter,
    progress_line,
    store_trial_files,
    trial_row,
)
from .searcher import make_searcher
from .spec import SearchSpec, to_yaml
from .trainable import train_candidate


class StudyExists(ValueError):
    """The study folder already holds a study; nothing is overwritten silently."""


class ResultsCallback(tune.Callback):
    """Driver side: prints progress and writes each finished trial's row and files."""

    def __init__(self, spec: SearchSpec, study_dir: Path, printer: Printer) -> None:
        self.spec, self.study_dir, self.printer = spec, study_dir, printer
        self.table = TableWriter(study_dir)
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.started = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.history.setdefault(trial.trial_id, []).append(result)
        self.printer(f"  trial {trial.config['trial']} epoch {result['epoch']}/"
                     f"{self.spec.train.epochs}  accuracy={result['accuracy']:.4f}  "
                     f"val_loss={result['val_loss']:.4f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "complete", "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "error", _error_line(trial))

    def _finish(self, trial: Any, status: str, error: str) -> None:
        history = self.history.get(trial.trial_id, [])
        number = trial.config["trial"]
        checkpoint = trial.checkpoint.path if trial.checkpoint and status == "complete" else None
        store_trial_files(self.study_dir, number, checkpoint, history)
        candidate = trial.config["candidate"]
        key = _key(self.spec, candidate)
        row = trial_row(number, status, self.spec.space.name, candidate, key,
                        history[-1] if history else {}, history, error)
        self.table.add(row)
        done = len(self.table.rows)
        self.printer(progress_line(done, self.spec.trials, row, self.spec.metric_names,
                                   self.started))


def _key(spec: SearchSpec, candidate: dict[str, Any]) -> str:
    import search_spaces
    return search_spaces.get(spec.space.name).config_from_dict(candidate).key()


def _error_line(trial: Any) -> str:
    text = ""
    if trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "trial failed"


def prepare_study_dir(spec: SearchSpec) -> Path:
    study_dir = spec.study_dir.resolve()
    if study_dir.exists() and any(study_dir.iterdir()):
        raise StudyExists(f"name = {spec.name!r}: results folder {spec.study_dir} already holds "
                          f"a study; choose another --name or remove that folder")
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / SPEC).write_text(to_yaml(spec))
    return study_dir


def _start_ray(spec: SearchSpec) -> bool:
    """Connect to the spec's cluster or start a local one; True when we started it."""
    # Trials checkpoint every epoch on purpose (final weights survive early stopping).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.WARNING)
    if spec.ray_address:
        ray.init(address=spec.ray_address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    return True


def _scheduler(spec: SearchSpec) -> Any:
    if spec.scheduler == "asha":
        return ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration",
                             max_t=spec.train.epochs, grace_period=1)
    return None


def run_search(spec: SearchSpec, *, printer: Printer = print,
               trainable: Callable[..., None] = train_candidate) -> Path:
    """Run the spec's search to the end; returns the study folder (results/<name>).

    ``trainable(config, *, spec)`` is the per-trial function (the real trainer by default;
    the orchestration benchmark passes one that trains nothing).
    """
    study_dir = prepare_study_dir(spec)
    started_ray = _start_ray(spec)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(trainable, spec=spec),
            {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(spec, f"sqlite:///{study_dir / STUDY_DB}"),
                scheduler=_scheduler(spec), num_samples=spec.trials,
                max_concurrent_trials=spec.concurrent_trials, reuse_actors=True),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(study_dir / RAY), verbose=0,
                callbacks=[ResultsCallback(spec, study_dir, printer)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0)))
        printer(f"search {spec.name!r}: {spec.trials} trials of space {spec.space.name!r}, "
                f"{spec.concurrent_trials} at a time, objectives "
                f"{', '.join(o.label for o in spec.objectives)} -> {spec.study_dir}")
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return study_dir
