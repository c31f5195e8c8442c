"""Search by inheritance: candidates cut from a trained parent against from-scratch ones.

Writes results/benchmarks/inheritance.md. Two parents, each trained once and written as an
export folder: the ViT parent of benchmarks/adaptive.py (96 wide, 6 blocks, 3 heads, patch 4)
and an EfficientViT parent sized for 28x28 (EfficientViT-M0's stages, 64/128/192 wide, depths
1/2/3, 4 heads each, stem stride 4: 7x7, 4x4 and 2x2 tokens; window 7; 10 epochs on the same
53,000 Fashion-MNIST training images, lr 2e-3, batch 128).

``fidelity``: rank fidelity of inherited candidates. Candidates within the parent (a fixed
sample of its envelope, 12 spread over 20-90% of its MACs) are each cut from the parent by
its Taylor importance (16 training batches) and fine-tuned for 1 epoch (the search's short
fine-tune) and, separately, for 5 epochs (the long one), on 10,000 of the parent's training
images; Kendall's tau between the two accuracy rankings, on the 5,000 validation images. The
same candidates trained from scratch for 1 and 5 epochs give the contrast. Results are
cached per run (VITNAS_BENCH_WORK/inheritance/fidelity-<parent>.json), so an interrupted run
continues.

    python benchmarks/inheritance.py parent [--threads 1]
    python benchmarks/inheritance.py fidelity --parent vit|efficientvit [--threads 2]
    python benchmarks/inheritance.py fronts [--budget-min 12]   (needs Ray, torch-pruning)

``fronts``: the inherited search against a from-scratch one at equal CPU time, the parent's
uniform prune ladder and Torch-Pruning (benchmarks/inheritance_fronts.py); it writes
inheritance.md: the fronts and every parent's cached rank fidelity.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptive import DATA  # noqa: E402  (the ViT parent's data: the same splits)
from adaptive import PARENT_DIR as VIT_PARENT_DIR  # noqa: E402
from machine import header, write_table  # noqa: E402
from parents import train_parent  # noqa: E402

from search_spaces.efficientvit import EfficientViTConfig  # noqa: E402
from trainers.data import load_data  # noqa: E402
from trainers.importance import taylor_importance  # noqa: E402
from trainers.inherit import base_config, inherit, misfit, read_parent  # noqa: E402
from trainers.loop import FitSettings, evaluate, fit  # noqa: E402
from trainers.measure import count_macs  # noqa: E402
from trainers.warmstart import warm_start_from  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("VITNAS_BENCH_WORK", ROOT / "results")) / "inheritance"
EVIT_PARENT_DIR = WORK / "efficientvit-parent"
EVIT_PARENT = EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(64, 128, 192),
                                 depths=(1, 2, 3), num_heads=(4, 4, 4), window_size=7)
EVIT_TRAIN = FitSettings(epochs=10, batch_size=128, lr=2e-3, warmup_epochs=1,
                         clip_grad=5.0, label_smoothing=0.1)


PARENTS = {"vit": VIT_PARENT_DIR, "efficientvit": EVIT_PARENT_DIR}
# the envelope each parent's candidates are sampled from (every value within the parent)
ENVELOPE = {
    "vit": {"embed_dim": (48, 72, 96), "depth": (2, 3, 4, 5, 6), "num_heads": (1, 2, 3),
            "qk_dim": (8, 16, 32), "v_dim": (16, 32), "mlp_ratio": (1.0, 2.0, 3.0, 4.0)},
    "efficientvit": {"depths": ((1, 1, 1), (1, 1, 2), (1, 2, 2), (1, 2, 3), (1, 1, 3)),
                     "embed_dims": ((64, 128, 192), (48, 96, 144), (32, 64, 96), (64, 96, 128),
                                    (32, 96, 192), (48, 128, 160)),
                     "key_dim": (4, 8, 16), "ffn_ratio": (0.5, 1.0, 1.5, 2.0)},
}
CANDIDATES, SPREAD = 12, (0.2, 0.9)
FINETUNE_DATA = 10_000
SHORT, LONG = 1, 5
INHERITED = FitSettings(epochs=1, batch_size=128, lr=5e-4, warmup_epochs=0.2, clip_grad=5.0,
                        label_smoothing=0.1)
SCRATCH = FitSettings(epochs=1, batch_size=128, lr=2e-3, warmup_epochs=0.2, clip_grad=5.0,
                      label_smoothing=0.1)


def sample_candidates(kind: str, parent, shape) -> list[tuple[object, float]]:
    """CANDIDATES configs within the parent, spread over SPREAD of its MACs: a seeded draw
    of the envelope, one candidate per equal bin of the MACs share."""
    rng = random.Random(0)
    full = count_macs(parent.model, shape)
    bins: dict[int, tuple[object, float]] = {}
    for _ in range(600):
        changes = {name: rng.choice(values) for name, values in ENVELOPE[kind].items()}
        config = parent.config.replace(**changes)
        if misfit(parent, base_config(parent, config)) is not None:
            continue
        model = parent.space.build(config, num_classes=10, in_chans=1)
        share = count_macs(model, shape) / full
        if SPREAD[0] <= share <= SPREAD[1]:
            index = int((share - SPREAD[0]) / (SPREAD[1] - SPREAD[0]) * CANDIDATES)
            bins.setdefault(min(index, CANDIDATES - 1), (config, share))
        if len(bins) == CANDIDATES:
            break
    return [bins[i] for i in sorted(bins)]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long lists (ties count half)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    n = concordant + discordant
    return (concordant - discordant) / (((n + ties_a) * (n + ties_b)) ** 0.5 or 1)


def fidelity(kind: str) -> list[str]:
    """Train (or read back) every candidate inherited and from scratch, short and long."""
    folder = PARENTS[kind]
    cache_path = WORK / f"fidelity-{kind}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    parent = read_parent(folder)
    data = load_data(DATA.replace(train_size=FINETUNE_DATA))
    shape = data.input_shape
    started = time.perf_counter()
    scores = taylor_importance(parent.model, data.train_batches(128, epoch=0, seed=0),
                               num_batches=16,
                               answers=parent.space.structure(parent.config).answers)
    candidates = sample_candidates(kind, parent, shape)
    print(f"{kind}: {len(candidates)} candidates, importance in "
          f"{time.perf_counter() - started:.1f}s", flush=True)
    rows = []
    for config, share in candidates:
        key = config.key()
        entry = cache.setdefault(key, {"config": config.to_dict(), "macs_share": share})
        for arm in ("inherited", "scratch"):
            for epochs in (SHORT, LONG):
                name = f"{arm}_{epochs}"
                if name in entry:
                    continue
                torch.manual_seed(0)
                model = parent.space.build(config, num_classes=10, in_chans=1)
                if arm == "inherited":
                    warm_start_from(model, inherit(parent, config, scores).state_dict)
                settings = (INHERITED if arm == "inherited" else SCRATCH).replace(epochs=epochs)
                t = time.perf_counter()
                fit(model, data, settings)
                entry[name] = evaluate(model, data.val_batches(256))["accuracy"]
                entry[f"{name}_s"] = time.perf_counter() - t
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_text(json.dumps(cache, indent=1))
                print(f"  {key} {share:.2f} {name}: {entry[name]:.4f} "
                      f"({entry[f'{name}_s']:.0f}s)", flush=True)
        rows.append(entry)
    parent_acc = evaluate(parent.model, data.val_batches(256))["accuracy"]
    tau = {arm: kendall_tau([r[f"{arm}_{SHORT}"] for r in rows],
                            [r[f"{arm}_{LONG}"] for r in rows])
           for arm in ("inherited", "scratch")}
    lines = [f"## Rank fidelity: the {kind} parent", "",
             f"Parent: {folder.name}, validation accuracy {parent_acc:.4f}. "
             f"{len(rows)} candidates within it, "
             f"{min(r['macs_share'] for r in rows):.0%}-{max(r['macs_share'] for r in rows):.0%}"
             f" of its MACs; fine-tuned (inherited: lr 5e-4) or trained (scratch: lr 2e-3) on "
             f"{FINETUNE_DATA:,} training images for {SHORT} and, separately, {LONG} epochs "
             "(batch 128, warm-up 0.2 epoch, cosine).", "",
             f"Kendall tau, short vs long: **inherited {tau['inherited']:.2f}**, from scratch "
             f"{tau['scratch']:.2f} (goal for inherited: >= 0.7).", "",
             "| candidate | MACs share | inherited 1 ep | inherited 5 ep | scratch 1 ep | "
             "scratch 5 ep |", "|---|---:|---:|---:|---:|---:|"]
    space = parent.space
    for r in sorted(rows, key=lambda r: r["macs_share"]):
        config = space.config_from_dict(r["config"])
        lines.append(f"| {space.summarize(config)} | {r['macs_share']:.0%} | "
                     f"{r['inherited_1']:.4f} | {r['inherited_5']:.4f} | "
                     f"{r['scratch_1']:.4f} | {r['scratch_5']:.4f} |")
    return lines


def fronts(budget_s: float) -> list[str]:
    """The fronts phase on the ViT parent (cached: a report reruns nothing)."""
    from inheritance_fronts import run

    parent = read_parent(VIT_PARENT_DIR)
    data = load_data(DATA.replace(train_size=FINETUNE_DATA))
    return run(WORK / "fronts", VIT_PARENT_DIR, parent, data, budget_s=budget_s,
               train_size=FINETUNE_DATA, settings=INHERITED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("parent", "fidelity", "fronts"))
    parser.add_argument("--parent", choices=tuple(PARENTS), default="vit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-min", type=float, default=12.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase == "parent":
        data = load_data(DATA)
        if not (EVIT_PARENT_DIR / "config.json").is_file():
            train_parent(EVIT_PARENT, EVIT_PARENT_DIR, data, EVIT_TRAIN,
                         benchmark="inheritance")
    elif args.phase == "fidelity":
        lines = fidelity(args.parent)
        write_table(f"inheritance_fidelity_{args.parent}",
                    header("Search by inheritance: rank fidelity") + lines)
    else:
        lines = [line for kind in PARENTS if (WORK / f"fidelity-{kind}.json").is_file()
                 for line in fidelity(kind) + [""]] + fronts(args.budget_min * 60)
        write_table("inheritance", header("Search by inheritance") + lines)


if __name__ == "__main__":
    main()
