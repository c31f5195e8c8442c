"""The measurement gate: a measurement waits for training steps in flight, holds new steps
back while it runs, and is not starved by a stream of steps. Real processes, real flock."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from pathlib import Path

from nas.measure_lock import MeasurementLock


def _trainer(lock_dir: str, log: mp.Queue, stop: mp.Event) -> None:
    gate = MeasurementLock(lock_dir=Path(lock_dir))
    while not stop.is_set():
        with gate.training_step():
            log.put(("step-start", time.monotonic()))
            time.sleep(0.05)
            log.put(("step-end", time.monotonic()))


def test_measurement_never_overlaps_a_training_step(tmp_path):
    ctx = mp.get_context("fork")
    log, stop = ctx.Queue(), ctx.Event()
    trainers = [ctx.Process(target=_trainer, args=(str(tmp_path), log, stop)) for _ in range(2)]
    for p in trainers:
        p.start()
    gate = MeasurementLock(lock_dir=tmp_path)
    windows, events = [], [log.get(timeout=30) for _ in range(6)]  # trainers are stepping
    for _ in range(3):
        with gate.measurement():
            start = time.monotonic()
            time.sleep(0.2)
            windows.append((start, time.monotonic()))
        time.sleep(0.1)
    stop.set()
    for p in trainers:
        p.join(timeout=10)
    while True:
        try:
            events.append(log.get(timeout=1))
        except queue.Empty:
            break
    starts = [t for kind, t in events if kind == "step-start"]
    ends = [t for kind, t in events if kind == "step-end"]
    assert len(windows) == 3 and len(starts) > 10  # measured despite the stream of steps
    for lo, hi in windows:
        assert not any(lo < t < hi for t in starts + ends), "a step ran during a measurement"
