"""One candidate's measurements, budget points, importance and files; imports no Ray.

Shared by the Ray trainable (nas/trainable.py) and ``nas prune`` (nas/prune.py), which must
not start Ray. Adaptive candidates (``SearchSpace.adaptive(config)`` is not None) cost what
their data makes them run: before training only their parameters and full MACs are known,
and after training they are evaluated at ``budget.points`` operating points
(trainers.budget); the report carries point 0 (the trained knob values: what Optuna sees),
its knob values as JSON (``knobs``) and every point as JSON (``points``: one row each).

Latency is measured by a :data:`Timer`: :class:`LocalTimer` (the default) in this process
through the machine-wide gate, or the study's latency target (nas/latency_target.py,
``latency.node_resource``); either way the provenance names the host and Ray node that
measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from search_spaces.adaptive import Adaptive, CostModel
from search_spaces.config import Config
from search_spaces.structure import Structure
from trainers.budget import budget_points, cost_model, operating_points
from trainers.importance import save_scores, summarize, taylor_importance
from trainers.measure import Latency, count_macs, count_params, measure_latency

from .measure_lock import MeasurementLock
from .results import IMPORTANCE, RESUME_ONLY
from .spec import COSTS, STATIC_COSTS, SearchSpec

WEIGHTS = "model.safetensors"
CANDIDATE = "candidate.json"
INPUT = "input.json"
INIT = "init.json"  # which weights a warm-started candidate began from, what started fresh
OPTIMIZER, OPTIMIZER_JSON, PROGRESS = RESUME_ONLY  # to resume training from a checkpoint


class GatedData:
    """The candidate's data, each training and validation step held inside the gate, so
    another trial's latency measurement never runs beside this trial's work."""

    def __init__(self, data: Any, gate: MeasurementLock, device: str) -> None:
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

    def calibration_batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._gated(self._data.calibration_batches(*args, **kwargs))


def timed(model: torch.nn.Module, spec: SearchSpec, input_shape: tuple[int, ...],
          gate: MeasurementLock, images: torch.Tensor | None = None) -> Latency:
    """The spec's latency measurement of ``model``, on an otherwise idle device: in eager
    PyTorch, or (``latency.runtime: onnxruntime``) as its ONNX graph in ONNX Runtime
    (exported in memory; OnnxError if it cannot be, or computes other logits). Adaptive
    models, timed on real ``images``, always run in PyTorch: a traced graph would not skip
    the work their cost counts (the provenance's ``runtime`` says which ran)."""
    lat = spec.latency
    if lat.runtime == "onnxruntime" and images is None:
        from trainers.onnx_export import measure_onnx_latency, to_onnx, verify
        with gate.training_step():  # exporting is work like training: keep it apart
            graph = to_onnx(model, input_shape)
            verify(model, graph, torch.randn(2, *input_shape))
        with gate.measurement():
            return measure_onnx_latency(
                graph, input_shape=input_shape, batch_size=lat.batch_size, device=lat.device,
                threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats,
                rounds=lat.rounds)
    with gate.measurement():
        return measure_latency(
            model, input_shape=input_shape, batch_size=lat.batch_size, device=lat.device,
            dtype=getattr(torch, lat.dtype), threads=lat.threads, warmup=lat.warmup,
            repeats=lat.repeats, rounds=lat.rounds, inputs=images)


def placed(latency: Latency, **where: Any) -> Latency:
    """``latency`` with where it was measured added to its provenance (host, Ray node,
    ``target``: "trial" or the latency target's resource, ``cache``: hit or miss)."""
    return dataclasses.replace(latency, provenance={**latency.provenance, **where})


# Measures a model (built from the Config given with it; timed on ``images`` if given).
Timer = Callable[[torch.nn.Module, Config, torch.Tensor | None], Latency]


class LocalTimer:
    """The default :data:`Timer`: measured here, in this process, through the gate.
    ``node``: the Ray node this process runs on (None outside Ray)."""

    def __init__(self, spec: SearchSpec, input_shape: tuple[int, ...], gate: MeasurementLock,
                 node: str | None = None) -> None:
        self.spec, self.input_shape, self.gate, self.node = spec, input_shape, gate, node

    def __call__(self, model: torch.nn.Module, config: Config,
                 images: torch.Tensor | None = None) -> Latency:
        latency = timed(model, self.spec, self.input_shape, self.gate, images)
        return placed(latency, host=socket.gethostname(), node=self.node, target="trial")


def candidate_cost(spec: SearchSpec, config: Config, model: torch.nn.Module,
                   input_shape: tuple[int, ...], gate: MeasurementLock) -> CostModel:
    """An adaptive model's cost model (it depends on the architecture only: counted once
    per trial, before training)."""
    with gate.training_step():  # tracing for MACs is work like training: keep it apart
        return cost_model(spec.space.name, config, model, input_shape)


def measure_costs(model: torch.nn.Module, spec: SearchSpec, input_shape: tuple[int, ...],
                  gate: MeasurementLock, *, config: Config, cost: CostModel | None = None,
                  timer: Timer | None = None) -> dict[str, Any]:
    """Params, MACs and latency of ``model`` (built from ``config``; timed by ``timer``,
    default :class:`LocalTimer`). An adaptive model (given with its ``cost``) gets params
    and its full MACs only: what it runs (and so its latency) depends on data it has not
    learnt yet."""
    if cost is not None:
        macs = cost.full()
        return {"params": count_params(model), "macs": macs, "full_macs": macs}
    with gate.training_step():  # tracing for MACs is work like training: keep it apart
        macs = count_macs(model, input_shape)
    costs = {"params": count_params(model), "macs": macs, "full_macs": macs}
    timer = timer or LocalTimer(spec, input_shape, gate)
    return {**costs, **timer(model, config, None).metrics()}


def broken_cost_constraints(spec: SearchSpec, costs: dict[str, Any], *,
                            adaptive: bool = False) -> list[str]:
    """The spec's constraints on costs known before training that ``costs`` break."""
    known = STATIC_COSTS if adaptive else COSTS
    return [f"{c} ({c.metric}={costs[c.metric]:.4g})" for c in spec.constraints
            if c.metric in known and not c.holds(costs[c.metric])]


def budget_report(config: Config, adaptive: Adaptive, model: torch.nn.Module, data: Any,
                  gated: Any, spec: SearchSpec, gate: MeasurementLock, cost: CostModel,
                  points: int | None = None, timer: Timer | None = None) -> dict[str, Any]:
    """Point 0's accuracy, costs and knob values (``knobs``, JSON), and every one of the
    ``points`` (default ``budget.points``) operating points as JSON under ``points``; each
    point's model timed by ``timer`` (default :class:`LocalTimer`) over ``latency.images``
    real validation images (all of them where the split is smaller)."""
    images = next(iter(data.val_batches(spec.latency.images)))[0]
    knobs = operating_points(spec.space.name, config, model, gated,
                             points=points or spec.budget.points, limits=spec.budget.limits,
                             batch_size=spec.train.eval_batch())
    timer = timer or LocalTimer(spec, data.input_shape, gate)
    configs = iter([adaptive.with_knobs(k) for k in knobs])  # budget_points: one per point

    def measure(net: torch.nn.Module) -> Latency:
        return timer(net, next(configs), images)

    rows = budget_points(spec.space.name, config, model, gated, knobs=knobs,
                         batch_size=spec.train.eval_batch(), measure=measure, cost=cost)
    first = {k: v for k, v in rows[0].items() if k not in ("point", "knobs")}
    return {**first, "knobs": json.dumps(rows[0]["knobs"], sort_keys=True),
            "points": json.dumps(rows)}


def importance_report(model: torch.nn.Module, gated: Any, spec: SearchSpec, folder: Path,
                      structure: Structure) -> dict[str, Any]:
    """Taylor scores of the trained ``model`` (at its trained knobs: its structure's
    ``answers`` names the logits it can answer with) on ``importance.batches`` training batches,
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
        scores = taylor_importance(model, batches, num_batches=spec.importance.batches,
                                   answers=structure.answers)
    save_scores(folder / IMPORTANCE, scores)
    return summarize(scores)


def trial_device(spec: SearchSpec) -> str:
    if spec.resources.gpus <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("resources.gpus > 0 but this worker sees no CUDA device "
                           f"(torch {torch.__version__}, cuda {torch.version.cuda})")
    return "cuda"


def input_info(data: Any) -> dict[str, Any]:
    """What the model expects as input: size, channels, normalisation, class names."""
    return {"img_size": data.img_size, "in_chans": data.in_chans, "mean": list(data.mean),
            "std": list(data.std), "num_classes": data.num_classes,
            "class_names": list(data.class_names), "dataset": data.describe().get("name")}


def save_checkpoint(folder: Path, model: torch.nn.Module, candidate: dict[str, Any],
                    inputs: dict[str, Any], init: dict[str, Any] | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    history: list[dict[str, Any]] | None = None) -> None:
    """The model's weights, its config and input conventions (and ``init``, the warm start
    record, when there is one) as files of ``folder``; with ``optimizer`` and ``history``
    (the epochs done) also what resuming the training needs."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CANDIDATE).write_text(json.dumps(candidate, sort_keys=True))
    (folder / INPUT).write_text(json.dumps(inputs, sort_keys=True))
    if init:
        (folder / INIT).write_text(json.dumps(init, indent=1, sort_keys=True))
    if optimizer is not None:
        save_optimizer(folder, optimizer.state_dict())
    if history is not None:
        (folder / PROGRESS).write_text(json.dumps({"epoch": len(history), "history": history}))


def save_optimizer(folder: Path, state: dict[str, Any]) -> None:
    """An optimizer's state dict without pickle: its tensors as safetensors (``<param>.<name>``),
    the rest (param groups, scalar state) as JSON."""
    tensors, scalars = {}, {}
    for param, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[name] = value
    save_file(tensors, str(folder / OPTIMIZER))
    (folder / OPTIMIZER_JSON).write_text(json.dumps({"param_groups": state["param_groups"],
                                                     "scalars": scalars}))


def load_optimizer(folder: Path) -> dict[str, Any]:
    """The state dict :func:`save_optimizer` wrote."""
    meta = json.loads((folder / OPTIMIZER_JSON).read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in load_file(str(folder / OPTIMIZER)).items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = tensor
    for param, entries in meta["scalars"].items():
        state.setdefault(int(param), {}).update(entries)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in group.items()} for group in meta["param_groups"]]  # betas
    return {"state": state, "param_groups": groups}


@dataclasses.dataclass(frozen=True)
class Progress:
    """A checkpoint's training state: epochs done, their metrics, weights, optimizer."""

    epoch: int
    history: list[dict[str, Any]]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def load_progress(folder: Path) -> Progress | None:
    """The training state a checkpoint folder holds (None if it holds none)."""
    if not (folder / PROGRESS).is_file():
        return None
    progress = json.loads((folder / PROGRESS).read_text())
    optimizer = load_optimizer(folder) if (folder / OPTIMIZER_JSON).is_file() else None
    return Progress(epoch=int(progress["epoch"]), history=list(progress["history"]),
                    weights=load_file(str(folder / WEIGHTS)), optimizer=optimizer)
