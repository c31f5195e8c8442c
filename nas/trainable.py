"""The Ray Tune trainable: one candidate's config -> build -> measure -> fit -> report.

The measurements, budget points and files are nas/candidate.py's (no Ray there, so that
``nas prune`` never imports Ray). Every epoch's checkpoint holds what resuming needs
(weights, optimizer state, the epochs done): a trial retried after its worker or node died
(``tune.get_checkpoint()``), or handed out again after its driver died (``resume_from``),
continues from its last epoch. Deterministic failures (a non-finite loss, a config that does
not build or weights that do not fit it, running out of memory) are reported as the trial's
last result with their reason (``failed``) instead of raised, so Ray does not retry them.

With a spec ``init`` the candidate starts from those weights (trainers.warmstart; what
starts fresh is listed in trials/<n>/init.json and in the worker's log); with
``init.inherit``, from the parent cut to the candidate by the parent's importance, which
the driver computed once (nas/parent.py) and hands every trial (``parent_scores``). After the last
epoch every trained candidate is scored by Taylor importance (trainers.importance): the full
scores go into the final checkpoint (trials/<n>/) and the compact summary (``imp_*`` keys)
into the final report. Latency is measured by the trial itself (through the gate) or, with
``latency.node_resource``, by the study's latency target (nas/latency_target.py).

It lives in a package module (not a script) so that Ray workers import it, and with it the
torchvision compatibility shim, by name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

import search_spaces
from search_spaces.config import Config, ConfigError
from trainers.data import load_data
from trainers.inherit import inherit, read_parent
from trainers.loop import NonFiniteLoss, build_optimizer, fit
from trainers.losses import objective_for
from trainers.onnx_export import OnnxError
from trainers.warmstart import InitError, read_init, warm_start, warm_start_from

from .candidate import (
    GatedData,
    LocalTimer,
    Progress,
    Timer,
    broken_cost_constraints,
    budget_report,
    candidate_cost,
    importance_report,
    input_info,
    load_progress,
    measure_costs,
    save_checkpoint,
    trial_device,
)
from .latency_target import RemoteTimer
from .measure_lock import MeasurementLock, lock_name
from .plugins import load_plugins
from .spec import SearchSpec


def latency_timer(spec: SearchSpec, input_shape: tuple[int, ...],
                  gate: MeasurementLock) -> Timer:
    """Who measures this trial's latencies: the study's latency target
    (``latency.node_resource``), or this trial through the gate, naming its Ray node."""
    if spec.latency.node_resource:
        return RemoteTimer(spec, input_shape)
    return LocalTimer(spec, input_shape, gate, node=ray.get_runtime_context().get_node_id())


def initial_weights(model: torch.nn.Module, spec: SearchSpec, adaptive: Any,
                    candidate: Config,
                    parent_scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Warm-start ``model`` from ``init.weights`` (with ``init.inherit``, from the parent cut
    to the candidate by ``parent_scores``: trainers/inherit.py); the record of it ({}
    without init): the weights' path and sha256, and for an inherited candidate the share
    of each component it kept (``init_kept_<component>``)."""
    if spec.init.weights is None:
        return {}
    init = read_init(spec.init.weights)
    record: dict[str, Any] = init.provenance()
    if spec.init.inherit is None:
        fresh = warm_start(model, init, adaptive=adaptive, fresh=spec.init.fresh)
    else:
        if parent_scores is None:
            raise InitError("init.inherit: the driver handed this trial no parent importance")
        cut = inherit(read_parent(init.path), candidate, parent_scores)
        fresh = warm_start_from(model, cut.state_dict, adaptive=adaptive,
                                fresh=spec.init.fresh)
        record |= {"init_inherit": spec.init.inherit,
                   **{f"init_kept_{c}": round(share, 4) for c, share in cut.keep.items()}}
    kept = ", ".join(f"{k.removeprefix('init_kept_')} {v:.2f}" for k, v in record.items()
                     if k.startswith("init_kept_"))
    print(f"init: {init.path} (sha256 {init.sha256[:12]}){'; kept ' + kept if kept else ''}"
          f"; fresh: {fresh or 'none'}", flush=True)
    return {**record, "fresh": fresh}


DETERMINISTIC = (NonFiniteLoss, ConfigError, InitError, OnnxError, torch.OutOfMemoryError)


def resume_point(config: dict[str, Any]) -> Progress | None:
    """The training state to continue from: Ray's checkpoint of this trial (a retry), or
    the one the driver hands a trial whose earlier driver died (``resume_from``)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = tune.Checkpoint(config["resume_from"])
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_progress(Path(folder))


Train = Callable[..., None]  # (config, spec, done, **driver)


def reporting_failures(train: Train) -> Callable[..., None]:
    """The Ray trainable ``(config, *, spec, **driver)`` running ``train(config, spec, done,
    **driver)`` (``done``: the epochs it reported; ``driver``: what the driver computed
    once for every trial, e.g. ``parent_scores``) that reports a deterministic failure as
    the trial's last result with its reason (``failed``) instead of raising it, so Ray never
    retries it; anything else raised (a dead worker, say) is Ray's to retry. A config the searcher
    found trained already (``reused``: nas/searcher.py) reports that result and trains
    nothing."""

    def trainable(config: dict[str, Any], *, spec: SearchSpec, **driver: Any) -> None:
        if config.get("reused"):  # an earlier trial's config: its result, not trained again
            tune.report({**config["reused"], "trial": config["trial"]})
            return
        done: list[dict[str, Any]] = []
        try:
            train(config, spec, done, **driver)
        except DETERMINISTIC as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            unknown = dict.fromkeys(spec.metric_names, float("nan"))  # Ray wants them
            tune.report({**unknown, "epoch": len(done), "trial": config["trial"],
                         "failed": reason})

    trainable.__name__ = trainable.__qualname__ = getattr(train, "__name__", "trainable")
    trainable.__doc__ = train.__doc__
    return trainable


@reporting_failures
def train_candidate(config: dict[str, Any], spec: SearchSpec, done: list[dict[str, Any]],
                    parent_scores: Mapping[str, torch.Tensor] | None = None) -> None:
    """Ray Tune function trainable: reports once per epoch and checkpoints the weights.

    A candidate whose measured costs already break a constraint is reported once, marked
    ``infeasible``, and not trained. A deterministic failure is reported with its reason.
    """
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    load_plugins(spec.plugins)
    space = search_spaces.get(spec.space.name)
    candidate = space.config_from_dict(config["candidate"])
    adaptive = space.adaptive(candidate)
    device = trial_device(spec)
    data = load_data(spec.data.replace(device=device))
    shape = data.input_shape
    resume = resume_point(config)
    with MeasurementLock(lock_name(spec.latency.device)) as gate:
        with gate.training_step():  # building is work too: not beside a measurement
            torch.manual_seed(spec.train.seed)
            model = space.build(candidate, num_classes=data.num_classes,
                                in_chans=data.in_chans)
            init = initial_weights(model, spec, adaptive, candidate, parent_scores)
        timer = latency_timer(spec, shape, gate)
        cost = candidate_cost(spec, candidate, model, shape, gate) if adaptive else None
        costs = {**measure_costs(model, spec, shape, gate, config=candidate, cost=cost,
                                 timer=timer),
                 "trial": config["trial"], **{k: v for k, v in init.items() if k != "fresh"}}
        broken = broken_cost_constraints(spec, costs, adaptive=adaptive is not None)
        if broken:
            tune.report({**costs, "accuracy": 0.0, "epoch": 0,
                         "infeasible": "; ".join(broken)})
            return
        settings = spec.train.replace(device=device)
        model.to(device)
        optimizer = build_optimizer(model, settings)
        if resume is not None:
            model.load_state_dict(resume.weights)
            if resume.optimizer is not None:
                optimizer.load_state_dict(resume.optimizer)
            done.extend(resume.history)
        gated = GatedData(data, gate, device)

        def report(metrics: dict[str, Any]) -> None:
            done.append(metrics)
            last = metrics["epoch"] == spec.train.epochs
            final = budget_report(candidate, adaptive, model, data, gated, spec, gate,
                                  cost, timer=timer) if (adaptive and last) else {}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, config["candidate"], input_info(data),
                                init, optimizer=optimizer, history=done)
                if last:
                    final.update(importance_report(model, gated, spec, Path(folder),
                                                    space.structure(candidate)))
                tune.report({**metrics, **costs, **final},
                            checkpoint=tune.Checkpoint.from_directory(folder))

        if len(done) >= spec.train.epochs:  # trained to the end before its driver died
            report(done.pop())  # its final report again (budget points, importance)
        else:
            fit(model, gated, settings, report=report, optimizer=optimizer,
                start_epoch=len(done),
                loss_fn=objective_for(adaptive, label_smoothing=spec.train.label_smoothing))
