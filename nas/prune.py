"""Pruned variants of a study's trials: ``nas prune``, and the pruning after a search.

A complete trial's weights and Taylor scores (trials/<n>/importance.safetensors) give a
physically smaller model of the same family (``trainers.pruning.prune``, one keep ratio for
every channel width the family can prune: Q/K, V and FFN channels for ViTs with MHSA, Q/K
and FFN channels for cascaded group attention; heads and depth are kept; or, with ``macs``,
the largest such keep whose model has at most that share of the trial's MACs: of its full,
all-token MACs for an adaptive trial). The variant is
optionally fine-tuned on the study's data (its ``train`` settings with ``epochs`` = the
fine-tune epochs, no warm-up: the weights are trained already; seeded with ``train.seed``),
evaluated on the validation split and measured as the search measures
(``nas.candidate.measure_costs``: params, MACs, latency through the machine-wide gate). An
adaptive trial is pruned too (widths only, so its adaptive part still works); like its
search trial it is evaluated and timed on real images at its trained knob values, but only
that point (point 0) becomes a row.

``--out`` writes an export folder (``nas.export.write_export``: ``load_exported`` reads and
verifies it). ``--add`` adds the variant to the study: a results row with origin "pruned",
``parent`` and ``keep``, and its files in trials/<id>/, so ``nas pareto`` and ``nas export``
treat it like any trial. Its id is 1 + the largest trial id in the table or among trials/
folders: not an Optuna trial (study.db never sees it). Add variants only while no search
writes the study (the search adds its own at its end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import search_spaces
from search_spaces.config import Config
from trainers.data import Data, load_data
from trainers.loop import evaluate
from trainers.losses import objective_for
from trainers.pruning import Pruned, TargetTooSmall, build_pruned, finetune, prune, prune_to_macs

from . import spec as specs
from .candidate import (
    GatedData,
    budget_report,
    candidate_cost,
    measure_costs,
    save_checkpoint,
)
from .export import (
    build_model,
    check_out_dir,
    complete_row,
    input_shape,
    trial_folder,
    weights_of,
    write_export,
)
from .importance_report import front_trials, trial_scores
from .measure_lock import MeasurementLock, lock_name
from .results import (
    SPEC,
    TRIALS,
    Printer,
    ResultsError,
    TableWriter,
    fmt,
    load_results,
    store_trial_files,
    trial_row,
)
from .sections import fail
from .spec import SearchSpec, SpecError


@dataclasses.dataclass(frozen=True)
class Variant:
    """A pruned (and maybe fine-tuned) trial: its ``parent`` results row (point 0), the
    pruned ``candidate`` config dict, its model (CPU, eval mode), measured ``metrics`` and
    fine-tune ``history``."""

    parent: dict[str, Any]
    keep: float
    finetune: int
    candidate: dict[str, Any]
    inputs: dict[str, Any]
    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def space(self) -> str:
        return str(self.parent["space"])


def check_request(keep: float | None, finetune_epochs: int, macs: float | None = None) -> None:
    if (keep is None) == (macs is None):
        fail("--keep", keep, "give exactly one of --keep R and --macs F")
    if keep is not None and not (isinstance(keep, numbers.Real) and 0 < keep <= 1):
        fail("--keep", keep, "must be in (0, 1]: the share of every prunable width kept")
    if macs is not None and not (isinstance(macs, numbers.Real) and 0 < macs <= 1):
        fail("--macs", macs, "must be in (0, 1]: the share of the trial's (full) MACs kept")
    if finetune_epochs < 0:
        fail("--finetune", finetune_epochs, "must be >= 0 (epochs)")


def _device(spec: SearchSpec) -> str:
    if spec.latency.device == "cuda" and not torch.cuda.is_available():
        fail("latency.device", "cuda", "the study measured latency on CUDA, and this "
             "machine has no CUDA device to measure the variant on")
    return "cuda" if spec.resources.gpus > 0 and torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _threads(spec: SearchSpec) -> Iterator[None]:
    """The CPU threads the search's trials had together on this machine (the search is
    over, or another process's search is gated apart), restored afterwards."""
    previous = torch.get_num_threads()
    share = max(1, int(spec.resources.cpus * spec.concurrent_trials))
    torch.set_num_threads(min(os.cpu_count() or 1, share))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_parent(study_dir: Path, trial: int) -> tuple[dict[str, Any], Config, nn.Module,
                                                      dict[str, torch.Tensor], dict[str, Any]]:
    """A complete trial's row, config, model (its final weights), scores and input info."""
    row = complete_row(study_dir, trial)
    scores = trial_scores(study_dir, trial)
    src = trial_folder(study_dir, weights_of(row))
    inputs = json.loads((src / "input.json").read_text())
    candidate = json.loads((src / "candidate.json").read_text())
    model = build_model(row["space"], candidate, inputs)
    model.load_state_dict(load_file(str(src / "model.safetensors")))
    config = search_spaces.get(row["space"]).config_from_dict(candidate)
    return row, config, model.eval(), scores, inputs


def _finetuned(pruned: Pruned, data: Data, spec: SearchSpec, epochs: int,
               device: str) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The pruned model, trained ``epochs`` more epochs (none: as pruned)."""
    torch.manual_seed(spec.train.seed)  # dropout and the like, as a trial seeds its build
    if epochs == 0:
        return build_pruned(pruned, num_classes=data.num_classes, in_chans=data.in_chans), []
    settings = spec.train.replace(epochs=epochs, warmup_epochs=0.0, device=device)
    adaptive = search_spaces.get(pruned.config.KIND).adaptive(pruned.config)
    loss_fn = objective_for(adaptive, label_smoothing=spec.train.label_smoothing)
    model, result = finetune(pruned, data, settings, loss_fn=loss_fn)
    return model, result.history


def measure_variant(config: Config, model: nn.Module, data: Data, spec: SearchSpec,
                    device: str) -> dict[str, Any]:
    """Accuracy, val_loss, params, MACs, latency (+ provenance) as the search measures them;
    an adaptive model at its trained knob values, on real images. Leaves the model on the
    CPU."""
    shape = data.input_shape
    adaptive = search_spaces.get(spec.space.name).adaptive(config)
    model.cpu().eval()
    with MeasurementLock(lock_name(spec.latency.device)) as gate:
        cost = candidate_cost(spec, config, model, shape, gate) if adaptive else None
        costs = measure_costs(model, spec, shape, gate, config=config, cost=cost)
        gated = GatedData(data, gate, device)
        model.to(device)
        if adaptive is not None:  # point 0 only: its trained knobs, through the budget code
            point = budget_report(config, adaptive, model, data, gated, spec, gate, cost,
                                  points=1)
            result = {**costs, **{k: v for k, v in point.items() if k != "points"}}
        else:
            val = evaluate(model, gated.val_batches(spec.train.eval_batch()))
            result = {**costs, "accuracy": val["accuracy"], "val_loss": val["loss"]}
    model.cpu()
    return result


def _pruned(config: Config, model: nn.Module, scores: dict[str, torch.Tensor],
            inputs: dict[str, Any], keep: float | None, macs: float | None) -> Pruned:
    """``keep`` of every prunable width, or the largest uniform keep ratio whose model has at
    most ``macs`` of the original's (full) MACs."""
    if keep is not None:
        return prune(config, model, scores, keep)
    try:
        return prune_to_macs(config, model, scores, input_shape=input_shape(inputs),
                             fraction=macs, num_classes=inputs["num_classes"])
    except TargetTooSmall as err:  # below what one channel per group leaves
        fail("--macs", macs, str(err))


def make_variant(study_dir: Path, spec: SearchSpec, trial: int, keep: float | None,
                 finetune_epochs: int, macs: float | None = None) -> Variant:
    """Prune ``trial`` to ``keep`` (or to ``macs`` of its MACs), fine-tune, evaluate and
    measure (see the module doc). The variant's ``keep`` is the ratio applied."""
    row, config, model, scores, inputs = load_parent(study_dir, trial)
    try:
        pruned = _pruned(config, model, scores, inputs, keep, macs)
    except ValueError as err:  # scores that do not fit the model: a damaged trial folder
        if isinstance(err, SpecError):
            raise
        raise ResultsError(f"--trial = {trial}: cannot prune it: {err}") from None
    keep = min(pruned.keep.values(), default=1.0)
    device = _device(spec)
    data = load_data(spec.data.replace(device=device))
    net, history = _finetuned(pruned, data, spec, finetune_epochs, device)
    metrics = measure_variant(pruned.config, net, data, spec, device)
    return Variant(parent=row, keep=float(keep), finetune=finetune_epochs,
                   candidate=pruned.config.to_dict(), inputs=inputs, model=net.eval(),
                   metrics=metrics, history=history)


def next_trial_id(study_dir: Path) -> int:
    """1 + the largest trial id in the table or among the trials/ folders."""
    ids = load_results(study_dir)["trial"].astype(int).tolist()
    ids += [int(p.name) for p in (study_dir / TRIALS).glob("*") if p.name.isdigit()]
    return max(ids, default=-1) + 1


def add_variant(study_dir: Path, variant: Variant, trial_id: int) -> dict[str, Any]:
    """Write trials/<trial_id>/ and append the variant's row; returns the row."""
    folder = store_trial_files(study_dir, trial_id, None, variant.history)
    save_checkpoint(folder, variant.model, variant.candidate, variant.inputs)
    key = search_spaces.get(variant.space).config_from_dict(variant.candidate).key()
    row = trial_row(trial_id, "complete", variant.space, variant.candidate, key,
                    variant.metrics, variant.history, origin="pruned")
    row.update(parent=int(variant.parent["trial"]), keep=variant.keep)
    TableWriter(study_dir, resume=True).add([row])
    return row


def export_variant(study_dir: Path, variant: Variant, out: Path,
                   trial_id: int | None) -> Path:
    parent = int(variant.parent["trial"])
    key = search_spaces.get(variant.space).config_from_dict(variant.candidate).key()
    source = {"study": study_dir.name, "trial": trial_id, "pruned_from": parent,
              "keep": variant.keep, "finetune": variant.finetune, "key": key}
    metrics = {**variant.metrics, "trial": trial_id, "origin": "pruned", "parent": parent,
               "keep": variant.keep, "key": key, "history": variant.history}
    return write_export(out, variant.model, space=variant.space, candidate=variant.candidate,
                        inputs=variant.inputs, source=source, metrics=metrics)


def prune_trial(study_dir: Path, trial: int, keep: float | None, *, finetune: int = 0,
                out: Path | None = None, add: bool = False, spec: SearchSpec | None = None,
                macs: float | None = None) -> tuple[Variant, int | None]:
    """``nas prune``: the variant, written to ``out`` and/or added to the study (its new
    trial id, else None). ``keep`` or ``macs`` (a share of the trial's MACs) says how far.
    ``spec``: the study's (default: read from its spec.yaml)."""
    check_request(keep, finetune, macs)
    if out is None and not add:
        fail("--out", None, "give an export folder (--out DIR) and/or --add")
    if out is not None:
        check_out_dir(out)
    spec = spec or specs.load(study_dir / SPEC)
    specs.check_data(spec)  # the study's data must be here (fine-tune, evaluation)
    with _threads(spec):
        variant = make_variant(study_dir, spec, trial, keep, finetune, macs)
    trial_id = next_trial_id(study_dir) if add else None
    if out is not None:
        export_variant(study_dir, variant, out, trial_id)
    if add:
        add_variant(study_dir, variant, trial_id)
    return variant, trial_id


def summary_line(variant: Variant, trial_id: int | None, out: Path | None) -> str:
    """``pruned trial 3 (keep 0.5, fine-tuned 1 epochs): params a -> b, MACs ...``."""
    before, after = variant.parent, variant.metrics

    def change(name: str) -> str:
        old, new = before.get(name), after.get(name)
        as_int = [int(v) if isinstance(v, numbers.Real) and math.isfinite(v) else v
                  for v in (old, new)]
        return f"{fmt(as_int[0])} -> {fmt(as_int[1])}"

    where = "".join([f"; added as trial {trial_id}" if trial_id is not None else "",
                     f"; exported to {out}" if out is not None else ""])
    return (f"pruned trial {int(before['trial'])} (keep {variant.keep:g}, fine-tuned "
            f"{variant.finetune} epochs): params {change('params')}, MACs {change('macs')}, "
            f"accuracy {fmt(float(before['accuracy']))} -> {fmt(after['accuracy'])}{where}")


def prune_best(study_dir: Path, spec: SearchSpec, *, printer: Printer = print) -> list[int]:
    """After a search: the ``pruning.best`` best trials of the front (by the first objective;
    trials without scores skipped) pruned to ``pruning.keep``, fine-tuned
    ``pruning.finetune_epochs`` and added as rows. Returns the new trial ids; a variant that
    fails is reported and skipped (the search's results stay)."""
    chosen = front_trials(study_dir)[0][:spec.pruning.best]
    if not chosen:
        printer("pruning: no trial on the front has importance scores; nothing pruned")
        return []
    added = []
    for trial in chosen:
        printer(f"pruning trial {trial}: keep {spec.pruning.keep:g} of its widths, fine-tune "
                f"{spec.pruning.finetune_epochs} epochs")
        try:
            variant, new = prune_trial(study_dir, trial, spec.pruning.keep, add=True,
                                       finetune=spec.pruning.finetune_epochs, spec=spec)
        except Exception as err:  # one failed variant must not fail the finished search
            printer(f"  trial {trial}: not pruned: {type(err).__name__}: {err}")
            continue
        printer(f"  {summary_line(variant, new, None)}")
        added.append(new)
    return added
