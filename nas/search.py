"""``run_search(spec)``: a Ray Tune ``Tuner`` driven by Optuna, writing results/<study>/."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

import search_spaces

from .results import (
    RAY,
    SPEC,
    STUDY_DB,
    Printer,
    TableWriter,
    fmt,
    progress_line,
    store_trial_files,
    trial_rows,
)
from .searcher import make_searcher, trial_status
from .spec import SearchSpec, SpecError, check_data, to_yaml
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
        number = trial.config["trial"]
        if result.get("infeasible"):
            self.printer(f"  trial {number} not trained: breaks {result['infeasible']}")
            return
        self.printer(f"  trial {number} epoch {result.get('epoch')}/{self.spec.train.epochs}"
                     f"  accuracy={fmt(result.get('accuracy'))}"
                     f"  val_loss={fmt(result.get('val_loss'))}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial: Any, error: bool) -> None:
        number = trial.config["trial"]
        try:
            row = self._record(trial, number, error)
        except Exception as err:  # one unrecordable trial must not end the whole search
            self.printer(f"  trial {number}: could not record its results: "
                         f"{type(err).__name__}: {err}")
            return
        self.printer(progress_line(self.table.trials, self.spec.trials, row,
                                   self.spec.metric_names, self.started))

    def _record(self, trial: Any, number: int, error: bool) -> dict[str, Any]:
        history = self.history.get(trial.trial_id, [])
        last = history[-1] if history else {}
        status = trial_status(last, error, self.spec.train.epochs)
        message = _error_line(trial) if error else last.get("infeasible", "")
        trained = [h for h in history if not h.get("infeasible")]
        store_trial_files(self.study_dir, number, trial.checkpoint if trained else None,
                          trained)
        candidate = trial.config["candidate"]
        rows = trial_rows(number, status, self.spec.space.name, candidate,
                          _key(self.spec, candidate), last, trained, message,
                          origin=trial.config.get("origin", "sampler"))
        self.table.add(rows)
        if len(rows) > 1:
            knobs = ", ".join(f"{k} {fmt(rows[0][k])}..{fmt(rows[-1][k])}"
                              for k in json.loads(rows[0]["knobs"]))
            self.printer(f"  trial {number}: {len(rows)} budget points, {knobs}: accuracy "
                         f"{fmt(rows[0]['accuracy'])}..{fmt(rows[-1]['accuracy'])}, macs "
                         f"{fmt(rows[0]['macs'])}..{fmt(rows[-1]['macs'])}")
        return rows[0]


def _key(spec: SearchSpec, candidate: dict[str, Any]) -> str:
    return search_spaces.get(spec.space.name).config_from_dict(candidate).key()


def _error_line(trial: Any) -> str:
    text = ""
    if trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "trial failed"


def holds_study(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def prepare_study_dir(spec: SearchSpec, *, auto_name: bool = False) -> SearchSpec:
    """Create the study folder atomically (two searches never share one) and write the spec.

    An existing folder that holds a study is never reused: with ``auto_name`` the study
    becomes ``<name>-2``, ``<name>-3``, ...; otherwise it is an error. Returns the spec under
    the name it got.
    """
    base, n = spec.name, 1
    while True:
        folder = spec.study_dir
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:
            if not holds_study(folder):
                break  # an empty folder: ours to use
            if not auto_name:
                raise StudyExists(f"name = {spec.name!r}: results folder {folder} already "
                                  f"holds a study; choose another --name or remove that "
                                  f"folder") from None
            n += 1
            spec = dataclasses.replace(spec, name=f"{base}-{n}")
    (spec.study_dir / SPEC).write_text(to_yaml(spec))
    return spec


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
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _scheduler(spec: SearchSpec) -> Any:
    if spec.scheduler == "asha":
        return ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration",
                             max_t=spec.train.epochs, grace_period=1)
    return None


def _tuner(spec: SearchSpec, study_dir: Path, printer: Printer,
           trainable: Callable[..., None]) -> tune.Tuner:
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec), resources),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, f"sqlite:///{study_dir / STUDY_DB}"),
            scheduler=_scheduler(spec), num_samples=spec.trials,
            max_concurrent_trials=spec.concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=spec.storage or str(study_dir / RAY), verbose=0,
            callbacks=[ResultsCallback(spec, study_dir, printer)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)))


def run_search(spec: SearchSpec, *, printer: Printer = print, auto_name: bool = False,
               trainable: Callable[..., None] = train_candidate) -> Path:
    """Run the spec's search to the end; returns the study folder (results/<name>).

    ``trainable(config, *, spec)`` is the per-trial function (the real trainer by default;
    the orchestration benchmark passes one that trains nothing). With ``pruning.best`` > 0,
    pruned variants of the front's best trials are added afterwards (nas/prune.py), in this
    process, once Ray is shut down.
    """
    check_data(spec)
    spec = prepare_study_dir(spec, auto_name=auto_name)
    study_dir = spec.study_dir.resolve()
    try:
        started_ray = _start_ray(spec)
    except Exception as err:  # nothing ran: leave no half-made study behind
        shutil.rmtree(study_dir, ignore_errors=True)
        raise SpecError(f"ray_address = {spec.ray_address!r}: could not start or reach Ray "
                        f"({type(err).__name__}: {err})") from None
    try:
        tuner = _tuner(spec, study_dir, printer, trainable)
        printer(f"search {spec.name!r}: {spec.trials} trials of space {spec.space.name!r}, "
                f"{spec.concurrent_trials} at a time, objectives "
                f"{', '.join(o.label for o in spec.objectives)} -> {spec.study_dir}")
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if spec.pruning.best > 0:
        from .prune import prune_best
        prune_best(study_dir, spec, printer=printer)
    return study_dir
