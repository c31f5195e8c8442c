"""The Ray Tune trainable: one candidate's config -> build -> measure -> fit -> report.

The measurements, budget points and files are nas/candidate.py's (no Ray there, so that
``nas prune`` never imports Ray). With a spec ``init`` the candidate starts from those
weights (trainers.warmstart; what starts fresh is listed in trials/<n>/init.json and in the
worker's log). After the last epoch every trained candidate is scored by Taylor importance
(trainers.importance): the full scores go into the final checkpoint (trials/<n>/) and the
compact summary (``imp_*`` keys) into the final report.

It lives in a package module (not a script) so that Ray workers import it, and with it the
torchvision compatibility shim, by name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

import search_spaces
from trainers.data import load_data
from trainers.loop import fit
from trainers.losses import objective_for
from trainers.warmstart import read_init, warm_start

from .candidate import (
    GatedData,
    broken_cost_constraints,
    budget_report,
    candidate_cost,
    importance_report,
    input_info,
    measure_costs,
    save_checkpoint,
    trial_device,
)
from .gate import MeasurementGate, gate_name
from .plugins import load_plugins
from .spec import SearchSpec


def initial_weights(model: torch.nn.Module, spec: SearchSpec, adaptive: Any) -> dict[str, Any]:
    """Warm-start ``model`` from ``init.weights``; the record of it ({} without init)."""
    if spec.init.weights is None:
        return {}
    init = read_init(spec.init.weights)
    fresh = warm_start(model, init, adaptive=adaptive, fresh=spec.init.fresh)
    print(f"init: {init.path} (sha256 {init.sha256[:12]}); fresh: {fresh or 'none'}",
          flush=True)
    return {**init.provenance(), "fresh": fresh}


def train_candidate(config: dict[str, Any], *, spec: SearchSpec) -> None:
    """Ray Tune function trainable: reports once per epoch and checkpoints the weights.

    A candidate whose measured costs already break a constraint is reported once, marked
    ``infeasible``, and not trained.
    """
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    load_plugins(spec.plugins)
    space = search_spaces.get(spec.space.name)
    candidate = space.config_from_dict(config["candidate"])
    adaptive = space.adaptive(candidate)
    device = trial_device(spec)
    data = load_data(spec.data.replace(device=device))
    shape = data.input_shape
    with MeasurementGate(gate_name(spec.latency.device)) as gate:
        with gate.training_step():  # building is work too: not beside a measurement
            torch.manual_seed(spec.train.seed)
            model = space.build(candidate, num_classes=data.num_classes,
                                in_chans=data.in_chans)
            init = initial_weights(model, spec, adaptive)
        cost = candidate_cost(spec, candidate, model, shape, gate) if adaptive else None
        costs = {**measure_costs(model, spec, shape, gate, cost=cost), "trial": config["trial"],
                 **{k: v for k, v in init.items() if k != "fresh"}}
        broken = broken_cost_constraints(spec, costs, adaptive=adaptive is not None)
        if broken:
            tune.report({**costs, "accuracy": 0.0, "epoch": 0,
                         "infeasible": "; ".join(broken)})
            return
        model.to(device)
        gated = GatedData(data, gate, device)

        def report(metrics: dict[str, Any]) -> None:
            last = metrics["epoch"] == spec.train.epochs
            final = budget_report(candidate, adaptive, model, data, gated, spec, gate,
                                  cost) if (adaptive and last) else {}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, config["candidate"], input_info(data),
                                init)
                if last:
                    final.update(importance_report(model, gated, spec, Path(folder)))
                tune.report({**metrics, **costs, **final},
                            checkpoint=tune.Checkpoint.from_directory(folder))

        fit(model, gated, spec.train.replace(device=device), report=report,
            loss_fn=objective_for(adaptive, label_smoothing=spec.train.label_smoothing))
