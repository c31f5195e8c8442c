"""``run_search(spec)``: a Ray Tune ``Tuner`` driven by Optuna, writing results/<study>/.

``run_search(spec, resume=True)`` continues a study whose driver died (nas/durable.py): the
study's finished trials stay, the ones left running are run again from their checkpoints,
and the sampler draws the rest. Trials whose worker or node dies are retried by Ray from
their last checkpoint, ``retries`` times (nas/trainable.py reports deterministic failures
instead of raising them, so those are not retried).

``scheduler``: none, Ray's ASHA (on accuracy), or MO-ASHA (nas/moasha_scheduler.py: on every
objective, its rungs rebuilt from the study on a resume). ``latency.node_resource``: the
driver starts the study's latency target before any trial (nas/latency_target.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

import search_spaces

from .candidate import PROGRESS
from .cluster import check_storage, reachable_address, start_ray
from .durable import StudyState, driver_lock, reconcile, study_state
from .latency_target import start_target
from .moasha_scheduler import MOASHAScheduler
from .parent import parent_importance
from .results import (
    RAY,
    SPEC,
    STUDY_DB,
    Printer,
    TableWriter,
    fmt,
    load_results,
    progress_line,
    store_trial_files,
    trial_rows,
)
from .searcher import StudySearcher, epoch_history, make_searcher, trial_status
from .spec import SearchSpec, SpecError, check_data, to_yaml
from .trainable import train_candidate

RAY_ERRORS = "ray-errors.log"  # what Ray reports of errors (a node lost, a retried trial)


class StudyExists(ValueError):
    """The study folder already holds a study; nothing is overwritten silently."""


class ResultsCallback(tune.Callback):
    """Driver side: prints progress and writes each finished trial's row and files."""

    def __init__(self, spec: SearchSpec, study_dir: Path, printer: Printer,
                 searcher: StudySearcher, *, resume: bool = False) -> None:
        self.spec, self.study_dir, self.printer = spec, study_dir, printer
        self.searcher = searcher
        self.table = TableWriter(study_dir, resume=resume)
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.started = time.monotonic()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        self.searcher.record_checkpoint(trial.trial_id, _uri(checkpoint))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = len(self.history.get(trial.trial_id, []))
        self.printer(f"  trial {trial.config['trial']}: its worker died; retrying "
                     f"({trial.num_failures} of {self.spec.retries}) from its last checkpoint "
                     f"(epoch {done})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.history.setdefault(trial.trial_id, []).append(result)
        self.searcher.record_epoch(trial.trial_id, result)
        number = trial.config["trial"]
        if result.get("duplicate_of") is not None:
            self.printer(f"  trial {number} not trained: the same config as trial "
                         f"{result['duplicate_of']}, whose result it reuses")
            return
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
        history = _earlier_epochs(trial.config) + self.history.get(trial.trial_id, [])
        last = history[-1] if history else {}
        status = trial_status(last, error, self.spec.train.epochs)
        message = _error_line(trial) if error else (
            last.get("failed") or last.get("infeasible", ""))
        trained = [h for h in history if not h.get("infeasible") and not h.get("failed")
                   and "duplicate_of" not in h]
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


def _uri(checkpoint: Any) -> str:
    """Where a checkpoint lies, as a path or URI that ``tune.Checkpoint`` reads back."""
    scheme = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}.get(checkpoint.filesystem.type_name)
    return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path


def _earlier_epochs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The epochs a resumed trial had done before its driver died (its checkpoint's)."""
    if not config.get("resume_from"):
        return []
    with tune.Checkpoint(config["resume_from"]).as_directory() as folder:
        path = Path(folder) / PROGRESS
        return json.loads(path.read_text())["history"] if path.is_file() else []


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


def _scheduler(spec: SearchSpec, trials: list) -> Any:
    """Ray's ASHA (on accuracy), MO-ASHA (on every objective; its rungs rebuilt from the
    study's ``trials`` on a resume) or none. Both count rungs in epochs; a trial that
    passes the last rung trains to ``train.epochs``."""
    h = spec.halving
    if spec.scheduler == "asha":
        return ASHAScheduler(metric="accuracy", mode="max", time_attr="epoch", max_t=h.max_t,
                             grace_period=h.grace_period, reduction_factor=h.reduction_factor,
                             stop_last_trials=False)
    if spec.scheduler == "moasha":
        return MOASHAScheduler([(o.metric, o.direction) for o in spec.objectives],
                               grace_period=h.grace_period, max_t=h.max_t,
                               reduction_factor=h.reduction_factor,
                               history=epoch_history(trials))
    return None


def _tuner(spec: SearchSpec, study_dir: Path, printer: Printer,
           trainable: Callable[..., None], state: StudyState, resume: bool,
           callbacks: list[tune.Callback], time_budget_s: float | None) -> tune.Tuner:
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    searcher = make_searcher(spec, f"sqlite:///{study_dir / STUDY_DB}", orphans=state.orphans,
                             existing=state.trials)
    # what the driver computes once for every trial: through Ray's object store
    driver = {"parent_scores": parent_importance(spec, study_dir, printer)} if (
        spec.init.inherit is not None) else {}
    runs = len(list((study_dir / RAY).glob("tune*"))) if resume else 0
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec, **driver), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=_scheduler(spec, state.trials),
            num_samples=state.to_start,
            max_concurrent_trials=spec.concurrent_trials, reuse_actors=True,
            time_budget_s=time_budget_s),
        run_config=tune.RunConfig(
            name=f"tune-{runs + 1}" if runs else "tune",
            storage_path=spec.storage or str(study_dir / RAY), verbose=0,
            callbacks=[ResultsCallback(spec, study_dir, printer, searcher, resume=resume),
                       *callbacks],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.retries)))


def run_search(spec: SearchSpec, *, printer: Printer = print, auto_name: bool = False,
               trainable: Callable[..., None] = train_candidate, resume: bool = False,
               time_budget_s: float | None = None) -> Path:
    """Run the spec's search to the end; returns the study folder (results/<name>).

    ``resume``: continue the study in ``spec.study_dir`` (its own spec) whose driver died.
    ``trainable(config, *, spec)`` is the per-trial function (the real trainer by default;
    the orchestration benchmark passes one that trains nothing). ``time_budget_s``: end the
    search after this many seconds of trials (the schedulers' benchmark compares them at
    equal wall time); trials still running then stay RUNNING in the study, as after a dead
    driver, and ``--resume`` continues them. With ``pruning.best`` > 0,
    pruned variants of the front's best trials are added afterwards (nas/prune.py), in this
    process, once Ray is shut down.
    """
    if spec.ray_address:
        reachable_address(spec.ray_address)  # within seconds, before anything is written
    check_data(spec)
    if not resume:
        spec = prepare_study_dir(spec, auto_name=auto_name)
    study_dir = spec.study_dir.resolve()
    storage_url = f"sqlite:///{study_dir / STUDY_DB}"
    with driver_lock(study_dir):
        state = reconcile(spec, study_dir, storage_url) if resume else study_state(
            spec, storage_url)
        if state.to_start == 0:
            printer(f"study {spec.name!r}: all {state.finished} trials finished; nothing "
                    "to run")
        else:
            _run(spec, study_dir, state, printer, trainable, resume, time_budget_s)
    if spec.pruning.best > 0 and not _pruned_already(study_dir):
        from .prune import prune_best
        prune_best(study_dir, spec, printer=printer)
    return study_dir


def _run(spec: SearchSpec, study_dir: Path, state: StudyState, printer: Printer,
         trainable: Callable[..., None], resume: bool, time_budget_s: float | None) -> None:
    started_ray, callbacks = False, []
    try:
        started_ray = start_ray(spec, log=study_dir / RAY_ERRORS)
        check_storage(spec)
        if spec.latency.node_resource:
            callbacks.append(start_target(spec, study_dir))
    except Exception as err:  # nothing ran: leave no half-made study behind
        if started_ray:
            ray.shutdown()
        if not resume:
            shutil.rmtree(study_dir, ignore_errors=True)
        if isinstance(err, SpecError):
            raise
        raise SpecError(f"ray_address = {spec.ray_address!r}: could not start or reach Ray "
                        f"({type(err).__name__}: {err})") from None
    try:
        tuner = _tuner(spec, study_dir, printer, trainable, state, resume, callbacks,
                       time_budget_s)
        again = (f"; resuming: {state.finished} finished, {len(state.orphans)} to run "
                 "again from their checkpoints") if resume else ""
        printer(f"search {spec.name!r}: {spec.trials} trials of space {spec.space.name!r}, "
                f"{spec.concurrent_trials} at a time, objectives "
                f"{', '.join(o.label for o in spec.objectives)} -> {spec.study_dir}{again}")
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()


def _pruned_already(study_dir: Path) -> bool:
    """Whether the study's table has pruned variants (a resumed search does not add more)."""
    return bool((load_results(study_dir)["origin"] == "pruned").any())
