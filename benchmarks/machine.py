"""Shared by the benchmark scripts: the machine header and writing the Markdown table."""

from __future__ import annotations

import datetime
import os
import platform
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
