"""Shared by the benchmark scripts: the machine header and writing the Markdown table."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from trainers.measure import describe_device, sample_batches, summarise_sample

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
SAMPLE = 256  # validation images an adaptive model's latency is the mean over


def header(title: str) -> list[str]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return [f"# {title}", "",
            f"Machine: {describe_device('cpu')}, {os.cpu_count()} cores, GPU: {gpu}; torch "
            f"{torch.__version__}, Python {platform.python_version()}; "
            f"{datetime.date.today().isoformat()}.", ""]


def write_table(name: str, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.md"
    path.write_text(text)
    return path


def _timed(run, x: torch.Tensor, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(runs: Mapping[str, Callable], x: torch.Tensor, *, repeats: int,
                warmup: int = 3, batch: int | None = None) -> dict[str, float]:
    """Seconds per call of each run, interleaved so machine drift hits all alike.

    ``batch`` None: ``x`` is one batch; the median of ``repeats`` calls (a static model).
    ``batch`` given: ``x`` is a sample of images cut into batches of ``batch`` (the last one
    filled up from the first images); each repeat is one pass over every batch, and a run's
    time is the mean over batches of each batch's median (a data-dependent model's cost
    differs per image: the protocol of ``trainers.measure.measure_latency`` with inputs)."""
    cuda = x.device.type == "cuda"
    batches = [x] if batch is None else sample_batches(x, batch)
    times: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in runs}
    with torch.inference_mode():
        for i in range(warmup):
            for run in runs.values():
                run(batches[i % len(batches)])
        for _ in range(repeats):
            for b, xb in enumerate(batches):
                for name, run in runs.items():
                    times[name][b].append(_timed(run, xb, cuda))
    return {name: summarise_sample([list(r) for r in zip(*per_batch, strict=True)],
                                   batch_size=len(batches[0]), provenance={}).mean_ms
            for name, per_batch in times.items()}
