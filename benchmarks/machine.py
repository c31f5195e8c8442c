"""Shared by the benchmark scripts: the machine header and writing the Markdown table."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from trainers.measure import describe_device

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


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
                warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each run, interleaved so machine drift hits all alike."""
    cuda = x.device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs.values():
                run(x)
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(_timed(run, x, cuda))
    return {name: statistics.median(t) for name, t in times.items()}
