"""Our EfficientViT-M0 against timm's ``efficientvit_m0``: same weights count, eval mode, same
batch, threads and device, measured interleaved (A, B, A, B ...) in one process after warm-up.
Prints a Markdown table and writes results/benchmarks/efficientvit_vs_timm.md.

Default: the paper's CPU protocol (batch 16, one thread).

    python benchmarks/efficientvit_vs_timm.py [--batch 16] [--threads 1] [--repeats 40]
                                              [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

from search_spaces import efficientvit  # noqa: E402  (imports search_spaces._compat first)


def timm_m0() -> torch.nn.Module:
    import timm

    return timm.create_model("efficientvit_m0", num_classes=1000)


def timer(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], float]:
    """One timed forward, in seconds (synchronised on CUDA)."""

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def measure(models: dict[str, torch.nn.Module], x: torch.Tensor, device: torch.device, *,
            warmup: int, repeats: int) -> dict[str, list[float]]:
    runs = {name: timer(model, x, device) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):  # interleaved rounds: drifts of the machine hit both alike
            for name, run in runs.items():
                times[name].append(run())
    return times


def table(models: dict[str, torch.nn.Module], times: dict[str, list[float]],
          batch: int) -> list[str]:
    rows = ["| model | params | median ms | p90 ms | img/s | throughput ours/timm |",
            "|---|---:|---:|---:|---:|---:|"]
    rate = {name: batch / statistics.median(t) for name, t in times.items()}
    for name, model in models.items():
        t = sorted(times[name])
        p90 = statistics.quantiles(t, n=10)[-1]
        params = sum(p.numel() for p in model.parameters())
        rows.append(f"| {name} | {params:,} | {statistics.median(t) * 1e3:.1f} | "
                    f"{p90 * 1e3:.1f} | {rate[name]:.0f} | "
                    f"{rate[name] / rate['timm efficientvit_m0']:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    models = {
        "ours efficientvit m0": efficientvit.build(efficientvit.PRESETS["m0"], num_classes=1000),
        "timm efficientvit_m0": timm_m0(),
    }
    counts = {sum(p.numel() for p in m.parameters()) for m in models.values()}
    assert len(counts) == 1, f"weight counts differ: {counts}"
    for model in models.values():
        model.to(device).eval()
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    times = measure(models, x, device, warmup=args.warmup, repeats=args.repeats)
    lines = header("EfficientViT-M0: ours vs timm (forward, eval mode)")
    lines += [(f"Device: {args.device}; batch {args.batch}, 224x224, float32, {args.threads} "
               f"thread(s); {args.warmup} warm-up and {args.repeats} timed rounds, the two "
               "models interleaved in each round; `torch.inference_mode()`."), ""]
    lines += table(models, times, args.batch)
    lines += ["", ("Ours folds each BatchNorm into its conv in eval mode and runs channels-last "
                   "(oneDNN's faster layout; the attention then reads q/k/v as views). Same "
                   "parameters and the same logits as timm "
                   "(tests/search_spaces/test_efficientvit.py).")]
    write_table("efficientvit_vs_timm", lines)


if __name__ == "__main__":
    main()
