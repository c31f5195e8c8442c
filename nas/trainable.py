"""The Ray Tune trainable: one candidate's config -> build -> measure -> fit -> report.

Adaptive candidates (halting ViTs) cost what their data makes them run: before training only
their parameters (and full MACs) are known, and after the last epoch they are evaluated at
``budget.points`` halting thresholds (trainers.budget); the final report carries point 0 (the
trained threshold: what Optuna sees) and every point as JSON (one results row each).

After the last epoch every trained candidate is scored by Taylor importance
(trainers.importance) on ``importance.batches`` training batches: the full scores go into the
final checkpoint as importance.safetensors (so trials/<n>/ has them) and the compact summary
(``imp_*`` keys) into the final report.

It lives in a package module (not a script) so that Ray workers import it, and with it the
torchvision compatibility shim, by name.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ray import tune
from safetensors.torch import save_file

import search_spaces
from search_spaces.config import Config
from trainers.budget import TokenCost, budget_points, default_knobs
from trainers.data import load_data
from trainers.importance import save_scores, summarize, taylor_importance
from trainers.loop import fit
from trainers.losses import objective_for
from trainers.measure import Latency, count_macs, count_params, measure_latency

from .gate import MeasurementGate, gate_name
from .results import IMPORTANCE
from .spec import COSTS, STATIC_COSTS, SearchSpec

WEIGHTS = "model.safetensors"
CANDIDATE = "candidate.json"
INPUT = "input.json"


class GatedData:
    """The candidate's data, each training and validation step held inside the gate, so
    another trial's latency measurement never runs beside this trial's work."""

    def __init__(self, data: Any, gate: MeasurementGate, device: str) -> None:
        self._data, self._gate, self._cuda = data, gate, device.startswith("cuda")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def _gated(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            with self._gate.training_step():  # held while the loop works on this batch
                yield batch
                if self._cuda:  # the step's kernels are queued, not done: wait for them
                    torch.cuda.synchronize()

    def train_batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._gated(self._data.train_batches(*args, **kwargs))

    def val_batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._gated(self._data.val_batches(*args, **kwargs))


def is_adaptive(candidate: Config) -> bool:
    """Whether the candidate's cost depends on its input (a halting ViT)."""
    return getattr(candidate, "token_policy", "static") == "halting"


def timed(model: torch.nn.Module, spec: SearchSpec, input_shape: tuple[int, ...],
          gate: MeasurementGate, images: torch.Tensor | None = None) -> Latency:
    """The spec's latency measurement of ``model``, on an otherwise idle device."""
    lat = spec.latency
    with gate.measurement():
        return measure_latency(
            model, input_shape=input_shape, batch_size=lat.batch_size, device=lat.device,
            dtype=getattr(torch, lat.dtype), threads=lat.threads, warmup=lat.warmup,
            repeats=lat.repeats, rounds=lat.rounds, inputs=images)


def latency_metrics(latency: Latency) -> dict[str, Any]:
    return {"latency_ms": latency.median_ms, "latency_p90_ms": latency.p90_ms,
            "latency_spread": latency.spread,
            **{f"prov_{k}": v for k, v in latency.provenance.items()}}


def token_cost(model: torch.nn.Module, input_shape: tuple[int, ...],
               gate: MeasurementGate) -> TokenCost:
    """An adaptive model's token cost model (it depends on the architecture only: counted
    once per trial, before training)."""
    with gate.training_step():  # tracing for MACs is work like training: keep it apart
        return TokenCost.of(model, input_shape)


def measure_costs(model: torch.nn.Module, spec: SearchSpec, input_shape: tuple[int, ...],
                  gate: MeasurementGate, *, cost: TokenCost | None = None) -> dict[str, Any]:
    """Params, MACs and latency of ``model``. An adaptive model (given with its ``cost``)
    gets params and its full MACs only: what it runs (and so its latency) depends on data
    it has not learnt yet."""
    if cost is not None:
        macs = cost.full()
        return {"params": count_params(model), "macs": macs, "full_macs": macs}
    with gate.training_step():  # tracing for MACs is work like training: keep it apart
        macs = count_macs(model, input_shape)
    costs = {"params": count_params(model), "macs": macs, "full_macs": macs}
    return {**costs, **latency_metrics(timed(model, spec, input_shape, gate))}


def broken_cost_constraints(spec: SearchSpec, costs: dict[str, Any], *,
                            adaptive: bool = False) -> list[str]:
    """The spec's constraints on costs known before training that ``costs`` break."""
    known = STATIC_COSTS if adaptive else COSTS
    return [f"{c} ({c.metric}={costs[c.metric]:.4g})" for c in spec.constraints
            if c.metric in known and not c.holds(costs[c.metric])]


def budget_report(candidate: Config, model: torch.nn.Module, data: Any, gated: Any,
                  spec: SearchSpec, gate: MeasurementGate, cost: TokenCost) -> dict[str, Any]:
    """Point 0's accuracy and costs, and every budget point as JSON under ``points``."""
    shape = (data.in_chans, data.img_size, data.img_size)
    images = next(iter(data.val_batches(spec.latency.batch_size)))[0]
    latencies: list[Latency] = []

    def measure(net: torch.nn.Module) -> Latency:
        latencies.append(timed(net, spec, shape, gate, images))
        return latencies[-1]

    knobs = default_knobs(candidate.halt_eps, spec.budget.points, stop=spec.budget.max_eps)
    eval_batch = spec.train.eval_batch_size or 2 * spec.train.batch_size
    points = budget_points(spec.space.name, candidate, model, gated, knobs=knobs,
                           batch_size=eval_batch, measure=measure, cost=cost)
    first = {k: v for k, v in points[0].items() if k != "point"}
    return {**first, **latency_metrics(latencies[0]), "points": json.dumps(points)}


def importance_report(model: torch.nn.Module, gated: Any, spec: SearchSpec,
                      folder: Path) -> dict[str, Any]:
    """Taylor scores of the trained ``model`` on ``importance.batches`` training batches,
    saved as ``folder``/importance.safetensors; returns their ``imp_*`` summary ({} and no
    file when ``importance.batches`` is 0).

    The batches are those of the epoch after the last one trained (``epoch = train.epochs``,
    the training seed): reproducible, and in an order training did not end on. They come
    through the gate (``gated``), so the forward/backward passes never run beside a
    measurement.
    """
    if spec.importance.batches == 0:
        return {}
    batches = gated.train_batches(spec.train.batch_size, epoch=spec.train.epochs,
                                  seed=spec.train.seed)
    with contextlib.closing(batches):  # releases the gate held by the last batch taken
        scores = taylor_importance(model, batches, num_batches=spec.importance.batches)
    save_scores(folder / IMPORTANCE, scores)
    return summarize(scores)


def trial_device(spec: SearchSpec) -> str:
    if spec.resources.gpus <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("resources.gpus > 0 but this worker sees no CUDA device "
                           f"(torch {torch.__version__}, cuda {torch.version.cuda})")
    return "cuda"


def train_candidate(config: dict[str, Any], *, spec: SearchSpec) -> None:
    """Ray Tune function trainable: reports once per epoch and checkpoints the weights.

    A candidate whose measured costs already break a constraint is reported once, marked
    ``infeasible``, and not trained.
    """
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    space = search_spaces.get(spec.space.name)
    candidate = space.config_from_dict(config["candidate"])
    device = trial_device(spec)
    data = load_data(spec.data.replace(device=device))
    with MeasurementGate(gate_name(spec.latency.device)) as gate:
        with gate.training_step():  # building is work too: not beside a measurement
            torch.manual_seed(spec.train.seed)
            model = space.build(candidate, num_classes=data.num_classes,
                                in_chans=data.in_chans)
        shape = (data.in_chans, data.img_size, data.img_size)
        adaptive = is_adaptive(candidate)
        cost = token_cost(model, shape, gate) if adaptive else None
        costs = {**measure_costs(model, spec, shape, gate, cost=cost), "trial": config["trial"]}
        broken = broken_cost_constraints(spec, costs, adaptive=adaptive)
        if broken:
            tune.report({**costs, "accuracy": 0.0, "epoch": 0,
                         "infeasible": "; ".join(broken)})
            return
        model.to(device)
        gated = GatedData(data, gate, device)

        def report(metrics: dict[str, Any]) -> None:
            last = metrics["epoch"] == spec.train.epochs
            final = budget_report(candidate, model, data, gated, spec, gate, cost) if (
                adaptive and last) else {}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, config["candidate"], input_info(data))
                if last:
                    final.update(importance_report(model, gated, spec, Path(folder)))
                tune.report({**metrics, **costs, **final},
                            checkpoint=tune.Checkpoint.from_directory(folder))

        fit(model, gated, spec.train.replace(device=device), report=report,
            loss_fn=objective_for(candidate, label_smoothing=spec.train.label_smoothing))


def input_info(data: Any) -> dict[str, Any]:
    """What the model expects as input: size, channels, normalisation, class names."""
    return {"img_size": data.img_size, "in_chans": data.in_chans, "mean": list(data.mean),
            "std": list(data.std), "num_classes": data.num_classes,
            "class_names": list(data.class_names), "dataset": data.describe().get("name")}


def save_checkpoint(folder: Path, model: torch.nn.Module, candidate: dict[str, Any],
                    inputs: dict[str, Any]) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CANDIDATE).write_text(json.dumps(candidate, sort_keys=True))
    (folder / INPUT).write_text(json.dumps(inputs, sort_keys=True))
