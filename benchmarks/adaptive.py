"""Adaptive variants against the static parent they were fine-tuned from.

Writes results/benchmarks/adaptive.md. No Ray needed (runs on a GPU machine too).

``parent``: trains one static ``vit`` well on Fashion-MNIST (55,000 training images, the
5,000 validation images carved from the training set; 96 wide, 6 blocks, 3 heads, patch 4:
50 tokens at 28x28; 10 epochs, lr 2e-3, batch 128) and writes it as an export folder
(results/adaptive/parent), the ``init`` of every variant.

``variants``: fine-tunes adaptive variants from the parent (warm start: every shared tensor
from the parent's weights, through ``trainers.warmstart``) and evaluates each at its budget
points: validation accuracy, executed MACs per image (the family's cost model), and the
latency of its inference path at batch 64 and batch 1 on real validation images, all next to
the parent, interleaved in one process. The point that meets the accuracy goal with the
fewest MACs is also evaluated once on the test split (reported, never used to choose).

    python benchmarks/adaptive.py parent [--threads 1]
    python benchmarks/adaptive.py train [--epochs 3] [--threads 1]   (fine-tune only)
    python benchmarks/adaptive.py variants [--epochs 3] [--threads 1]
    python benchmarks/adaptive.py all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, interleaved, write_table  # noqa: E402

import search_spaces  # noqa: E402  (imports search_spaces._compat first)
from search_spaces.vit import ViTConfig  # noqa: E402
from trainers.budget import at_knobs, budget_points, cost_model  # noqa: E402
from trainers.data import Data, DataSettings, load_data  # noqa: E402
from trainers.loop import FitSettings, evaluate, fit  # noqa: E402
from trainers.losses import objective_for  # noqa: E402
from trainers.measure import count_macs  # noqa: E402
from trainers.warmstart import read_init, warm_start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "results" / "adaptive"
PARENT_DIR = WORK / "parent"
PARENT = ViTConfig(img_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3,
                   mlp_ratio=4.0)
DATA = DataSettings(name="fashion-mnist", val_size=5000, seed=0, load_test=True)
PARENT_TRAIN = FitSettings(epochs=10, batch_size=128, lr=2e-3, warmup_epochs=1,
                           clip_grad=5.0, label_smoothing=0.1)


def progress(tag: str):
    start = time.perf_counter()

    def report(metrics: dict) -> None:
        print(f"{tag} epoch {metrics['epoch']}: train_loss={metrics['train_loss']:.4f} "
              f"val_acc={metrics['accuracy']:.4f} ({time.perf_counter() - start:.0f}s)",
              flush=True)

    return report


def train_parent(data: Data) -> None:
    """Train the static parent and write it as an export folder."""
    from nas.export import write_export  # starts no Ray

    fam = search_spaces.get("vit")
    torch.manual_seed(0)
    model = fam.build(PARENT, num_classes=data.num_classes, in_chans=data.in_chans)
    result = fit(model, data, PARENT_TRAIN, report=progress("parent"))
    val = evaluate(model, data.val_batches(256))
    inputs = {"img_size": data.img_size, "in_chans": data.in_chans, "mean": list(data.mean),
              "std": list(data.std), "num_classes": data.num_classes,
              "class_names": list(data.class_names), "dataset": "fashion-mnist"}
    metrics = {"accuracy": val["accuracy"], "val_loss": val["loss"],
               "train_time_s": result.train_time_s, "history": result.history}
    write_export(PARENT_DIR, model.eval(), space="vit", candidate=PARENT.to_dict(),
                 inputs=inputs, source={"benchmark": "adaptive", "role": "parent"},
                 metrics=metrics)
    print(f"parent: val accuracy {val['accuracy']:.4f} in {result.train_time_s:.0f}s -> "
          f"{PARENT_DIR}", flush=True)


FINETUNE = FitSettings(epochs=3, batch_size=128, lr=5e-4, warmup_epochs=0.2, clip_grad=5.0,
                       label_smoothing=0.1)
HALT_TARGETS = (0.5, 0.67, 0.83)  # target halting depth, as a fraction of the 6 blocks
HALT_GAMMA, HALT_PRIOR = 10.0, 0.1
GATED = (("heads+branches+patches", 0.5), ("heads+branches+patches", 0.7),
         ("heads+patches", 0.7))  # AdaViT gate kinds and their (common) usage target
POINTS = 8
LIMITS = {"halt_eps": 0.6}  # the gate thresholds keep their default far end (0.9)
GOAL_DROP = 0.01  # at most 1 point of validation accuracy below the parent


def channel0_quantile(model: torch.nn.Module, data: Data, q: float = 0.99) -> float:
    """The q-quantile of channel 0 of the parent's block outputs (blocks 1..L-1), on
    validation images: a halting offset beta = -gamma * it lets almost no token halt at
    the start of fine-tuning, as A-ViT's start from DeiT does."""
    x = next(iter(data.val_batches(512)))[0]
    values = []
    with torch.inference_mode():
        tokens = model.embed(x)
        for block in list(model.blocks)[:-1]:
            tokens = block(tokens)
            values.append(tokens[..., 0].flatten())
    return float(torch.quantile(torch.cat(values), q))


def halting_config(target: float, beta: float) -> ViTConfig:
    return PARENT.replace(token_policy="halting", halt_gamma=HALT_GAMMA, halt_beta=beta,
                          halt_target=target, halt_prior=HALT_PRIOR)


def gated_config(kinds: str, target: float) -> ViTConfig:
    return PARENT.replace(token_policy="gating", gate_kinds=kinds, gate_head_target=target,
                          gate_branch_target=target, gate_patch_target=target)


def variant(data: Data, config: ViTConfig, tag: str, epochs: int) -> torch.nn.Module:
    """An adaptive ViT warm-started from the parent and fine-tuned (cached in WORK)."""
    fam = search_spaces.get("vit")
    torch.manual_seed(0)
    model = fam.build(config, num_classes=data.num_classes, in_chans=data.in_chans)
    adaptive = fam.adaptive(config)
    warm_start(model, read_init(PARENT_DIR), adaptive=adaptive)
    cache = WORK / f"{tag}-{epochs}ep.safetensors"
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()
    settings = FINETUNE.replace(epochs=epochs)
    fit(model, data, settings, report=progress(tag),
        loss_fn=objective_for(adaptive, label_smoothing=settings.label_smoothing))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache))
    return model.eval()


def trained_variants(data: Data, beta: float,
                     epochs: int) -> list[tuple[str, ViTConfig, torch.nn.Module]]:
    """(row label prefix, config, fine-tuned model) of every variant."""
    out = []
    for target in HALT_TARGETS:
        config = halting_config(target, beta)
        out.append((f"halting t={target:g}", config,
                    variant(data, config, f"halting-{target:g}", epochs)))
    for kinds, target in GATED:
        config = gated_config(kinds, target)
        out.append((f"gated {kinds} t={target:g}", config,
                    variant(data, config, f"gated-{kinds}-{target:g}", epochs)))
    return out


def timings(parent: torch.nn.Module, nets: dict[str, torch.nn.Module], data: Data,
            batch: int, repeats: int) -> dict[str, float]:
    """Median ms per batch of ``batch`` real validation images, interleaved with the parent."""
    x = next(iter(data.val_batches(batch)))[0]
    t = interleaved({"parent": parent, **nets}, x, repeats=repeats)
    return {k: v * 1e3 for k, v in t.items()}


def variants(data: Data, epochs: int) -> list[str]:
    from nas.export import load_exported

    parent = load_exported(PARENT_DIR)
    parent_acc = evaluate(parent, data.val_batches(256))["accuracy"]
    parent_macs = count_macs(parent, data.input_shape)
    beta = -HALT_GAMMA * channel0_quantile(parent, data)
    rows, nets, best = [], {}, None
    for target in HALT_TARGETS:
        config, model = variant(data, target, round(beta, 2), epochs)
        cost = cost_model("vit", config, model, data.input_shape)
        knobs = search_spaces.get("vit").adaptive(config).operating_points(POINTS, LIMITS)
        for point in budget_points("vit", config, model, data, knobs=knobs, batch_size=256,
                                   cost=cost):
            name = f"halting t={target:g} eps={point['knobs']['halt_eps']:g}"
            nets[name] = at_knobs("vit", config, model, point["knobs"],
                                  num_classes=data.num_classes, in_chans=data.in_chans)
            rows.append({"name": name, **point})
            drop, saved = parent_acc - point["accuracy"], 1 - point["macs"] / parent_macs
            if drop <= GOAL_DROP and (best is None or saved > best[1]):
                best = (name, saved)
    lat64 = timings(parent, nets, data, 64, repeats=15)
    lat1 = timings(parent, nets, data, 1, repeats=60)
    lines = [f"Parent: static ViT {PARENT.embed_dim} wide, {PARENT.depth} blocks, "
             f"{PARENT.num_heads} heads, patch {PARENT.patch_size} (50 tokens); "
             f"{PARENT_TRAIN.epochs} epochs on 55,000 Fashion-MNIST training images "
             f"(lr {PARENT_TRAIN.lr:g}, batch {PARENT_TRAIN.batch_size}); validation (5,000 "
             f"images carved from the training set) accuracy {parent_acc:.4f}, "
             f"{parent_macs / 1e6:.2f} MMACs per image.", "",
             f"Halting variants: warm-started from the parent (every tensor; halting adds "
             f"none), fine-tuned {epochs} epochs (lr {FINETUNE.lr:g}, warm-up "
             f"{FINETUNE.warmup_epochs:g} epoch) with A-ViT's loss: ponder weight 1e-3 (5e-4 "
             f"x 12 / 6 blocks), depth-prior weight {HALT_PRIOR:g}, gamma {HALT_GAMMA:g}, "
             f"beta {beta:.2f} (= -gamma x the 99th percentile of the parent's channel 0: "
             f"almost nothing halts at the start). Operating points: eps from 0.01 (trained) "
             f"to {LIMITS['halt_eps']:g}, {POINTS} points. Latency: median of interleaved "
             "calls, removal path on real validation images, one thread.", "",
             "| model | val acc | vs parent | MACs/image (M) | MACs saved | tokens kept | "
             "b64 ms | b64 speedup | speedup / MACs reduction | b1 ms | b1 speedup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| parent (static) | {parent_acc:.4f} | - | {parent_macs / 1e6:.2f} | - | 1.000 | "
             f"{lat64['parent']:.2f} | 1.00x | - | {lat1['parent']:.3f} | 1.00x |"]
    for r in rows:
        reduction = parent_macs / r["macs"]
        s64, s1 = lat64["parent"] / lat64[r["name"]], lat1["parent"] / lat1[r["name"]]
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {r['accuracy'] - parent_acc:+.4f} "
                     f"| {r['macs'] / 1e6:.2f} | {1 - 1 / reduction:.1%} | "
                     f"{r['tokens_kept']:.3f} | {lat64[r['name']]:.2f} | {s64:.2f}x | "
                     f"{s64 / reduction:.2f} | {lat1[r['name']]:.3f} | {s1:.2f}x |")
    lines += ["", *goal_lines(best, nets, data, parent, parent_acc, parent_macs)]
    (WORK / "variants.json").write_text(json.dumps(rows, indent=1, default=str))
    return lines


def goal_lines(best, nets, data, parent, parent_acc, parent_macs) -> list[str]:
    """The point with the most MACs saved at <= 1 point below the parent, and its test
    accuracy (reported once, never used to choose)."""
    if best is None:
        return [f"Goal (>= 30% fewer MACs at <= {GOAL_DROP:.0%} less accuracy): no point "
                "stays within 1 point of the parent."]
    name, saved = best
    test_parent = evaluate(parent, data.test_batches(256))["accuracy"]
    test_point = evaluate(nets[name], data.test_batches(256))["accuracy"]
    met = "met" if saved >= 0.30 else "missed"
    return [f"Goal (A-ViT-T: 36% fewer MACs at 0.8 points less): the point with the most MACs "
            f"saved at <= 1 point below the parent is `{name}`: {saved:.1%} fewer MACs "
            f"({met}: >= 30% asked). Test split (10,000 images, reported once): parent "
            f"{test_parent:.4f}, this point {test_point:.4f} ({test_point - test_parent:+.4f})."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["parent", "train", "variants", "all"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=FINETUNE.epochs)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DATA)
    if args.phase in ("parent", "all") and not (PARENT_DIR / "config.json").is_file():
        train_parent(data)
    if args.phase == "train":  # fine-tune (and cache) the variants only
        from nas.export import load_exported
        beta = -HALT_GAMMA * channel0_quantile(load_exported(PARENT_DIR), data)
        trained_variants(data, round(beta, 2), args.epochs)
    if args.phase in ("variants", "all"):
        torch.set_num_threads(1)  # latency protocol: one thread (training used --threads)
        lines = header("Adaptive variants against their static parent") + variants(
            data, args.epochs)
        write_table("adaptive", lines)


if __name__ == "__main__":
    main()
