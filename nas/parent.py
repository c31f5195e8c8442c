"""The parent of an inherited search (``init.inherit``): its Taylor importance, once per study.

The driver scores the parent (trainers.importance, on ``init.importance_batches`` training
batches of the spec's data; the family's ``Structure.answers`` names its logits) before any
trial, and writes the scores into the study folder (``parent_importance.safetensors``, with
the parent's sha256 in its metadata). A resumed driver, or a second search of the same study,
reads them back when the sha256 matches; every trial gets them through Ray's object store
(``tune.with_parameters``), so a worker on another node needs no access to the study folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors import safe_open

from trainers.data import load_data
from trainers.importance import load_scores, save_scores, taylor_importance
from trainers.inherit import read_parent
from trainers.warmstart import read_init

from .results import Printer
from .spec import SearchSpec

PARENT_IMPORTANCE = "parent_importance.safetensors"


def _recorded_sha(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("parent_sha256")


def parent_importance(spec: SearchSpec, study_dir: Path,
                      printer: Printer = print) -> dict[str, torch.Tensor]:
    """The parent's scores: the study's record of them, or computed now and recorded."""
    path = study_dir / PARENT_IMPORTANCE
    sha = read_init(spec.init.weights).sha256
    if path.is_file() and _recorded_sha(path) == sha:
        printer(f"parent importance: {path} (recorded for parent sha256 {sha[:12]})")
        return load_scores(path)
    started = time.monotonic()
    parent = read_parent(spec.init.weights)
    data = load_data(spec.data)
    batches = data.train_batches(spec.train.batch_size, epoch=0, seed=spec.train.seed)
    scores = taylor_importance(parent.model, batches, num_batches=spec.init.importance_batches,
                               answers=parent.space.structure(parent.config).answers)
    tmp = path.with_suffix(".tmp")
    save_scores(tmp, scores, metadata={"parent_sha256": sha,
                                       "batches": str(spec.init.importance_batches)})
    tmp.replace(path)
    printer(f"parent importance: {spec.init.importance_batches} batches of "
            f"{spec.train.batch_size} in {time.monotonic() - started:.1f}s -> {path}")
    return scores
