"""``latency.node_resource``: every latency of a study measured on one target device.

By default each trial measures its own candidate, through the machine-wide gate
(nas/measure_lock.py), on whatever node it landed on: on a cluster of mixed nodes, or when the
deployment target is not a training node, the latencies of one study do not compare. With
``latency.node_resource: NAME`` the driver starts one long-lived Ray actor,
:class:`LatencyTarget`, on a node offering the custom resource NAME (``ray start
--resources='{"NAME": 1}'``), holding ``latency.threads`` CPUs there (and a GPU for
``latency.device: cuda``) so no trial trains beside it, and every trial sends its
measurements there (:class:`RemoteTimer`). The actor runs them one at a time (one
concurrency group of one thread; a second group answers look-ups meanwhile), inside that
machine's gate, and caches each by the measured config's key (architecture and knob
values; for a model timed on real images also a digest of its weights and images, which its
cost depends on): a re-measurement is a cache hit (``prov_cache: hit``). The driver appends
new entries to results/<study>/latency_cache.jsonl (:class:`CacheWriter`) and hands the
file's entries to the actor of a resumed search. Provenance: ``prov_host`` and
``prov_node`` (the host and Ray node that measured), ``prov_target`` (NAME, or "trial").
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search_spaces.config import Config
from trainers.measure import Latency

from .candidate import placed, timed
from .measure_lock import MeasurementLock, lock_name
from .plugins import load_plugins
from .sections import SpecError
from .spec import SearchSpec

CACHE = "latency_cache.jsonl"
SHARE = 0.001  # of the node's NAME resource the actor asks for: any node offering it fits
READY_TIMEOUT_S = 120.0


def actor_name(spec: SearchSpec) -> str:
    return f"vitnas-latency-{spec.name}"


def cache_key(config: Config, model: torch.nn.Module, images: torch.Tensor | None) -> str:
    """What a measurement is cached by: the config's key (architecture and knob values),
    and for a model timed on real images (its cost depends on them) a digest of its weights
    and of the images."""
    if images is None:
        return config.key()
    digest = hashlib.sha256()
    tensors = sorted(model.state_dict().items()) + [("images", images)]
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"{config.key()}-{digest.hexdigest()[:16]}"


def _needs(spec: SearchSpec) -> dict[str, float]:
    return {"CPU": float(spec.latency.threads), "GPU": 1.0 if spec.latency.device == "cuda"
            else 0.0}


@ray.remote(concurrency_groups={"measure": 1, "ask": 1})
class LatencyTarget:
    """The study's latency measurements, one at a time, and their cache."""

    def __init__(self, spec: SearchSpec, entries: list[dict[str, Any]]) -> None:
        load_plugins(spec.plugins)  # the models of a plugin family arrive pickled
        torch.set_num_threads(spec.latency.threads)
        self.spec, self.entries = spec, list(entries)
        self.cache = {e["key"]: e for e in self.entries}
        self.where = {"host": socket.gethostname(),
                      "node": ray.get_runtime_context().get_node_id()}
        self.gate = MeasurementLock(lock_name(spec.latency.device))

    @ray.method(concurrency_group="ask")
    def place(self) -> dict[str, Any]:
        return dict(self.where)

    @ray.method(concurrency_group="ask")
    def lookup(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)

    @ray.method(concurrency_group="ask")
    def entries_since(self, start: int) -> tuple[list[dict[str, Any]], int]:
        """The entries from ``start`` on, and how many it holds."""
        return self.entries[start:], len(self.entries)

    @ray.method(concurrency_group="measure")
    def measure(self, key: str, model: torch.nn.Module, input_shape: tuple[int, ...],
                images: torch.Tensor | None) -> tuple[dict[str, Any], bool]:
        """The entry for ``key`` (measured now unless cached) and whether it was cached."""
        if key in self.cache:  # measured while this call waited for the one before
            return self.cache[key], True
        started = time.time()
        latency = timed(model, self.spec, tuple(input_shape), self.gate, images)
        entry = {"key": key, "latency": dataclasses.asdict(latency), **self.where,
                 "started": started, "ended": time.time()}
        self.cache[key] = entry
        self.entries.append(entry)
        return entry, False


class RemoteTimer:
    """A :data:`nas.candidate.Timer` for trials: the study's latency target measures."""

    def __init__(self, spec: SearchSpec, input_shape: tuple[int, ...]) -> None:
        self.actor = ray.get_actor(actor_name(spec))
        self.input_shape, self.target = input_shape, spec.latency.node_resource

    def __call__(self, model: torch.nn.Module, config: Config,
                 images: torch.Tensor | None = None) -> Latency:
        key = cache_key(config, model, images)
        entry, hit = ray.get(self.actor.lookup.remote(key)), True
        if entry is None:
            net = copy.deepcopy(model).cpu()  # the target moves it to its own device
            batch = None if images is None else images.cpu()
            entry, hit = ray.get(self.actor.measure.remote(key, net, self.input_shape, batch))
        return placed(Latency(**entry["latency"]), host=entry["host"], node=entry["node"],
                      target=self.target, cache="hit" if hit else "miss")


def check_target(spec: SearchSpec) -> None:
    """SpecError unless a live node offers ``latency.node_resource`` with the CPUs (and
    GPU) the measurements need."""
    name, needs = spec.latency.node_resource, _needs(spec)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    offering = [r for r in nodes if r.get(name, 0) > 0]
    if not offering:
        custom = sorted({k for r in nodes for k in r if k not in ("CPU", "GPU", "memory",
                         "object_store_memory") and not k.startswith(("node:", "accel"))})
        raise SpecError(f"latency.node_resource = {name!r}: no node of the cluster offers it "
                        f"(custom resources offered: {custom or 'none'}); start the target "
                        f"node with ray start --resources='{{\"{name}\": 1}}'")
    if not any(all(r.get(k, 0) >= v for k, v in needs.items()) for r in offering):
        raise SpecError(f"latency.node_resource = {name!r}: no node offering it has the "
                        f"{needs['CPU']:g} CPUs{' and a GPU' if needs['GPU'] else ''} the "
                        "measurements need (latency.threads, latency.device)")


def read_cache(study_dir: Path) -> list[dict[str, Any]]:
    """The study's cached measurements (results/<study>/CACHE, one JSON entry a line)."""
    path = study_dir / CACHE
    return [json.loads(line) for line in path.read_text().splitlines()] if (
        path.is_file()) else []


def start_target(spec: SearchSpec, study_dir: Path) -> CacheWriter:
    """Start the study's latency actor (its cache: the study's file), wait until it is
    placed and answers; returns the driver's callback that keeps the file."""
    check_target(spec)
    entries, needs = read_cache(study_dir), _needs(spec)
    actor = LatencyTarget.options(
        name=actor_name(spec), num_cpus=needs["CPU"], num_gpus=needs["GPU"],
        resources={spec.latency.node_resource: SHARE}, max_restarts=2).remote(spec, entries)
    try:
        ray.get(actor.place.remote(), timeout=READY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise SpecError(f"latency.node_resource = {spec.latency.node_resource!r}: the "
                        f"latency target was not placed within {READY_TIMEOUT_S:.0f} s (are "
                        "the CPUs of the node offering it taken?)") from None
    except ray.exceptions.RayError as err:
        why = (str(err).strip().splitlines() or [""])[-1][:300]
        raise SpecError(f"latency.node_resource = {spec.latency.node_resource!r}: the "
                        f"latency target did not start ({type(err).__name__}: {why})") from None
    return CacheWriter(actor, study_dir, entries)


class CacheWriter(tune.Callback):
    """Driver side: appends the latency target's new entries to results/<study>/CACHE
    (the actor started with the file's ``entries``; one restarted by Ray starts with them
    again, so entries are told apart by key)."""

    def __init__(self, actor: Any, study_dir: Path, entries: list[dict[str, Any]]) -> None:
        self.actor, self.path = actor, study_dir / CACHE
        self.keys, self.seen = {e["key"] for e in entries}, len(entries)

    def _pull(self) -> None:
        new, count = ray.get(self.actor.entries_since.remote(self.seen))
        if count < self.seen:  # a restarted actor: look at everything it holds
            new, count = ray.get(self.actor.entries_since.remote(0))
        new = [e for e in new if e["key"] not in self.keys]
        self.seen = count
        if new:
            with self.path.open("a") as stream:
                stream.writelines(json.dumps(e, sort_keys=True) + "\n" for e in new)
            self.keys.update(e["key"] for e in new)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._pull()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._pull()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._pull()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._pull()
