"""Does training beside a measurement disturb it, and does the gate fix that?

One candidate's latency (batch 16, one thread) is measured `--repeats` times in three
settings: the machine idle; while another process trains a model (no gate); and while that
process trains through the measurement gate (nas/measure_lock.py), as search trials do. Prints the
median and the spread of those repeated measurements, writes results/benchmarks/latency_gate.md.

    .ci/in-env python benchmarks/latency_gate.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

import search_spaces  # noqa: E402
from nas.measure_lock import MeasurementLock  # noqa: E402
from trainers.measure import measure_latency  # noqa: E402

SHAPE = (1, 28, 28)


def candidate() -> torch.nn.Module:
    space = search_spaces.get("efficientvit")
    cfg = space.config_cls(img_size=28, stem_stride=4, embed_dims=(64, 96, 128),
                           depths=(1, 2, 2), num_heads=(2, 2, 4))
    return space.build(cfg, num_classes=10, in_chans=1)


def trainer(lock_dir: str | None, stop: mp.Event, threads: int) -> None:
    """Trains a candidate on random data until told to stop, like a trial."""
    torch.set_num_threads(threads)
    model = candidate()
    gate = MeasurementLock(lock_dir=Path(lock_dir)) if lock_dir else None
    opt = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    while not stop.is_set():
        if gate:
            with gate.training_step():
                _step(model, opt, x, y)
        else:
            _step(model, opt, x, y)


def _step(model, opt, x, y) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def measure(model: torch.nn.Module, repeats: int, gate: MeasurementLock | None) -> list[float]:
    out = []
    for _ in range(repeats):
        with gate.measurement() if gate else contextlib.nullcontext():
            out.append(measure_latency(model, input_shape=SHAPE, repeats=15, rounds=1).median_ms)
        time.sleep(0.2)  # let the trainer run between measurements, as in a search
    return out


def setting(model, repeats: int, busy: int, gated: bool) -> list[float]:
    """``busy``: threads of the process training beside the measurement (0: none)."""
    if not busy:
        return measure(model, repeats, None)
    lock_dir = tempfile.mkdtemp(prefix="vitnas-gate-") if gated else None
    stop = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=trainer, args=(lock_dir, stop, busy))
    proc.start()
    time.sleep(5)  # the trainer is importing and warming up
    try:
        return measure(model, repeats, MeasurementLock(lock_dir=Path(lock_dir)) if gated else None)
    finally:
        stop.set()
        proc.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = candidate()
    rows = []
    idle = None
    settings = [("idle machine", 0, False)]
    for threads in (1, 2):
        what = f"another process training on {threads} thread{'s' * (threads > 1)}"
        settings += [(f"{what}, no gate", threads, False),
                     (f"{what}, through the gate", threads, True)]
    for label, busy, gated in settings:
        times = setting(model, args.repeats, busy, gated)
        med = statistics.median(times)
        idle = idle or med
        rows.append(f"| {label} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | "
                    f"{100 * (max(times) - min(times)) / med:.1f}% | {med / idle:.2f}x |")
    lines = [f"EfficientViT candidate at 28x28 (64/96/128 wide), batch 16, one thread; "
             f"{args.repeats} repeated measurements per setting (each the median of 15 runs).",
             "", "| setting | median ms | min | max | spread (max-min)/median | vs idle |",
             "|---|---|---|---|---|---|", *rows, "",
             f"{os.cpu_count()} cores: with one thread each, the measurement and the trainer "
             "each have a core; with two trainer threads the cores are oversubscribed."]
    write_table("latency_gate", header("Latency measurements beside training") + lines)


if __name__ == "__main__":
    main()
