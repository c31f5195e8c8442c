"""Shared by the benchmarks that start from a trained parent: train one and write it as an
export folder (config.json + safetensors + probe), the ``init`` of what is derived from it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

import search_spaces
from search_spaces.config import Config
from trainers.data import Data
from trainers.loop import FitSettings, evaluate, fit


def progress(tag: str):
    """A ``fit`` report that prints one line per epoch."""
    start = time.perf_counter()

    def report(metrics: dict) -> None:
        print(f"{tag} epoch {metrics['epoch']}: train_loss={metrics['train_loss']:.4f} "
              f"val_acc={metrics['accuracy']:.4f} ({time.perf_counter() - start:.0f}s)",
              flush=True)

    return report


def train_parent(config: Config, folder: Path, data: Data, settings: FitSettings, *,
                 benchmark: str, seed: int = 0) -> None:
    """Train ``config`` from scratch on ``data`` and write it as an export folder."""
    from nas.export import write_export  # starts no Ray

    fam = search_spaces.get(config.KIND)
    torch.manual_seed(seed)
    model = fam.build(config, num_classes=data.num_classes, in_chans=data.in_chans)
    result = fit(model, data, settings, report=progress(f"{config.KIND} parent"))
    val = evaluate(model, data.val_batches(256))
    inputs = {"img_size": data.img_size, "in_chans": data.in_chans, "mean": list(data.mean),
              "std": list(data.std), "num_classes": data.num_classes,
              "class_names": list(data.class_names), "dataset": "fashion-mnist"}
    metrics = {"accuracy": val["accuracy"], "val_loss": val["loss"],
               "train_time_s": result.train_time_s, "history": result.history}
    write_export(folder, model.eval(), space=config.KIND, candidate=config.to_dict(),
                 inputs=inputs, source={"benchmark": benchmark, "role": "parent"},
                 metrics=metrics)
    print(f"{config.KIND} parent: val accuracy {val['accuracy']:.4f} in "
          f"{result.train_time_s:.0f}s -> {folder}", flush=True)
