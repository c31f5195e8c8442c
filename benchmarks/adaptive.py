"""Adaptive variants against the static parent they were fine-tuned from.

Writes results/benchmarks/adaptive.md. No Ray needed (runs on a GPU machine too).

``parent``: trains one static ``vit`` well on Fashion-MNIST (53,000 training images, the
5,000 validation images carved from the training set; 96 wide, 6 blocks, 3 heads, patch 4:
50 tokens at 28x28; 10 epochs, lr 2e-3, batch 128) and writes it as an export folder
(results/adaptive/parent), the ``init`` of every variant.

``variants``: fine-tunes adaptive variants from the parent (warm start: every shared tensor
from the parent's weights, through ``trainers.warmstart``) and evaluates each at its budget
points: validation accuracy, executed MACs per image (the family's cost model), and the
latency of its inference path at batch 64 and batch 1 (the mean over 256 real validation
images: an adaptive model's cost differs per image), all next to
the parent, interleaved in one process. The point that meets the accuracy goal with the
fewest MACs is also evaluated once on the test split (reported, never used to choose).

    python benchmarks/adaptive.py parent [--threads 1]
    python benchmarks/adaptive.py train [--epochs 3] [--threads 1] [--only TAG]
                                                                  (fine-tune only)
    python benchmarks/adaptive.py variants [--epochs 3] [--threads 1]
    python benchmarks/adaptive.py all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import SAMPLE, header, interleaved, write_table  # noqa: E402
from parents import progress  # noqa: E402
from parents import train_parent as train_parents  # noqa: E402

import search_spaces  # noqa: E402  (imports search_spaces._compat first)
from search_spaces.policies.gating import TARGETS  # noqa: E402
from search_spaces.policies.gating.gates import GATE_BIAS  # noqa: E402
from search_spaces.vit import ViTConfig  # noqa: E402
from trainers.budget import (  # noqa: E402
    at_knobs,
    budget_points,
    cost_model,
    operating_points,
)
from trainers.data import Data, DataSettings, load_data  # noqa: E402
from trainers.loop import FitSettings, evaluate, fit  # noqa: E402
from trainers.losses import objective_for  # noqa: E402
from trainers.measure import count_macs  # noqa: E402
from trainers.warmstart import read_init, warm_start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# trained weights (parent, variants) are cached here; VITNAS_BENCH_WORK moves the cache out of
# the checkout (a fresh clone then re-times without retraining)
WORK = Path(os.environ.get("VITNAS_BENCH_WORK", ROOT / "results")) / "adaptive"
PARENT_DIR = WORK / "parent"
PARENT = ViTConfig(img_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3,
                   mlp_ratio=4.0)
# a calibration split (cascades fit their exit thresholds there) carved from the training
# pool beside the validation images: the parent and every variant train on the 53,000 left
DATA = DataSettings(name="fashion-mnist", val_size=5000, seed=0, load_test=True,
                    calibration_size=2000)
PARENT_TRAIN = FitSettings(epochs=10, batch_size=128, lr=2e-3, warmup_epochs=1,
                           clip_grad=5.0, label_smoothing=0.1)


def train_parent(data: Data) -> None:
    """Train the static parent and write it as an export folder."""
    train_parents(PARENT, PARENT_DIR, data, PARENT_TRAIN, benchmark="adaptive")


FINETUNE = FitSettings(epochs=3, batch_size=128, lr=5e-4, warmup_epochs=0.2, clip_grad=5.0,
                       label_smoothing=0.1)
HALT_TARGETS = (0.5, 0.67, 0.83)  # target halting depth, as a fraction of the 6 blocks
HALT_GAMMA, HALT_PRIOR = 10.0, 0.1
GATED = (("heads+branches+patches", 0.5), ("heads+branches+patches", 0.7),
         ("heads+patches", 0.7))  # AdaViT gate kinds and their (common) usage target
CASCADES = (("0.5+0.7", True, True), ("0.5+0.7", False, False), ("0.5+0.7", True, False),
            ("0.5+0.7", False, True), ("0.5", True, True))  # grids 4, 5, 7 (4, 7); reuse
CASCADE_EPOCHS = 2  # a cascade step costs ~1.9 parent steps (17 + 26 + 50 tokens)
POINTS = 8
CASCADE_POINTS = 12  # fitted points are cheap: a finer accuracy/cost curve
EQUAL = 0.001  # "equal accuracy" to the parent: within 0.1 points (5 of 5,000 images)
LIMITS = {"halt_eps": 0.6}  # the gate thresholds keep their default far ends
GOAL_DROP = 0.01  # halting: at most 1 point of validation accuracy below the parent
GATED_DROP = 0.02  # gated: at most 2 points


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


def cascade_config(scales: str, feature: bool, relation: bool) -> ViTConfig:
    return PARENT.replace(token_policy="cascade", cascade_scales=scales,
                          cascade_feature_reuse=feature, cascade_relation_reuse=relation)


def variant(data: Data, config: ViTConfig, tag: str, epochs: int,
            only: str | None = None) -> torch.nn.Module | None:
    """An adaptive ViT warm-started from the parent and fine-tuned (cached in WORK); None
    when ``only`` is given and not part of ``tag``."""
    if only is not None and only not in tag:
        return None
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


def trained_variants(data: Data, beta: float, epochs: int, only: str | None = None,
                     ) -> list[tuple[str, ViTConfig, torch.nn.Module | None]]:
    """(row label prefix, config, fine-tuned model) of every variant (those whose tag
    contains ``only``)."""
    out = []
    for target in HALT_TARGETS:
        config = halting_config(target, beta)
        out.append((f"halting t={target:g}", config,
                    variant(data, config, f"halting-{target:g}", epochs, only)))
    for kinds, target in GATED:
        config = gated_config(kinds, target)
        out.append((f"gated {kinds} t={target:g}", config,
                    variant(data, config, f"gated-{kinds}-{target:g}", epochs, only)))
    for scales, feature, relation in CASCADES:
        config = cascade_config(scales, feature, relation)
        reuse = f"f{int(feature)}r{int(relation)}"
        out.append((f"cascade {scales} {reuse}", config,
                    variant(data, config, f"cascade-{scales}-{reuse}", CASCADE_EPOCHS,
                                only)))
    return out


PASSES = {64: 15, 1: 3}  # timed passes over the sample per batch size (batch 1: SAMPLE calls)


def timings(parent: torch.nn.Module, nets: dict[str, torch.nn.Module], data: Data,
            batch: int, repeats: int) -> dict[str, float]:
    """ms per batch of ``batch`` real validation images, interleaved with the parent: the
    mean over the first :data:`SAMPLE` validation images (an adaptive model's cost differs
    per image) of each batch's median over ``repeats`` passes."""
    x = next(iter(data.val_batches(SAMPLE)))[0]
    t = interleaved({"parent": parent, **nets}, x, repeats=repeats, batch=batch)
    return {k: v * 1e3 for k, v in t.items()}


def usage_text(point: dict) -> str:
    """The usage figures of a point (tokens kept; heads, branches, patches kept)."""
    names = {"tokens_kept": "tokens", "usage_heads": "heads", "usage_branches": "branches",
             "usage_patches": "patches"}
    text = ", ".join(f"{short} {point[key]:.3f}" for key, short in names.items() if key in point)
    exits = [point[f"exit_share_{k}"] for k in range(1, 4) if f"exit_share_{k}" in point]
    return text or ("exits " + " / ".join(f"{e:.2f}" for e in exits) if exits else "")


def knob_text(name: str, value: float) -> str:
    """A knob in a row label: gate thresholds by kind, exit thresholds as T1, T2."""
    if name.startswith("gate_"):
        name = name.split("_")[-2]
    elif name.startswith("cascade_exit_"):
        name = "T" + name.rsplit("_", 1)[1]
    return f"{name}={value:g}"


def check_skipping(config: ViTConfig, model: torch.nn.Module, data: Data) -> float:
    """Max |logits| difference between the skipping path and the masked formulation without
    noise on 256 validation images (gated models; 0 for others)."""
    if config.token_policy != "gating":
        return 0.0
    from search_spaces.policies.gating import gates

    x = next(iter(data.val_batches(256)))[0]
    with torch.inference_mode():
        tokens, _ = gates.forward_masked(model.blocks, model.gates, model.embed(x),
                                         model.gating, noisy=False)
        return float((model(x).logits - model.forward_head(tokens)).abs().max())


def variants(data: Data, epochs: int, only: str | None = None) -> list[str]:
    from nas.export import load_exported

    parent = load_exported(PARENT_DIR)
    parent_acc = evaluate(parent, data.val_batches(256))["accuracy"]
    parent_macs = count_macs(parent, data.input_shape)
    beta = -HALT_GAMMA * channel0_quantile(parent, data)
    rows, nets, targets, skip_diff = [], {}, {}, 0.0
    for label, config, model in trained_variants(data, round(beta, 2), epochs, only):
        if model is None:  # not among --only
            continue
        skip_diff = max(skip_diff, check_skipping(config, model, data))
        cost = cost_model("vit", config, model, data.input_shape)
        points = CASCADE_POINTS if config.token_policy == "cascade" else POINTS
        knobs = operating_points("vit", config, model, data, points=points, limits=LIMITS)
        for point in budget_points("vit", config, model, data, knobs=knobs, batch_size=256,
                                   cost=cost):
            name = label + " " + " ".join(knob_text(k, v) for k, v in point["knobs"].items())
            nets[name] = at_knobs("vit", config, model, point["knobs"],
                                  num_classes=data.num_classes, in_chans=data.in_chans)
            rows.append({"name": name, "policy": config.token_policy, **point})
            if config.token_policy == "gating" and point["point"] == 0:
                targets[name] = {f"usage_{k}": getattr(config, TARGETS[k])
                                 for k in config.gate_kinds.split("+")}
    lat64 = timings(parent, nets, data, 64, repeats=PASSES[64])
    lat1 = timings(parent, nets, data, 1, repeats=PASSES[1])
    lines = [f"Parent: static ViT {PARENT.embed_dim} wide, {PARENT.depth} blocks, "
             f"{PARENT.num_heads} heads, patch {PARENT.patch_size} (50 tokens); "
             f"{PARENT_TRAIN.epochs} epochs on 53,000 Fashion-MNIST training images "
             f"(lr {PARENT_TRAIN.lr:g}, batch {PARENT_TRAIN.batch_size}); validation (5,000 "
             f"images carved from the training set) accuracy {parent_acc:.4f}, "
             f"{parent_macs / 1e6:.2f} MMACs per image.", "",
             f"Every variant is warm-started from the parent (every tensor it shares; the "
             f"gates start fresh with bias {GATE_BIAS:g}, i.e. on) and fine-tuned {epochs} "
             f"epochs (lr {FINETUNE.lr:g}, warm-up {FINETUNE.warmup_epochs:g} epoch) on the "
             "same 53,000 images.", "",
             f"Halting (A-ViT) loss: ponder weight 1e-3 (5e-4 x 12 / 6 blocks), depth-prior "
             f"weight {HALT_PRIOR:g}, gamma {HALT_GAMMA:g}, beta {beta:.2f} (= -gamma x the "
             f"99th percentile of the parent's channel 0: almost nothing halts at the start). "
             f"Operating points: eps from 0.01 (trained) to {LIMITS['halt_eps']:g}, "
             f"{POINTS} points.", "",
             "Gated (AdaViT) loss: 2 |heads kept - t| + 2 |branches kept - t| + 2 (patches "
             "kept - t)^2 (the kinds a variant has, one target t for all), Gumbel temperature "
             "5, thresholds 0.5 / 0.5 / 0.6 trained (a bit is on when sigmoid(logit / 5) exceeds "
             "its threshold). Operating points: every threshold from its trained value to its "
             f"default far end (heads, branches 0.6, patches 0.66), {POINTS} points. "
             "Skipping path against the masked formulation on 256 validation images: max "
             f"|logit difference| {skip_diff:.1e}.",
             "",
             "Cascades (DVT): stage grids 4x4, 5x5, 7x7 (`0.5+0.7`) or 4x4, 7x7 (`0.5`), each "
             "stage the resized image through the parent's patch size; every earlier stage "
             "warm-started as the parent at its grid (position embedding resized, bicubic), "
             "the reuse modules fresh (f: feature reuse, r: relationship reuse, 1 on, 0 off); "
             f"the sum of the stages' cross-entropies, {CASCADE_EPOCHS} epochs on the 53,000 "
             "training images left beside a 2,000-image calibration split. Operating points: "
             "point 0 every exit off (the whole cascade), then exit thresholds T1, T2 fitted "
             f"on the calibration split by DVT's rule (exit shares ~ q^k) for "
             f"{CASCADE_POINTS - 1} "
             "values of q evenly spaced in log q from 2.95 (most images run every stage) to "
             "0.05 (most leave after the first); exits: the share of validation images "
             "answered by each stage. The parent never saw the calibration images.", "",
             "Latency: the inference path (token removal, gate skipping, early exit with the "
             "exited images leaving the batch), interleaved with the parent, one thread, on "
             f"the first {SAMPLE} validation images: the mean over batches (4 of 64, or "
             f"{SAMPLE} of 1) of each batch's median over {PASSES[64]} passes (batch 1: "
             f"{PASSES[1]}). Every "
             "image's cost differs: one batch (or one image) is no sample.", "",
             "| model | val acc | vs parent | MACs/image (M) | MACs saved | usage | "
             "b64 ms | b64 speedup | speedup / MACs reduction | b1 ms | b1 speedup |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
             f"| parent (static) | {parent_acc:.4f} | - | {parent_macs / 1e6:.2f} | - | - | "
             f"{lat64['parent']:.2f} | 1.00x | - | {lat1['parent']:.3f} | 1.00x |"]
    for r in rows:
        reduction = parent_macs / r["macs"]
        s64, s1 = lat64["parent"] / lat64[r["name"]], lat1["parent"] / lat1[r["name"]]
        r.update(s64=s64, s1=s1, reduction=reduction)
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {r['accuracy'] - parent_acc:+.4f} "
                     f"| {r['macs'] / 1e6:.2f} | {1 - 1 / reduction:.1%} | {usage_text(r)} | "
                     f"{lat64[r['name']]:.2f} | {s64:.2f}x | {s64 / reduction:.2f} | "
                     f"{lat1[r['name']]:.3f} | {s1:.2f}x |")
    lines += ["", *halting_goal(rows, nets, data, parent, parent_acc, parent_macs),
              "", *gated_goals(rows, targets, nets, data, parent, parent_acc, parent_macs),
              "", *cascade_goals(rows, nets, data, parent, parent_acc, parent_macs)]
    (WORK / "variants.json").write_text(json.dumps(rows, indent=1, default=str))
    return lines


def best_point(rows: list[dict], policy: str, drop: float, parent_acc: float,
               parent_macs: float) -> dict | None:
    """The point of ``policy`` with the most MACs saved at <= ``drop`` below the parent."""
    ok = [r for r in rows if r["policy"] == policy and parent_acc - r["accuracy"] <= drop]
    return min(ok, key=lambda r: r["macs"]) if ok else None


def test_line(best: dict, nets, data, parent) -> str:
    test_parent = evaluate(parent, data.test_batches(256))["accuracy"]
    test_point = evaluate(nets[best["name"]], data.test_batches(256))["accuracy"]
    return (f"Test split (10,000 images, reported once): parent {test_parent:.4f}, this point "
            f"{test_point:.4f} ({test_point - test_parent:+.4f}).")


def halting_goal(rows, nets, data, parent, parent_acc, parent_macs) -> list[str]:
    """The halting point with the most MACs saved at <= 1 point below the parent."""
    best = best_point(rows, "halting", GOAL_DROP, parent_acc, parent_macs)
    if best is None:
        return [f"Halting goal (>= 30% fewer MACs at <= {GOAL_DROP:.0%} less accuracy): no "
                "point stays within 1 point of the parent."]
    saved = 1 - best["macs"] / parent_macs
    met = "met" if saved >= 0.30 else "missed"
    return [f"Halting goal (A-ViT-T: 36% fewer MACs at 0.8 points less): the point with the "
            f"most MACs saved at <= 1 point below the parent is `{best['name']}`: {saved:.1%} "
            f"fewer MACs ({met}: >= 30% asked). " + test_line(best, nets, data, parent)]


def gated_goals(rows, targets, nets, data, parent, parent_acc, parent_macs) -> list[str]:
    """AdaViT goals: usage within 5 points of its targets at the trained thresholds; a
    point with >= 40% fewer MACs at <= 2 points less accuracy; speedup / MACs reduction
    >= 0.7 at batch 64 there."""
    by_name = {r["name"]: r for r in rows}
    out = ["Gated goals:", ""]
    for name, wanted in targets.items():
        got = {k: by_name[name][k] for k in wanted}
        worst = max(abs(got[k] - wanted[k]) for k in wanted)
        out.append(f"- usage at the trained thresholds, `{name}`: "
                   + ", ".join(f"{k[6:]} {got[k]:.3f} (target {wanted[k]:g})" for k in wanted)
                   + f": worst {worst * 100:.1f} points off "
                   f"({'met' if worst <= 0.05 else 'missed'}: within 5 asked)")
    best = best_point(rows, "gating", GATED_DROP, parent_acc, parent_macs)
    if best is None:
        out.append(f"- no gated point stays within {GATED_DROP * 100:g} points of the parent")
        return out
    saved = 1 - best["macs"] / parent_macs
    ratio = best["s64"] / best["reduction"]
    out += [f"- the gated point with the most MACs saved at <= {GATED_DROP * 100:g} points "
            f"below the parent is `{best['name']}`: {saved:.1%} fewer MACs "
            f"({'met' if saved >= 0.40 else 'missed'}: >= 40% asked; Ada-DeiT-S: half the "
            f"MACs for 2.5 points), batch-64 speedup {best['s64']:.2f}x = {ratio:.2f} of its "
            f"MACs reduction ({'met' if ratio >= 0.7 else 'missed'}: >= 0.7 asked), batch 1 "
            f"{best['s1']:.2f}x. " + test_line(best, nets, data, parent)]
    return out


ABLATION_MMACS = (13.0, 15.0, 17.5, 20.0, 25.0, 30.0)  # equal-cost levels of the ablation


def accuracy_at(points: list[dict], macs: float) -> float | None:
    """The best accuracy of a cascade's points at <= ``macs`` per image: linear between
    the two points around it on its accuracy/MACs front, the front's best beyond its last
    point (None below its cheapest)."""
    front, best = [], -1.0
    for r in sorted(points, key=lambda r: r["macs"]):  # kept if above every cheaper point
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    for lo, hi in zip(front, front[1:], strict=False):
        if lo["macs"] <= macs <= hi["macs"]:
            w = (macs - lo["macs"]) / (hi["macs"] - lo["macs"])
            return lo["accuracy"] + w * (hi["accuracy"] - lo["accuracy"])
    return front[-1]["accuracy"] if front and macs >= front[-1]["macs"] else None


def cascade_goals(rows, nets, data, parent, parent_acc, parent_macs) -> list[str]:
    """DVT goals: at the cheapest point as accurate as the parent, >= 1.5x the parent's speed
    at batch 64; what each reuse buys in accuracy at equal cost."""
    cascades = {}
    for r in rows:
        if r["policy"] == "cascade":
            cascades.setdefault(r["name"].rsplit(" T1=", 1)[0], []).append(r)
    out = ["Cascade goals (DVT's T2T-ViT: 1.4-1.7x faster on GPU at equal accuracy; here "
           f"equal: at most {EQUAL * 100:g} points below the parent's {parent_acc:.4f}, and "
           "strictly at or above it):", ""]
    best_overall = None
    for label, points in cascades.items():
        for name, floor in (("equal", parent_acc - EQUAL), (">=", parent_acc)):
            ok = [r for r in points if r["accuracy"] >= floor - 1e-9]
            if not ok:
                top = max(points, key=lambda r: r["accuracy"])
                out.append(f"- `{label}`, {name}: no point (best {top['accuracy']:.4f} at "
                           f"{top['macs'] / 1e6:.2f} MMACs)")
                continue
            best = min(ok, key=lambda r: r["macs"])
            if name == "equal" and (best_overall is None or best["s64"] > best_overall["s64"]):
                best_overall = best
            out.append(f"- `{label}`, {name}: the cheapest point is `{best['name']}` "
                       f"({best['accuracy']:.4f}, {best['macs'] / 1e6:.2f} MMACs, "
                       f"{1 - 1 / best['reduction']:.1%} fewer; exits {usage_text(best)[6:]}): "
                       f"batch 64 {best['s64']:.2f}x "
                       f"({'met' if best['s64'] >= 1.5 else 'missed'}: >= 1.5x asked), "
                       f"batch 1 {best['s1']:.2f}x")
    if best_overall is not None:
        out += ["", f"The fastest of them, `{best_overall['name']}`: "
                + test_line(best_overall, nets, data, parent)]
    ablation = {label: pts for label, pts in cascades.items() if label.startswith(
        "cascade 0.5+0.7 ")}
    if len(ablation) > 1:
        out += ["", "Reuse ablation (`0.5+0.7`, f: feature reuse, r: relationship reuse): "
                "the best validation accuracy at <= the executed MACs of each column, linear "
                "between the two nearest points of each cascade's front (- below its "
                "cheapest point):", "",
                "| cascade | whole cascade acc | whole cascade MMACs | "
                + " | ".join(f"acc at {m:g} MMACs" for m in ABLATION_MMACS) + " |",
                "|---|---:|---:|" + "---:|" * len(ABLATION_MMACS)]
        for label, pts in ablation.items():
            whole = next(r for r in pts if r["point"] == 0)
            cells = [accuracy_at(pts, m * 1e6) for m in ABLATION_MMACS]
            out.append(f"| {label} | {whole['accuracy']:.4f} | {whole['macs'] / 1e6:.2f} | "
                       + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["parent", "train", "variants", "all"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=FINETUNE.epochs)
    parser.add_argument("--only", help="only the variants whose tag contains this (e.g. "
                                       "cascade-0.5+0.7-f1r1): train several side by side, "
                                       "or tabulate some (variants: adaptive_ONLY.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DATA)
    if args.phase in ("parent", "all") and not (PARENT_DIR / "config.json").is_file():
        train_parent(data)
    if args.phase == "train":  # fine-tune (and cache) the variants only
        from nas.export import load_exported
        beta = -HALT_GAMMA * channel0_quantile(load_exported(PARENT_DIR), data)
        trained_variants(data, round(beta, 2), args.epochs, args.only)
    if args.phase in ("variants", "all"):
        torch.set_num_threads(1)  # latency protocol: one thread (training used --threads)
        lines = header("Adaptive variants against their static parent") + variants(
            data, args.epochs, args.only)
        write_table("adaptive" if args.only is None else f"adaptive_{args.only}", lines)


if __name__ == "__main__":
    main()
