"""Which Ray a search runs on: a private local instance, or the cluster the spec names.

``ray.init()`` without an address attaches to any cluster started on the machine with
``ray start``, even a dead one whose address file was left behind (then it hangs). So a
search without ``ray_address`` always starts its own instance (``address="local"``), and one
with ``ray_address`` (``auto`` or host:port) is checked to answer within seconds first: an
unreachable cluster is one clear error, never a hang. On a cluster, trial output stays in
the workers' logs and Ray's error reports go to results/<study>/ray-errors.log (the driver
prints only the search's own progress lines), and trial storage must be reachable from
every node.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs
import ray

from .sections import SpecError
from .spec import SearchSpec

CONNECT_TIMEOUT_S = 3.0


def reachable_address(given: str) -> str:
    """host:port of the cluster ``given`` names (``auto``: the address file or a running
    local cluster), checked to accept a connection; SpecError within seconds otherwise."""
    from ray._private import services  # Ray's own resolution of "auto" and host:port

    try:
        address = services.canonicalize_bootstrap_address(given)
    except (ConnectionError, ValueError) as err:
        raise SpecError(f"ray_address = {given!r}: {err}") from None
    if address is None:
        raise SpecError(f"ray_address = {given!r}: no Ray cluster found; start one with "
                        "`ray start --head`, or leave ray_address out for a local search")
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise SpecError(f"ray_address = {given!r}: no Ray cluster answers at {address} "
                        f"({err}); is it running? (a stale address file is left by a cluster "
                        "that died)") from None
    return address


def start_ray(spec: SearchSpec, log: Path | None = None) -> bool:
    """Start a private local Ray, or connect to the spec's cluster; True when started here
    (the caller shuts it down). Ray's own error reports (a dead raylet's state dump, say)
    go to ``log`` instead of the driver's output."""
    # Trials checkpoint every epoch on purpose (final weights survive early stopping).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's tables: our progress lines only
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.WARNING)
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if log is not None:
        _errors_to(log)  # what ray.init itself logs too
    if spec.ray_address:
        ray.init(address=reachable_address(spec.ray_address), **quiet)
    else:
        ray.init(address="local", include_dashboard=False, **quiet)
    if log is not None:
        _errors_to(log)
    return True


def _errors_to(log: Path) -> None:
    """Send what Ray's driver reports of errors to ``log``: its loggers' records (a trial
    task that failed and is retried, with its traceback) and the cluster errors it prints
    (``(raylet) ...`` lines: a dead node's state dump) from a thread of its own, through a
    module-level function of its worker module."""
    from ray._private import worker

    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.tune", "ray.train"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
            logger.removeHandler(old)  # Ray's console handlers, and a file handler of ours
        logger.addHandler(handler)
        logger.propagate = False

    printer = getattr(worker.print_to_stdstream, "vitnas_original", worker.print_to_stdstream)

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return printer(data, ignore_prefix)
        with log.open("a") as stream:
            stream.writelines(f"{line}\n" for line in data.get("lines", []))
        return None

    to_log.vitnas_original = printer  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log


def check_storage(spec: SearchSpec) -> None:
    """With more than one live node, trial storage must be a URI every node can reach
    (``s3://...``, ``gs://...``, or ``file:///shared/mount/...`` for a shared file system):
    a path local to the driver is not. A URI must resolve to a file system (pyarrow, as Ray
    resolves it): a missing driver or credentials is a SpecError naming ``storage`` here,
    before any trial starts, not a traceback from inside Ray."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and (spec.storage is None or "://" not in spec.storage):
        raise SpecError(f"storage = {spec.storage!r}: the cluster has {len(nodes)} nodes, "
                        "and trial checkpoints must be reachable from every node: give a URI "
                        "such as s3://bucket/path or file:///shared/mount/path")
    open_storage(spec.storage)


def open_storage(storage: str | None) -> None:
    """SpecError naming ``storage`` unless a storage URI resolves to a file system, as Ray
    resolves it (pyarrow); a local path or None is left to Ray."""
    if storage is None or "://" not in storage:
        return
    try:
        pyarrow.fs.FileSystem.from_uri(storage)
    except Exception as err:  # ArrowInvalid, OSError: one line, not Ray's traceback
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise SpecError(f"storage = {storage!r}: cannot be opened "
                        f"({type(err).__name__}: {first})") from None
