"""Fronts at equal CPU time for search by inheritance (the ``fronts`` phase of
benchmarks/inheritance.py; needs Ray, and Torch-Pruning for the peer's points).

Over one space within the ViT parent (width 48/72/96, depth 2-6, 1-3 heads, Q/K 8/16/32,
V 16/32, FFN ratio 1-4; static, multi-head attention), with the same data (10,000 of the
parent's training images, its 5,000 validation images), one epoch per trial, NSGA-II and
the same wall-clock budget at 2 trials of 1 CPU each:

- ``inherited``: ``init: {weights: PARENT, inherit: importance}``: each candidate cut from
  the parent by its Taylor importance, fine-tuned (lr 5e-4);
- ``scratch``: the same space from scratch (lr 2e-3).

Against the parent's uniform prune ladder (``nas prune --keep 0.3 .. 0.9`` of the study's
prunable widths, the same fine-tune) and Torch-Pruning's timm recipe (benchmarks/
peer_pruner.py) pruned to 25/50/75% of the parent's MACs, fine-tuned the same way.
Objectives accuracy and MACs (deterministic; latency is noisy on a shared machine).
Everything is cached under VITNAS_BENCH_WORK/inheritance/fronts.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from nas import spec as specs
from nas.pareto import hypervolume, pareto_front
from nas.results import load_results
from nas.search import run_search
from trainers.importance import taylor_importance
from trainers.inherit import Parent
from trainers.loop import FitSettings, evaluate, fit
from trainers.measure import count_macs
from trainers.pruning import build_pruned, prune

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "vit_fashion.yaml"
OBJECTIVES = ["accuracy:max", "macs:min"]
SPACE = ["space.dims.patch_size=4", "space.dims.embed_dim=[48, 72, 96]",
         "space.dims.depth={low: 2, high: 6}", "space.dims.num_heads=[1, 2, 3]",
         "space.dims.qk_dim=[8, 16, 32]", "space.dims.v_dim=[16, 32]",
         "space.dims.mlp_ratio=[1.0, 2.0, 3.0, 4.0]", "space.dims.attn=mhsa",
         "space.dims.sandwich=0", "space.dims.token_policy=static"]
LADDER = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LEVELS = (0.25, 0.5, 0.75)
COMPONENTS = ("qk", "v", "ffn", "heads", "depth", "width")


def _common(train_size: int) -> list[str]:
    return SPACE + [
        "trials=200", f"data.train_size={train_size}", "data.val_size=5000", "data.seed=0",
        "data.calibration_size=2000", "train.epochs=1", "train.batch_size=128",
        "train.warmup_epochs=0.2", "train.clip_grad=5.0", "train.label_smoothing=0.1",
        "concurrent_trials=2", "resources.cpus=1", f"objectives=[{', '.join(OBJECTIVES)}]",
        "latency.repeats=3", "latency.rounds=1", "sampler={name: nsga2, seed: 0, "
        "population_size: 8}"]


def search(work: Path, name: str, overrides: list[str], budget_s: float) -> dict:
    """One search of ``budget_s`` seconds (cached: its folder and a done.json)."""
    done = work / name / "done.json"
    if not done.is_file():
        shutil.rmtree(work / name, ignore_errors=True)
        spec = specs.load(SPEC, overrides, name=name, results_dir=str(work))
        started = time.perf_counter()
        run_search(spec, printer=lambda line: print(f"[{name}] {line}", flush=True),
                   time_budget_s=budget_s)
        done.write_text(json.dumps({"wall_s": time.perf_counter() - started,
                                    "budget_s": budget_s}))
    frame = load_results(work / name)
    return {"frame": frame[frame["status"] == "complete"].copy(),
            **json.loads(done.read_text())}


def _finetuned(model: torch.nn.Module, data, settings: FitSettings) -> float:
    torch.manual_seed(0)
    fit(model, data, settings)
    return evaluate(model, data.val_batches(256))["accuracy"]


def ladder(work: Path, parent: Parent, data, settings: FitSettings) -> list[dict]:
    """The parent pruned uniformly to each keep of LADDER, fine-tuned (cached; the parent is
    scored once, only when a step is missing)."""
    path = work / "ladder.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    full = count_macs(parent.model, data.input_shape)
    scores = None
    for keep in LADDER:
        if str(keep) in cache:
            continue
        if scores is None:
            scores = taylor_importance(
                parent.model, data.train_batches(128, epoch=0, seed=0), num_batches=16,
                answers=parent.space.structure(parent.config).answers)
        t = time.perf_counter()
        pruned = prune(parent.config, parent.model, scores, keep)
        model = build_pruned(pruned, num_classes=data.num_classes, in_chans=data.in_chans)
        macs = count_macs(model, data.input_shape)
        cache[str(keep)] = {"keep": keep, "macs": macs, "share": macs / full,
                            "accuracy": _finetuned(model, data, settings),
                            "seconds": time.perf_counter() - t}
        path.write_text(json.dumps(cache, indent=1))
        print(f"ladder keep {keep}: {cache[str(keep)]}", flush=True)
    return [cache[str(k)] for k in LADDER]


def peer(work: Path, parent: Parent, data, settings: FitSettings) -> list[dict]:
    """Torch-Pruning's points at LEVELS of the parent's MACs, fine-tuned (cached)."""
    from peer_pruner import torch_pruning_to

    path = work / "peer.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    batches = None
    for level in LEVELS:
        if str(level) in cache:
            continue
        t = time.perf_counter()
        if batches is None:  # the 16 training batches our own scores use
            batches = list(itertools.islice(data.train_batches(128, epoch=0, seed=0), 16))
        model, share = torch_pruning_to(parent.model, batches, level, data.input_shape)
        dims = {"embed_dim": model.patch_embed.proj.out_channels,
                "head_dim": model.blocks[0].attn.qk_dim,
                "mlp_hidden": model.blocks[0].mlp.fc1.out_features}
        cache[str(level)] = {"level": level, "share": share, **dims,
                             "accuracy": _finetuned(model, data, settings),
                             "seconds": time.perf_counter() - t}
        path.write_text(json.dumps(cache, indent=1))
        print(f"torch-pruning {level:.0%}: {cache[str(level)]}", flush=True)
    return [cache[str(level)] for level in LEVELS]


def _best_at(points: pd.DataFrame, macs: float) -> float | None:
    within = points[points["macs"] <= macs * (1 + 1e-9)]
    return None if within.empty else float(within["accuracy"].max())


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def run(work: Path, folder: Path, parent: Parent, data, *, budget_s: float, train_size: int,
        settings: FitSettings) -> list[str]:
    """Every arm (cached) and the report's lines."""
    work.mkdir(parents=True, exist_ok=True)
    common = _common(train_size)
    steps = ladder(work, parent, data, settings)
    peers = peer(work, parent, data, settings)
    arms = {
        "inherited": search(work, "inherited", common + [
            f"init.weights={folder}", "init.inherit=importance", "train.lr=0.0005"], budget_s),
        "scratch": search(work, "scratch", common + ["train.lr=0.002"], budget_s)}
    full = count_macs(parent.model, data.input_shape)
    reference = [0.0, float(full)]
    lines = ["## Fronts at equal CPU time: the vit parent", "",
             f"Two searches over the same space within the parent (width 48/72/96, depth 2-6, "
             "1-3 heads, Q/K 8/16/32, V 16/32, FFN ratio 1-4), NSGA-II (population 8), one "
             f"epoch per trial on {train_size:,} training images, the parent's 5,000 "
             f"validation images, {budget_s / 60:.0f} minutes of wall clock each at 2 trials "
             "of 1 CPU (the same CPU time). `inherited`: `init: {weights: parent, inherit: "
             "importance}` (lr 5e-4); `scratch`: from scratch (lr 2e-3). The ladder: the "
             "parent pruned uniformly (`nas prune --keep K`: Q/K, V and FFN widths; heads, "
             "depth and residual width kept) and fine-tuned 1 epoch the same way; "
             "Torch-Pruning 1.6.1's timm recipe (Taylor importance, uniform ratio over every "
             "coupled group, residual width included) to the MACs level, fine-tuned the same "
             "way. Hypervolume reference: accuracy 0, the parent's "
             f"{full / 1e6:.2f} MMACs (in accuracy x MMACs).", "",
             "A search ends at its budget or at 200 trials, whichever comes first (trials "
             "reuse a duplicate's result at once, so a search of cheap trials may reach the "
             "cap first: it then had less CPU time than the other).", "",
             "| search | minutes | complete trials | trained | trials per CPU-hour | "
             "front size | hypervolume |", "|---|---:|---:|---:|---:|---:|---:|"]
    hv = {}
    for name, arm in arms.items():
        frame = arm["frame"]
        trained = frame["duplicate_of"].isna().sum() if "duplicate_of" in frame else len(frame)
        hv[name] = hypervolume(frame, OBJECTIVES, reference) / 1e6
        minutes = min(arm["wall_s"], arm["budget_s"]) / 60  # a search may end at its cap
        cpu_h = minutes * 2 / 60
        lines.append(f"| {name} | {minutes:.1f} | {len(frame)} | {trained} | "
                     f"{len(frame) / cpu_h:.1f} | "
                     f"{len(pareto_front(frame, OBJECTIVES))} | {hv[name]:.3f} |")
    ladder_frame = pd.DataFrame(steps)
    lines += ["", f"Hypervolume ratio inherited / scratch: **{hv['inherited'] / hv['scratch']:.2f}"
              "x** (goal >= 1.5x).", "",
              "Best accuracy at or below a share of the parent's MACs:", "",
              "| MACs share | inherited front | scratch front | uniform ladder | Torch-Pruning |",
              "|---:|---:|---:|---:|---:|"]
    for level, tp_point in zip(LEVELS, peers, strict=True):
        macs = level * full
        lines.append(f"| {level:.0%} | {_fmt(_best_at(arms['inherited']['frame'], macs))} | "
                     f"{_fmt(_best_at(arms['scratch']['frame'], macs))} | "
                     f"{_fmt(_best_at(ladder_frame, macs))} | {tp_point['accuracy']:.4f} "
                     f"({tp_point['share']:.0%}) |")
    lines += ["", "The ladder:", "", "| keep | MACs share | accuracy |", "|---:|---:|---:|"]
    lines += [f"| {s['keep']:.1f} | {s['share']:.0%} | {s['accuracy']:.4f} |" for s in steps]
    lines += ["", "Torch-Pruning's points:", "", "| level | MACs share | embed dim | head dim | "
              "MLP hidden | accuracy |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['level']:.0%} | {p['share']:.0%} | {p['embed_dim']} | {p['head_dim']} | "
              f"{p['mlp_hidden']} | {p['accuracy']:.4f} |" for p in peers]
    lines += _kept(arms["inherited"]["frame"], full, parent)
    return lines


def _kept(frame: pd.DataFrame, full: float, parent: Parent) -> list[str]:
    """The kept share per component of the inherited front's models at <= 50% MACs."""
    front = pareto_front(frame, OBJECTIVES)
    small = front[front["macs"] <= 0.5 * full].sort_values("macs")
    cols = [c for c in COMPONENTS if f"init_kept_{c}" in small]
    lines = ["", "Kept share of the parent per component, the inherited front's models at "
             "<= 50% of its MACs:", "",
             "| candidate | MACs share | accuracy | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    space = parent.space
    for _, r in small.iterrows():
        config = space.config_from_dict(json.loads(r["config"]))
        lines.append(f"| {space.summarize(config)} | {r['macs'] / full:.0%} | "
                     f"{r['accuracy']:.4f} | "
                     + " | ".join(f"{r[f'init_kept_{c}']:.2f}" for c in cols) + " |")
    if not small.empty and {"init_kept_qk", "init_kept_v"} <= set(small):
        qk, v = small["init_kept_qk"].mean(), small["init_kept_v"].mean()
        verdict = "more than" if qk < v else "no more than"
        lines += ["", f"Mean kept share over these models: Q/K {qk:.2f}, V {v:.2f}: the search "
                  f"cut Q/K {verdict} V (EfficientViT found Q/K can be cut more)."]
    return lines
