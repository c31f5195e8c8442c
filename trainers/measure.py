"""Parameters, MACs (fvcore) and measured latency, with the provenance that makes it comparable.

MACs count one multiply-add once (what the papers call "FLOPs", and what fvcore counts).
Latency is measured, never derived from MACs: warm-up, many timed calls in several rounds,
median and p90, synchronised on CUDA, and recorded with device, batch size, dtype, threads and
torch version. A data-dependent model is timed over a sample of real images (its cost
differs per image), never on one batch: the mean over batches.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

SDPA_OP = "aten::scaled_dot_product_attention"
MATMUL_OP = "aten::matmul"


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not; a parameter shared by several modules counts once."""
    return sum(p.numel() for p in model.parameters())


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for fused attention: B*H*Lq*Lk*Dqk (q.k^T) + B*H*Lq*Lk*Dv (attn.v).

    q is (..., Lq, Dqk), k (..., Lk, Dqk), v (..., Lk, Dv); the leading dims of q (batch,
    heads) multiply both terms. Softmax and scaling are not multiply-adds and are not counted,
    as fvcore does not count them in the unfused form either.
    """
    q, k, v = (get_shape(value) for value in inputs[:3])
    lead, lq, dqk = math.prod(q[:-2]), q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return lead * lq * lk * dqk + lead * lq * lk * dv


def matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``a @ b`` with broadcasting: every output element is one dot product
    over ``a``'s last dim. fvcore's own handle counts ``prod(a.shape) * b.shape[-1]``, which
    misses the batch dims of ``b`` when ``a`` is a 2-D matrix (``M @ X`` with X batched is
    counted as if X held one matrix)."""
    a, out = get_shape(inputs[0]), get_shape(outputs[0])
    return math.prod(out) * a[-1]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on ONE sample of ``input_shape`` (no batch dim: (C, H, W)).

    Traced with fvcore in eval mode on a batch of 1 (the model's mode is restored), fused
    attention counted by :func:`sdpa_macs`, matrix products by :func:`matmul_macs`.
    Data-dependent models are counted on the path that the random input takes.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        return trace_macs(model, (x,))
    finally:
        model.train(was_training)


def trace_macs(module: nn.Module, inputs: tuple[Any, ...]) -> int:
    """fvcore's MACs of ``module(*inputs)`` as traced, with this module's handles for fused
    attention and broadcasting matrix products (what :func:`count_macs` counts with)."""
    analysis = (
        FlopCountAnalysis(module, inputs)
        .set_op_handle(SDPA_OP, sdpa_macs, MATMUL_OP, matmul_macs)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
    )
    return int(analysis.total())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Latency:
    """Time per batch in ms, summarised by ``statistic``.

    ``median``: one fixed batch timed many times; ``ms`` is the median over all timed calls,
    ``p90_ms`` their 90th percentile. ``mean``: a data-dependent model timed over a sample of
    images (:func:`measure_latency` with ``inputs``), cycling through batches of
    ``batch_size``: ``ms`` is the mean over batches of each batch's median time, ``p90_ms`` the
    90th percentile over batches. ``spread`` is (max - min) / centre of the per-round
    centres (medians, or means over the sample): a noisy device shows here.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    spread: float
    batch_size: int
    provenance: dict[str, Any]
    statistic: str = "median"

    @property
    def ms(self) -> float:
        """The figure a results row keeps as ``latency_ms``."""
        return self.mean_ms if self.statistic == "mean" else self.median_ms

    @property
    def images_per_s(self) -> float:
        return self.batch_size * 1000.0 / self.ms

    def metrics(self) -> dict[str, Any]:
        """The keys a results row keeps: latency_ms (:attr:`ms`), latency_p90_ms,
        latency_spread and the provenance as prov_*."""
        return {"latency_ms": self.ms, "latency_p90_ms": self.p90_ms,
                "latency_spread": self.spread,
                **{f"prov_{k}": v for k, v in self.provenance.items()}}

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "images_per_s": self.images_per_s, "provenance": dict(self.provenance)}


def measure_latency(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 5,
    inputs: torch.Tensor | None = None,
) -> Latency:
    """Latency of a forward pass on a batch of ``batch_size`` samples of ``input_shape``.

    Without ``inputs`` (a static model: every image costs the same): one seeded random batch,
    ``warmup`` untimed calls, then ``rounds`` rounds of ``repeats`` timed calls; the median.
    With ``inputs`` (real images: a data-dependent model's cost differs per image): the
    images are cut into ``ceil(len(inputs) / batch_size)`` batches (the last one filled up
    from the first images), ``warmup`` untimed calls, then ``rounds`` passes over all the
    batches; the mean over batches of each batch's median (:class:`Latency`, ``mean``). The
    provenance's ``images`` says how many images were timed.

    Measures a copy moved to ``device``/``dtype`` in eval mode under inference_mode, so the
    caller's model keeps its device, dtype and mode. ``torch.set_num_threads(threads)``
    holds during the measurement only.
    """
    counts = {"batch_size": batch_size, "threads": threads, "repeats": repeats, "rounds": rounds}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {name}={value}")
    device = torch.device(device)
    net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    if inputs is not None:
        if not len(inputs) or tuple(inputs.shape[1:]) != tuple(input_shape):
            raise ValueError(f"`inputs` of shape {tuple(inputs.shape)} must hold samples of "
                             f"shape {tuple(input_shape)}")
        batches = sample_batches(inputs.to(device=device, dtype=dtype), batch_size)
    else:
        x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
        batches = [x.to(device=device, dtype=dtype)]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    try:
        with torch.inference_mode():
            if inputs is None:
                times = time_calls(lambda: net(batches[0]), warmup=warmup, repeats=repeats,
                                   rounds=rounds, sync=sync)
            else:
                times = time_sample(net, batches, warmup=warmup, rounds=rounds, sync=sync)
    finally:
        torch.set_num_threads(previous_threads)
    provenance = {
        "device": describe_device(device),
        "runtime": "torch",
        "torch": torch.__version__,
        "input_shape": list(input_shape),
        "input": "random" if inputs is None else "data",
        "dtype": str(dtype).removeprefix("torch."),
        "warmup": warmup,
        **counts,
    }
    if inputs is None:
        return summarise(times, batch_size=batch_size, provenance=provenance)
    provenance = {**provenance, "images": len(inputs), "repeats": 1}
    return summarise_sample(times, batch_size=batch_size, provenance=provenance)


def sample_batches(inputs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``inputs`` cut into batches of ``batch_size``, the last one filled up cyclically from
    the first images (every batch full: each is timed at the measured batch size)."""
    count = math.ceil(len(inputs) / batch_size)
    index = torch.arange(count * batch_size) % len(inputs)
    return [inputs[index[i * batch_size:(i + 1) * batch_size]] for i in range(count)]


def _timed(call: Callable[[], Any], sync: Callable[[], None] | None) -> float:
    """Milliseconds of one call, ``sync`` (e.g. CUDA's) before and after it."""
    if sync is not None:
        sync()
    start = time.perf_counter()
    call()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) * 1000.0


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int, rounds: int,
               sync: Callable[[], None] | None = None) -> list[list[float]]:
    """Milliseconds of ``rounds`` rounds of ``repeats`` timed calls of ``call`` after
    ``warmup`` untimed ones; ``sync`` (e.g. CUDA's) runs before and after each timed call."""
    for _ in range(max(warmup, 0)):
        call()
    return [[_timed(call, sync) for _ in range(repeats)] for _ in range(rounds)]


def time_sample(run: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor], *,
                warmup: int, rounds: int, sync: Callable[[], None] | None = None,
                ) -> list[list[float]]:
    """Milliseconds of ``run`` on each of ``batches`` (rounds x batches): ``warmup`` untimed
    calls cycling through the batches, then ``rounds`` timed passes over all of them."""
    for i in range(max(warmup, 0)):
        run(batches[i % len(batches)])
    return [[_timed(lambda b=b: run(b), sync) for b in batches] for _ in range(rounds)]


def summarise(
    rounds: list[list[float]], *, batch_size: int, provenance: dict[str, Any]
) -> Latency:
    flat = sorted(t for r in rounds for t in r)
    medians = [statistics.median(r) for r in rounds]
    median = statistics.median(flat)
    return Latency(
        median_ms=median,
        p90_ms=percentile(flat, 0.9),
        mean_ms=statistics.fmean(flat),
        spread=(max(medians) - min(medians)) / median,
        batch_size=batch_size,
        provenance=provenance,
    )


def summarise_sample(
    rounds: list[list[float]], *, batch_size: int, provenance: dict[str, Any]
) -> Latency:
    """:class:`Latency` (``mean``) of :func:`time_sample`'s times: per batch the median over
    rounds; their mean, median and 90th percentile over batches."""
    per_batch = [statistics.median(times) for times in zip(*rounds, strict=True)]
    means = [statistics.fmean(r) for r in rounds]
    mean = statistics.fmean(per_batch)
    return Latency(
        median_ms=statistics.median(per_batch),
        p90_ms=percentile(sorted(per_batch), 0.9),
        mean_ms=mean,
        spread=(max(means) - min(means)) / mean,
        batch_size=batch_size,
        provenance=provenance,
        statistic="mean",
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[min(math.ceil(q * len(ordered)) - 1, len(ordered) - 1)]


def describe_device(device: str | torch.device) -> str:
    """A human name of the device: the GPU's name, or the CPU model (from /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_model()
    return device.type


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
