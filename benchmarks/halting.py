"""A-ViT token halting: does removing halted tokens really save time, and does halting reach
accuracy/MACs points that static ViTs do not? Writes results/benchmarks/halting.md.

``speed`` (no Ray needed; runs on a GPU machine too): trains a halting ViT on Fashion-MNIST,
then times, interleaved in one process on real validation images, the removal path (eval
mode), the same weights run in full (every token through every block) and the masked path,
at each batch size; realised speedup = full time / removal time, MACs reduction = full MACs /
MACs the removal path executed on those images (search_spaces.policies.token_cost). Also compares
how the removal path groups rows (PAD_SPLIT: one padded batch vs rows split by length).

``fronts`` (needs Ray: real searches): a small search of static ViTs and one of halting ViTs
of the same widths (accuracy:max, macs:min), every budget point of a halting trial a row;
both fronts, their hypervolumes against one reference, and the halting points that no static
model dominates.

    python benchmarks/halting.py speed [--batches 1 16 64] [--device cpu|cuda]
    python benchmarks/halting.py fronts [--trials 8]
    python benchmarks/halting.py all
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import SAMPLE, header, interleaved, write_table  # noqa: E402

import search_spaces  # noqa: E402  (imports search_spaces._compat first)
from search_spaces.layers import ragged  # noqa: E402
from search_spaces.policies import halting  # noqa: E402
from search_spaces.policies.token_cost import TokenCost  # noqa: E402
from search_spaces.vit import ViTConfig  # noqa: E402
from trainers.data import load_data  # noqa: E402
from trainers.loop import FitSettings, evaluate, fit  # noqa: E402
from trainers.losses import objective_for  # noqa: E402
from trainers.measure import count_macs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ViTConfig(img_size=28, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                  mlp_ratio=2.0, token_policy="halting", halt_gamma=10.0, halt_beta=-5.0,
                  halt_target=0.5)
TRAIN = FitSettings(epochs=3, batch_size=64, lr=1e-3, warmup_epochs=0, clip_grad=5.0,
                    label_smoothing=0.1)


def trained(device: str) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """The halting model trained on 4,000 Fashion-MNIST images, its static twin (same
    weights, run in full) and the data."""
    data = load_data("fashion-mnist", train_size=4000, val_size=1000, seed=0, device=device)
    fam = search_spaces.get("vit")
    torch.manual_seed(0)
    model = fam.build(MODEL, num_classes=10, in_chans=1)
    start = time.perf_counter()
    fit(model, data, TRAIN.replace(device=device),
        loss_fn=objective_for(MODEL, label_smoothing=TRAIN.label_smoothing))
    print(f"trained {MODEL.embed_dim}-wide, {MODEL.depth}-deep halting ViT in "
          f"{time.perf_counter() - start:.0f}s", file=sys.stderr)
    full = fam.build(MODEL.replace(token_policy="static"), num_classes=10, in_chans=1)
    full.load_state_dict(model.state_dict())
    return model.to(device).eval(), full.to(device).eval(), data


def with_split(model: torch.nn.Module, pad_split: float):
    def run(x: torch.Tensor) -> object:
        previous, ragged.PAD_SPLIT = ragged.PAD_SPLIT, pad_split
        try:
            return model(x)
        finally:
            ragged.PAD_SPLIT = previous
    return run


def masked(model: torch.nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        cls, _ = halting.forward_masked(model.blocks, model.embed(x), model.halting)
        return model.head(model.norm(cls))
    return run


def speed_rows(model, full, data, batches: list[int], repeats: int) -> list[str]:
    cost = TokenCost.of(full, (1, 28, 28), count_macs)
    rows = ["| batch | full ms | removal ms | masked ms | MACs kept | MACs reduction | "
            "realised speedup | speedup / MACs reduction | removal, one padded batch ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    x = next(iter(data.val_batches(SAMPLE)))[0]  # every row: the mean over these images
    with torch.inference_mode():
        tokens = model(x).aux["tokens_per_block"]
    kept = float(cost.tokens_cost(tokens).mean()) / cost.full()
    for batch in batches:
        passes = max(repeats // batch, 10) if batch > 1 else max(repeats // 20, 3)
        t = interleaved({"full": full, "removal": with_split(model, ragged.PAD_SPLIT),
                         "masked": masked(model), "one": with_split(model, 1.0)},
                        x, repeats=passes, batch=batch)
        speedup = t["full"] / t["removal"]
        rows.append(f"| {batch} | {t['full'] * 1e3:.2f} | {t['removal'] * 1e3:.2f} | "
                    f"{t['masked'] * 1e3:.2f} | {kept:.3f} | {1 / kept:.2f}x | "
                    f"{speedup:.2f}x | {speedup * kept:.2f} | {t['one'] * 1e3:.2f} |")
        print(rows[-1], file=sys.stderr)
    return rows


def speed(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(args.threads)
    model, full, data = trained(args.device)
    acc = evaluate(model, data.val_batches(256))["accuracy"]
    full_acc = evaluate(full, data.val_batches(256))["accuracy"]
    lines = [f"## Removal path vs the same model run in full ({args.device}, "
             f"{args.threads} thread(s))", "",
             f"Model: ViT {MODEL.embed_dim} wide, {MODEL.depth} blocks, {MODEL.num_heads} "
             f"heads, patch {MODEL.patch_size} on 28x28 (50 tokens), halting gamma "
             f"{MODEL.halt_gamma}, beta {MODEL.halt_beta}, target depth "
             f"{MODEL.halt_target:g} x depth; trained {TRAIN.epochs} epochs on 4,000 "
             f"Fashion-MNIST images. Validation accuracy {acc:.3f} (removal path; the "
             f"masked path gives the same logits). The same weights run in full reach "
             f"{full_acc:.3f}: the model learnt to read the class token early, so `full` "
             "is a timing reference, not a model to deploy.", "",
             f"The mean over the first {SAMPLE} validation images (in batches of the row's "
             "size) of each batch's median over interleaved passes; `MACs kept` = "
             "MACs executed by the removal path on those images / full MACs. `masked` is the "
             "training formulation (A-ViT's released code): every token runs every block. "
             f"Rows are regrouped when padding would exceed {ragged.PAD_SPLIT:.0%} of a "
             "group; the last column runs one padded batch instead.", ""]
    return lines + speed_rows(model, full, data, args.batches, args.repeats)


def fronts(args: argparse.Namespace) -> list[str]:
    from halting_fronts import compare_fronts
    return compare_fronts(ROOT / "configs" / "vit_halting.yaml", trials=args.trials,
                          work=Path(tempfile.mkdtemp(prefix="halting-fronts-")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["speed", "fronts", "all"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    lines = header("A-ViT token halting: real token removal, and fronts vs static ViTs")
    if args.part in ("speed", "all"):
        lines += speed(args) + [""]
    if args.part in ("fronts", "all"):
        lines += fronts(args)
    name = "halting" if args.device == "cpu" else f"halting_{args.device}"
    write_table(name if args.part == "all" else f"{name}_{args.part}", lines)


if __name__ == "__main__":
    main()
