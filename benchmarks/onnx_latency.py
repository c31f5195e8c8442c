"""Latency in the runtime a model ships in: eager PyTorch against ONNX Runtime.

Writes results/benchmarks/onnx.md. No Ray needed. (Not named onnx.py: a script named so would
shadow the onnx package for the exporter.)

``m0``: our EfficientViT-M0 and timm's ``efficientvit_m0`` (random weights, BN statistics
set), each in eager PyTorch and as its ONNX graph in ONNX Runtime (trainers.onnx_export: the
graph the export writes, BatchNorm folded, verified within 1e-4), CPU, batch 16, one
thread, interleaved in one process. The EfficientViT paper: M0 228 img/s in PyTorch, 340
img/s through ONNX (1.49x).

``ranking``: candidates drawn from the default search's space (configs/quick.yaml), each
timed eagerly and in ONNX Runtime as a search times it (batch 16, one thread): does the
ranking by latency change between runtimes (Kendall tau)?

    python benchmarks/onnx_latency.py [m0|ranking|all] [--candidates 10] [--repeats 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, interleaved, write_table  # noqa: E402

import search_spaces  # noqa: E402  (imports search_spaces._compat first)
from trainers.measure import measure_latency  # noqa: E402
from trainers.onnx_export import (  # noqa: E402
    INPUT,
    OUTPUT,
    measure_onnx_latency,
    session,
    to_onnx,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def _bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def _ort_run(model: torch.nn.Module, shape: tuple[int, ...], x: torch.Tensor):
    graph = to_onnx(model, shape)
    diff = verify(model, graph, x)
    run = session(graph, threads=1)
    feed = {INPUT: x.numpy().astype(np.float32)}
    return (lambda _x: run.run([OUTPUT], feed)), diff


def m0(repeats: int) -> list[str]:
    import timm

    shape = (3, 224, 224)
    ours = _bn_statistics(search_spaces.get("efficientvit").build(
        search_spaces.get("efficientvit").presets["m0"], num_classes=1000))
    theirs = _bn_statistics(timm.create_model("efficientvit_m0", num_classes=1000))
    x = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(1))
    ours_ort, d1 = _ort_run(ours, shape, x)
    theirs_ort, d2 = _ort_run(theirs, shape, x)
    t = interleaved({"ours eager": ours, "ours onnxruntime": ours_ort,
                     "timm eager": theirs, "timm onnxruntime": theirs_ort}, x,
                    repeats=repeats, warmup=5)
    ips = {k: BATCH / v for k, v in t.items()}
    lines = ["## EfficientViT-M0: eager PyTorch vs ONNX Runtime", "",
             f"CPU, batch {BATCH}, one thread (torch and ONNX Runtime intra-op), 224x224, "
             f"median of {repeats} interleaved calls each. Graphs verified: max abs logit "
             f"difference {d1:.2g} (ours), {d2:.2g} (timm's).", "",
             "| model | ms / batch | images / s | vs our eager |", "|---|---:|---:|---:|"]
    for name, seconds in t.items():
        lines.append(f"| {name} | {seconds * 1e3:.2f} | {ips[name]:.0f} | "
                     f"{ips[name] / ips['ours eager']:.2f}x |")
    ratio, vs_timm = ips["ours onnxruntime"] / ips["ours eager"], (
        ips["ours onnxruntime"] / ips["timm onnxruntime"])
    lines += ["", f"Goals: our M0 in ONNX Runtime {ratio:.2f}x our eager throughput (asked "
              f">= 1.3x; the paper 1.49x): {'met' if ratio >= 1.3 else 'missed'}; "
              f"{vs_timm:.2f}x timm's M0 in ONNX Runtime (asked >= 1.0x): "
              f"{'met' if vs_timm >= 1.0 else 'missed'}.", ""]
    return lines


def ranking(candidates: int, repeats: int) -> list[str]:
    from scipy.stats import kendalltau

    from nas import spec as specs

    spec = specs.load(ROOT / "configs" / "quick.yaml")
    space = search_spaces.get(spec.space.name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    shape = (1, 28, 28)
    rows = []
    for _ in range(candidates):
        config = space.suggest(study.ask(), spec.space.dims)
        model = _bn_statistics(space.build(config, num_classes=10, in_chans=1))
        graph = to_onnx(model, shape)
        eager = measure_latency(model, input_shape=shape, batch_size=BATCH, warmup=5,
                                repeats=repeats // 3, rounds=3)
        ort = measure_onnx_latency(graph, input_shape=shape, batch_size=BATCH, warmup=5,
                                   repeats=repeats // 3, rounds=3)
        rows.append((space.summarize(config), eager.median_ms, ort.median_ms))
    tau, _ = kendalltau([r[1] for r in rows], [r[2] for r in rows])
    lines = ["## Does the latency ranking change between runtimes?", "",
             f"{candidates} candidates drawn at random from the default search's space "
             f"(configs/quick.yaml, 28x28 grey), CPU, batch {BATCH}, one thread, measured as "
             "a search measures (warm-up 5, 3 rounds).", "",
             "| candidate | eager ms | onnxruntime ms | speedup |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {e:.2f} | {o:.2f} | {e / o:.2f}x |" for name, e, o in rows]
    lines += ["", f"Kendall tau between the two latency rankings: {tau:.2f} (1: the same "
              "order).", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=["m0", "ranking", "all"])
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = header("ONNX Runtime vs eager PyTorch")
    if args.part in ("m0", "all"):
        lines += m0(args.repeats)
    if args.part in ("ranking", "all"):
        lines += ranking(args.candidates, args.repeats)
    write_table("onnx" if args.part == "all" else f"onnx_{args.part}", lines)


if __name__ == "__main__":
    main()
