"""Optuna inside Ray Tune: the sampler from the spec and a searcher that records every metric.

Ray's ``OptunaSearch`` tells Optuna only the objective values, and tells an errored trial
that had reported before (or one a scheduler stopped early) as COMPLETE. Ours stores every
reported metric (and the ``imp_*`` importance summary, the ``prov_*`` and ``init_*``
provenance) as a user attribute first (so constraints may name any metric and the study
alone is a full record), tells an errored trial as FAIL and a stopped one as PRUNED.

Resume (nas/durable.py): a searcher given ``orphans`` (trials left RUNNING in the study by a
driver that died) hands them out first, under their own trial numbers and parameters, with
the last checkpoint the driver recorded for them (``resume_from``); the sampler then draws
the rest. The driver records each trial's latest checkpoint as the user attribute
``checkpoint`` (:meth:`StudySearcher.record_checkpoint`), and the candidate as ``candidate``.

Per-epoch results: the driver records every trained epoch's reported metrics in the study
(:meth:`StudySearcher.record_epoch`: the user attribute ``per_epoch``, a list of {"epoch": e,
metric: value, "stopped": true where the scheduler stopped the trial}), from which a
resumed ``scheduler: moasha`` rebuilds its rungs (:func:`epoch_history`; Optuna keeps no
intermediate values of a multi-objective trial, and Ray never saves a scheduler's state).

No candidate is trained twice: a config whose key a complete (or infeasible) trial of the
study already has (samplers redraw configs they have seen) is handed out with that trial's
recorded result (``reused``, with ``duplicate_of``: its number); the trainable reports it
unchanged, without training, so Optuna is told the first trial's values and the row says
``duplicate_of``. A resume keeps this: the study records ``duplicate_of`` too.

Guidance (``spec.guidance``): once ``after`` trials have completed, the searcher enqueues up to
``proposals`` importance-guided configs (nas/guidance.py) into the study, once; Optuna's
``ask`` hands out enqueued trials first, so the next trials Ray asks for are those, each
with the user attribute ``origin`` ("proposal:from=N:component"); the sampler draws the rest.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from search_spaces.dims import Dim

from .durable import PER_EPOCH
from .guidance import propose, study_rows
from .samplers import make_sampler
from .spec import METRICS, SearchSpec

# knobs: point 0's, JSON; points: every budget point, JSON; failed: a deterministic failure
RECORDED = (*METRICS, "epoch", "infeasible", "knobs", "points", "failed", "duplicate_of")
# the importance summary (trainers.importance.summarize), the warm start's and the latency
# measurement's provenance
RECORDED_PREFIXES = ("imp_", "init_", "prov_")
log = logging.getLogger("nas")


def draw_origin(spec: SearchSpec) -> str:
    """What a drawn config's ``origin`` says: "inherited" in an inherited search."""
    return "inherited" if spec.init.inherit is not None else "sampler"


class DrawCandidate:
    """Optuna define-by-run function: draws a candidate; only ``trial.suggest_*`` calls. An
    enqueued trial answers with its fixed parameters and names its ``origin``; a drawn one
    says ``origin`` ("sampler"; "inherited" in an inherited search)."""

    def __init__(self, space: str, dims: Mapping[str, Dim], origin: str = "sampler") -> None:
        self.space, self.dims, self.origin = space, dict(dims), origin

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        candidate = search_spaces.get(self.space).suggest(trial, self.dims)
        trial.set_user_attr("candidate", candidate.to_json())
        return {"candidate": candidate.to_dict(), "trial": trial.number,
                "origin": trial.user_attrs.get("origin", self.origin)}


def trial_status(result: dict[str, Any] | None, error: bool, epochs: int) -> str:
    """complete | infeasible (costs broke a constraint, not trained) | stopped (early, by the
    scheduler or a cancelled run) | error (raised, or a deterministic failure reported)."""
    if error or (result and result.get("failed")):
        return "error"
    if result and result.get("infeasible"):
        return "infeasible"
    if not result or result.get("epoch", 0) < epochs:
        return "stopped"
    return "complete"


class StudySearcher(OptunaSearch):
    """Tells Optuna: complete and infeasible trials with their values (the constraints say
    which are infeasible), trials stopped early as PRUNED, errored ones as FAIL; enqueues the
    spec's guided proposals once ``guidance.after`` trials have completed."""

    def __init__(self, *args: Any, spec: SearchSpec, orphans: Sequence[FrozenTrial] = (),
                 complete: int = 0, guided: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spec = spec
        self._complete = complete
        self._guided = guided
        self._orphans = list(orphans)
        self._per_epoch: dict[str, list[dict[str, Any]]] = {}
        self._keys: dict[int, str] = {}  # trial number -> config key (complete trials)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        fresh = trial_id not in self._ot_trials
        config = self._orphan(trial_id) if self._orphans and fresh else super().suggest(
            trial_id)
        if fresh and isinstance(config, dict) and trial_id in self._ot_trials:
            self._reuse_twin(trial_id, config)
        return config

    def _orphan(self, trial_id: str) -> dict[str, Any]:
        frozen = self._orphans.pop(0)  # a trial its dead driver left running: run it again
        self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
        self._per_epoch[trial_id] = list(frozen.user_attrs.get(PER_EPOCH, []))
        space = search_spaces.get(self._spec.space.name)
        candidate = space.from_params(frozen.params, self._spec.space.dims)
        return {"candidate": candidate.to_dict(), "trial": frozen.number,
                "origin": frozen.user_attrs.get("origin", draw_origin(self._spec)),
                "resume_from": frozen.user_attrs.get("checkpoint")}

    def _reuse_twin(self, trial_id: str, config: dict[str, Any]) -> None:
        """Hand out the recorded result of an earlier trial of the same key, if any."""
        space = search_spaces.get(self._spec.space.name)
        key = space.config_from_dict(config["candidate"]).key()
        twin = self._twins_done().get(key)
        if twin is None or twin.number == config["trial"]:
            return
        reused = {name: value for name, value in twin.user_attrs.items()
                  if name in RECORDED or name.startswith(RECORDED_PREFIXES)}
        config["reused"] = {**reused, "duplicate_of": twin.number}
        self._ot_trials[trial_id].set_user_attr("duplicate_of", twin.number)
        log.warning(f"trial {config['trial']}: the same config as trial {twin.number}; "
                    f"not trained, its result reused")

    def _twins_done(self) -> dict[str, FrozenTrial]:
        """The first complete trial of each key (complete and infeasible ones: their result
        is what training, or measuring, the same config again would give)."""
        space = search_spaces.get(self._spec.space.name)
        done = self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for trial in done:
            if trial.number not in self._keys and "candidate" in trial.user_attrs:
                config = space.config_from_dict(json.loads(trial.user_attrs["candidate"]))
                self._keys[trial.number] = config.key()
        first: dict[str, FrozenTrial] = {}
        for trial in sorted(done, key=lambda t: t.number):
            key = self._keys.get(trial.number)
            if key is not None and "duplicate_of" not in trial.user_attrs:
                first.setdefault(key, trial)
        return first

    def record_checkpoint(self, trial_id: str, path: str) -> None:
        """Note a trial's latest checkpoint in the study (what a resume continues from)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            ot_trial.set_user_attr("checkpoint", path)

    def record_epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        """Note a trained epoch's reported metrics in the study (``per_epoch``), marked
        ``stopped`` when the scheduler stopped the trial there: Ray marks such a result done
        before the driver's callbacks see it, and the stop is told to Optuna only later, so
        a resume learns of a stop its dead driver decided from this record alone. An epoch
        recorded already (trained again after a resume) keeps its first record: the one its
        rung judged."""
        ot_trial = self._ot_trials.get(trial_id)
        epoch = result.get("epoch")
        if (ot_trial is None or trial_id in self._completed_trials or not epoch
                or result.get("failed") or result.get("infeasible")
                or "duplicate_of" in result):
            return
        earlier = self._per_epoch.setdefault(trial_id, [])
        if any(e["epoch"] == epoch for e in earlier):
            return  # an epoch run again after a resume: its rung judged the first result
        entry = {"epoch": int(epoch), **{m: float(result[m]) for m in METRICS
                                         if isinstance(result.get(m), numbers.Real)}}
        if result.get("done") and entry["epoch"] < self._spec.train.epochs:
            entry["stopped"] = True
        earlier.append(entry)
        ot_trial.set_user_attr(PER_EPOCH, earlier)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        for name, value in (result or {}).items():
            if value is not None and (name in RECORDED or name.startswith(RECORDED_PREFIXES)):
                ot_trial.set_user_attr(name, value)
        status = trial_status(result, error, self._spec.train.epochs)
        if status in ("error", "stopped"):
            state = TrialState.FAIL if status == "error" else TrialState.PRUNED
            self._ot_study.tell(ot_trial, state=state)
            self._completed_trials.add(trial_id)
        else:
            super().on_trial_complete(trial_id, result=result, error=error)
        if status == "complete":
            self._complete += 1
            self._guide()
        return None

    def _guide(self) -> None:
        """Once ``guidance.after`` trials completed: enqueue up to ``guidance.proposals``
        proposals (no more than the trials left to start), and say so in one line."""
        guidance = self._spec.guidance
        if self._guided or not guidance.proposals or self._complete < guidance.after:
            return
        self._guided = True
        room = min(guidance.proposals, self._spec.trials - len(self._ot_trials))
        rows = study_rows(self._ot_study.get_trials(deepcopy=False), self._spec)
        proposals = propose(rows, self._spec, room) if room > 0 else []
        space = search_spaces.get(self._spec.space.name)
        for config, origin in proposals:
            self._ot_study.enqueue_trial(space.params(config, self._spec.space.dims),
                                         user_attrs={"origin": origin}, skip_if_exists=True)
        has_summary = any(c.startswith("imp_") for c in rows.columns)
        why = "" if proposals else (
            ": no trials left to start" if room <= 0 else
            ": the front's importance shows no waste inside the dims" if has_summary else
            ": no importance summaries (importance.batches = 0?)")
        origins = ", ".join(origin.removeprefix("proposal:") for _, origin in proposals)
        log.warning(f"guidance: after {self._complete} complete trials, enqueued "
                    f"{len(proposals)} proposals{why}{': ' if origins else ''}{origins}")


def epoch_history(trials: Sequence[FrozenTrial]) -> list[tuple[int, int, dict[str, Any]]]:
    """(trial number, epoch, metrics) of every per-epoch result the study holds."""
    return [(t.number, int(e["epoch"]), e)
            for t in trials for e in t.user_attrs.get(PER_EPOCH, [])]


def make_searcher(spec: SearchSpec, storage_url: str, *, orphans: Sequence[FrozenTrial] = (),
                  existing: Sequence[FrozenTrial] = ()) -> StudySearcher:
    """The study's searcher; on a resume, ``existing`` are the study's trials so far and
    ``orphans`` those of them to run again."""
    complete = sum(t.state == TrialState.COMPLETE and "infeasible" not in t.user_attrs
                   for t in existing)
    guided = any(str(t.user_attrs.get("origin", "")).startswith("proposal") for t in existing)
    return StudySearcher(space=DrawCandidate(spec.space.name, spec.space.dims,
                                             draw_origin(spec)),
                         metric=spec.metric_names, mode=spec.modes,
                         sampler=make_sampler(spec, offset=len(existing)),
                         study_name=spec.name, spec=spec, orphans=orphans,
                         complete=complete, guided=guided,
                         storage=optuna.storages.RDBStorage(storage_url))
