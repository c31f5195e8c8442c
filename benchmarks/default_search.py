"""The default search end to end: wall time, trials completed, and how stable its latency
figures are. Runs `nas search` (configs/quick.yaml) `--runs` times under fresh study names,
then prints a table and writes results/benchmarks/default_search.md.

    .ci/in-env python benchmarks/default_search.py [--runs 2]

The latency gate (nas/measure_lock.py) should make the same candidate's latency agree across runs,
although other trials train beside it: the table reports, for candidates that two runs both
drew (same config key), the relative difference of their latency medians.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

from nas import load_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_once(folder: Path, name: str) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas", "search", "--name", name, "--results-dir",
                    str(folder)], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start, load_results(folder / name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vitnas-default-"))
    rows, frames = [], []
    for i in range(args.runs):
        wall, frame = run_once(folder, f"quick-{i}")
        frames.append(frame.assign(run=i))
        done = frame[frame["status"] == "complete"]
        rows.append(f"| {i} | {wall:.0f} | {len(done)} / {len(frame)} | "
                    f"{done['accuracy'].max():.3f} | {done['latency_ms'].min():.2f} | "
                    f"{100 * done['latency_spread'].median():.1f}% |")
    shutil.rmtree(folder, ignore_errors=True)
    both = pd.concat(frames)
    same = both.groupby("key").filter(lambda g: g["run"].nunique() > 1)
    rel = same.groupby("key")["latency_ms"].agg(lambda s: (s.max() - s.min()) / s.median())
    lines = ["`nas search` with no spec (configs/quick.yaml: 12 trials, 3 epochs, 4,000 "
             "Fashion-MNIST images, 2 trials side by side, one thread each; latency batch 16, "
             "one thread).", "",
             "| run | wall s | trials complete | best accuracy | fastest latency ms | "
             "median within-trial spread of round medians |", "|---|---|---|---|---|---|",
             *rows, ""]
    if len(rel):
        lines.append(f"Same candidate in different runs ({len(rel)} configs): latency differs "
                     f"by {100 * rel.median():.1f}% (median), {100 * rel.max():.1f}% (max).")
    else:
        lines.append("No candidate was drawn in two runs: no cross-run latency comparison.")
    write_table("default_search", header("Default search") + lines)


if __name__ == "__main__":
    main()
