"""A machine-wide measurement lock that keeps latency measurements free of training noise.

Trials that train side by side on one machine share its cores, caches and memory bandwidth
(and, with fractional GPUs, a GPU): a latency measured while another trial trains is wrong
(and varies run to run). The lock is a pair of ``flock`` locks in the machine's temp folder,
shared by every search process on it, one pair per measured device ("cpu", or one per GPU):

- a training step holds ``busy`` shared (many trainers at once);
- a measurement takes ``intent`` exclusively, which stops new steps from starting, then
  ``busy`` exclusively, which waits for the steps in flight; it measures on an otherwise idle
  device and releases both.

The ``intent`` lock makes waiting measurements win over a stream of steps (no starvation).
Locks die with their process (and with :meth:`MeasurementLock.close`), so a crashed trial
never leaves the machine locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def lock_name(device: str) -> str:
    """``"cpu"``, or the GPU a CUDA measurement runs on (as this process sees it)."""
    if device == "cpu":
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").split(",")[0] or "all"
    return "cuda-" + re.sub(r"[^A-Za-z0-9_-]", "_", visible)


def _lock_dir(name: str) -> Path:
    root = Path(os.environ.get("VITNAS_LOCK_DIR", Path(tempfile.gettempdir()) / "vitnas-locks"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open_shared(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):  # another user's file: it is already shareable
        os.fchmod(fd, 0o666)  # the umask must not lock other users out
    return fd


class MeasurementLock:
    def __init__(self, name: str = "cpu", lock_dir: Path | None = None) -> None:
        folder = lock_dir or _lock_dir(name)
        self._intent = _open_shared(folder / "intent")
        self._busy = _open_shared(folder / "busy")

    def __enter__(self) -> MeasurementLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def training_step(self) -> Iterator[None]:
        fcntl.flock(self._intent, fcntl.LOCK_SH)  # waits while a measurement is pending
        fcntl.flock(self._busy, fcntl.LOCK_SH)
        fcntl.flock(self._intent, fcntl.LOCK_UN)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # closed already: the lock went with it
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
        """Release everything this process holds (closing the files drops their locks)."""
        for fd in (self._intent, self._busy):
            with contextlib.suppress(OSError):
                os.close(fd)
