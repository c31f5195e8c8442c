"""Durable searches: one driver per study, and resuming a study whose driver died.

The Optuna study (study.db) is the record of truth for which trials exist and which
finished. A resume (``nas search --resume RESULTS``) reads it: finished trials (complete,
infeasible, stopped, error) are never run again; trials the dead driver left RUNNING are
handed out again under their own numbers and parameters, from the last checkpoint the
driver recorded for them; the sampler draws the rest, up to the study's ``trials``. Before
that the results table is brought to agree with the study row for row: a trial that the
study holds as finished but the table lacks (the driver died between the two writes) gets its
rows from what the study recorded, and a RUNNING trial whose rows were written is told to
the study from them.

A driver holds an exclusive ``flock`` on results/<study>/driver.lock while it runs: a second
driver on the same study is refused, and the lock goes with the process that held it, so a
driver killed by SIGKILL leaves nothing held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import search_spaces

from .results import TableWriter, store_trial_files, trial_rows
from .sections import SpecError
from .spec import METRICS, SearchSpec

LOCK = "driver.lock"
PER_EPOCH = "per_epoch"  # user attribute: each trained epoch's metrics (nas/searcher.py)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATUS = {TrialState.PRUNED: "stopped", TrialState.FAIL: "error"}


class StudyBusy(SpecError):
    """Another live driver runs this study."""


@contextlib.contextmanager
def driver_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's driver lock (StudyBusy if a live driver holds it)."""
    fd = os.open(study_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StudyBusy(f"RESULTS = {str(study_dir)!r}: a driver (pid {holder}) is running "
                        "this study; wait for it to end or stop it, then resume") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class StudyState:
    """What a study holds when a driver (re)starts it."""

    trials: list[FrozenTrial]  # every trial, in number order
    finished: int  # complete, infeasible, stopped, error
    orphans: list[FrozenTrial]  # left RUNNING by a driver that died: to run again
    trials_wanted: int  # the spec's trials

    @property
    def to_start(self) -> int:
        """Samples the new Tuner runs: the orphans and the trials never started."""
        return max(self.trials_wanted - self.finished, 0)


def study_state(spec: SearchSpec, storage_url: str) -> StudyState:
    """The study's trials (none yet for a new study)."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage_url)
    except KeyError:
        return StudyState(trials=[], finished=0, orphans=[], trials_wanted=spec.trials)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return StudyState(trials=trials, finished=sum(t.state in FINISHED for t in trials),
                      orphans=[t for t in trials if t.state == TrialState.RUNNING],
                      trials_wanted=spec.trials)


def _stopped_at(trial: FrozenTrial) -> dict[str, Any] | None:
    """The last recorded epoch of a trial, if the scheduler stopped the trial there."""
    epochs = trial.user_attrs.get(PER_EPOCH) or []
    return epochs[-1] if epochs and epochs[-1].get("stopped") else None


def _rows_from_study(spec: SearchSpec, study_dir: Path, trial: FrozenTrial,
                     attrs: dict[str, Any], status: str | None = None) -> list[dict]:
    """A finished trial's results rows from what the study recorded of it (``attrs``)."""
    status = status or STATUS.get(trial.state,
                                  "infeasible" if attrs.get("infeasible") else "complete")
    candidate = json.loads(attrs["candidate"])
    checkpoint = attrs.get("checkpoint")
    epochs = 0 if attrs.get("duplicate_of") is not None else int(attrs.get("epoch") or 0)
    history = [{"epoch": e + 1} for e in range(epochs)]
    if checkpoint and status != "infeasible":
        from ray import tune
        store_trial_files(study_dir, trial.number, tune.Checkpoint(checkpoint), history)
    key = search_spaces.get(spec.space.name).config_from_dict(candidate).key()
    error = attrs.get("failed", "") or attrs.get("infeasible", "")
    return trial_rows(trial.number, status, spec.space.name, candidate, key, attrs, history,
                      error, origin=attrs.get("origin", "sampler"))


def reconcile(spec: SearchSpec, study_dir: Path, storage_url: str) -> StudyState:
    """Make the results table and the study agree (see the module doc); the state after."""
    state = study_state(spec, storage_url)
    if not state.trials:
        return state
    table = TableWriter(study_dir, resume=True)
    recorded = {int(r["trial"]) for r in table.rows}
    study = optuna.load_study(study_name=spec.name, storage=storage_url)
    for trial in state.trials:
        running = trial.state == TrialState.RUNNING
        if trial.state in FINISHED and trial.number not in recorded:
            table.add(_rows_from_study(spec, study_dir, trial, dict(trial.user_attrs)))
        elif running and trial.number in recorded:
            _tell_from_rows(spec, study, trial, [r for r in table.rows
                                                 if int(r["trial"]) == trial.number])
        elif running and (last := _stopped_at(trial)) is not None:
            attrs = {**trial.user_attrs, **last}
            table.add(_rows_from_study(spec, study_dir, trial, attrs, "stopped"))
            handle = optuna.Trial(study, trial._trial_id)
            for name in METRICS:  # as a driver that lived would have recorded them
                if name in last:
                    handle.set_user_attr(name, last[name])
            handle.set_user_attr("epoch", last["epoch"])
            study.tell(handle, state=TrialState.PRUNED)
    return study_state(spec, storage_url)


def _tell_from_rows(spec: SearchSpec, study: optuna.Study, trial: FrozenTrial,
                    rows: list[dict[str, Any]]) -> None:
    row = min(rows, key=lambda r: r.get("point", 0))
    handle = optuna.Trial(study, trial._trial_id)
    status = row["status"]
    if status in ("error", "stopped"):
        study.tell(handle, state=TrialState.FAIL if status == "error" else TrialState.PRUNED)
    else:
        study.tell(handle, [float(row[m] or 0.0) for m in spec.metric_names])
