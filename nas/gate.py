"""A machine-wide gate that keeps latency measurements free of training noise.

Trials that train side by side on one machine share its cores, caches and memory bandwidth:
a latency measured while another trial trains is wrong (and varies run to run). The gate is
a pair of ``flock`` locks in the machine's temp folder, shared by every search process on it:

- a training step holds ``busy`` shared (many trainers at once);
- a measurement takes ``intent`` exclusively, which stops new steps from starting, then
  ``busy`` exclusively, which waits for the steps in flight; it measures on an otherwise idle
  machine and releases both.

The ``intent`` lock makes waiting measurements win over a stream of steps (no starvation).
Locks die with their process, so a crashed trial never leaves the machine locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _lock_dir() -> Path:
    path = Path(os.environ.get("VITNAS_LOCK_DIR", Path(tempfile.gettempdir()) / "vitnas-locks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class MeasurementGate:
    def __init__(self, lock_dir: Path | None = None) -> None:
        folder = lock_dir or _lock_dir()
        self._intent = os.open(folder / "intent", os.O_RDWR | os.O_CREAT, 0o666)
        self._busy = os.open(folder / "busy", os.O_RDWR | os.O_CREAT, 0o666)

    @contextlib.contextmanager
    def training_step(self) -> Iterator[None]:
        fcntl.flock(self._intent, fcntl.LOCK_SH)  # waits while a measurement is pending
        fcntl.flock(self._busy, fcntl.LOCK_SH)
        fcntl.flock(self._intent, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._busy, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def measurement(self) -> Iterator[None]:
        fcntl.flock(self._intent, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._busy, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._busy, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._intent, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._intent)
        os.close(self._busy)
