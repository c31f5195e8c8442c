"""Static candidates as ONNX graphs, verified with ONNX Runtime, and timed in that runtime.

Exporter: ``torch.onnx.export(dynamo=True)``, torch's current exporter (torch.export
tracing, graph optimisation with onnxscript), at its default opset, with one dynamic batch
axis: input ``images`` (B, C, H, W), output ``logits`` (B, classes). The older TorchScript
exporter is deprecated in torch 2.x. BatchNorm: a conv's BN is folded by ``ConvBN`` itself in
eval mode (the traced graph holds the folded constants), and a BatchNorm1d that feeds a
Linear (EfficientViT's head) is folded into that Linear before export; no
BatchNormalization node is left (tested).

Only static candidates are exported: an adaptive candidate's graph would have to skip work
that depends on its input, and a traced graph runs one fixed path (all tokens, every
branch), so it would claim the point's cost while running the full model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .measure import Latency, describe_device, summarise, time_calls

INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-4  # max abs logit difference ONNX Runtime vs PyTorch (fp32)


class OnnxError(ValueError):
    """The model cannot be exported, or its graph does not compute what the model does."""


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm1d that directly feeds a Linear
    inside an ``nn.Sequential`` folded into that Linear (the same function)."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:], strict=False):
            bn, linear = seq._modules[first], seq._modules[second]
            if isinstance(bn, nn.BatchNorm1d) and isinstance(linear, nn.Linear):
                seq._modules[second] = _folded_linear(bn, linear)
                seq._modules[first] = nn.Identity()
    return model


def _folded_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """linear(bn(x)) as one Linear: bn(x) = x * s + t with s = gamma / sqrt(var + eps)."""
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        out = nn.Linear(linear.in_features, linear.out_features)
        out.weight.copy_(linear.weight * scale[None, :])
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        out.bias.copy_(bias + linear.weight @ shift)
    return out


def to_onnx(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """The model's ONNX graph (serialised), batch axis dynamic; OnnxError if it fails."""
    net = fold_batchnorm(model).cpu().float()
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net, (x,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    except Exception as err:  # the exporter raises many types; keep its first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise OnnxError(f"ONNX export failed: {type(err).__name__}: {first[:300]}") from None
    return program.model_proto.SerializeToString()


def session(graph: bytes, *, threads: int = 1, device: str = "cpu") -> Any:
    """An ONNX Runtime session on ``graph``: the CPU provider with ``threads`` threads, or
    the CUDA provider first for ``device="cuda"`` where this onnxruntime has it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(graph, sess_options=options, providers=providers)


def verify(model: nn.Module, graph: bytes, x: torch.Tensor, *,
           tolerance: float = TOLERANCE) -> float:
    """Max abs difference of the logits ONNX Runtime and PyTorch give on ``x``; OnnxError
    (with the difference) above ``tolerance``."""
    with torch.no_grad():
        out = model.eval()(x)
    reference = (out.logits if hasattr(out, "logits") else out).float().cpu().numpy()
    got = session(graph).run([OUTPUT], {INPUT: x.cpu().numpy().astype(np.float32)})[0]
    if got.shape != reference.shape:
        raise OnnxError(f"ONNX Runtime gives logits of shape {got.shape}, PyTorch "
                        f"{reference.shape}")
    diff = float(np.abs(got - reference).max())
    if not diff <= tolerance:
        raise OnnxError(f"ONNX Runtime's logits differ from PyTorch's by {diff:.3g} (max "
                        f"abs, allowed {tolerance:g})")
    return diff


def measure_onnx_latency(graph: bytes, *, input_shape: Sequence[int], batch_size: int = 16,
                         device: str = "cpu", threads: int = 1, warmup: int = 10,
                         repeats: int = 30, rounds: int = 5,
                         inputs: torch.Tensor | None = None) -> Latency:
    """Latency of ``graph`` in ONNX Runtime, as :func:`~trainers.measure.measure_latency`
    measures a module (same warm-up, rounds, median and p90), fp32; provenance names the
    runtime, its version and execution provider."""
    import onnxruntime as ort

    run = session(graph, threads=threads, device=device)
    if inputs is not None:
        x = inputs[:batch_size].float().cpu().numpy()
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, *input_shape, generator=gen).numpy()
    feed = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
    times = time_calls(lambda: run.run([OUTPUT], feed), warmup=warmup, repeats=repeats,
                       rounds=rounds)
    provenance = {"device": describe_device(device), "runtime": "onnxruntime",
                  "runtime_version": ort.__version__, "provider": run.get_providers()[0],
                  "input_shape": list(input_shape), "dtype": "float32",
                  "input": "random" if inputs is None else "data", "warmup": warmup,
                  "batch_size": batch_size, "threads": threads, "repeats": repeats,
                  "rounds": rounds}
    return summarise(times, batch_size=batch_size, provenance=provenance)
