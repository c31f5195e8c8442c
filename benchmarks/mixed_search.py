"""One study mixing static, halting, gated and cascade ViTs (warm-started from a trained
parent) against a static-only search of the same trial budget. Needs Ray (two real searches).

Writes results/benchmarks/mixed_search.md. Both searches start from configs/vit_cascade.yaml
with the same data (a Fashion-MNIST training subset, the adaptive benchmark's 5,000
validation images), the same trial count, epochs per trial and sampler:

- ``mixed``: ``init.weights`` = the adaptive benchmark's static parent (96 wide, 6 blocks,
  3 heads: results/adaptive/parent, made by ``benchmarks/adaptive.py parent``), which fixes
  every architecture dimension; the search draws the token policy (static, halting, gating,
  cascade) and its knobs, and each trial fine-tunes the parent (the gates and the cascades'
  reuse modules start fresh, a cascade's earlier stages as the parent at their grids);
- ``static``: ``token_policy: static`` over widths, depths and heads, trained from scratch
  with the same per-trial budget.

Objectives accuracy and executed MACs per image (deterministic; latency is noisy on a shared
machine). Every operating point of an adaptive trial is a front candidate.

    python benchmarks/mixed_search.py [--trials 8] [--epochs 2] [--train-size 8000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

from nas import spec as specs  # noqa: E402
from nas.pareto import hypervolume, pareto_front  # noqa: E402
from nas.results import load_results  # noqa: E402
from nas.search import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARENT = ROOT / "results" / "adaptive" / "parent"
SPEC = ROOT / "configs" / "vit_cascade.yaml"
OBJECTIVES = ["accuracy:max", "macs:min"]


def search(name: str, overrides: list[str], work: Path) -> pd.DataFrame:
    spec = specs.load(SPEC, overrides, name=name, results_dir=str(work))
    study = run_search(spec, printer=lambda line: print(line, flush=True))
    frame = load_results(study)
    return frame[frame["status"] == "complete"].copy()


def describe(row: pd.Series) -> str:
    cfg = json.loads(row["config"])
    policy = cfg["token_policy"]
    what = {"static": f"static {cfg['embed_dim']}w x{cfg['depth']} {cfg['num_heads']}h",
            "halting": f"halting target {cfg['halt_target']:g}",
            "gating": f"gating {cfg['gate_kinds']}",
            "cascade": f"cascade {cfg['cascade_scales']} f{int(cfg['cascade_feature_reuse'])}"
                       f"r{int(cfg['cascade_relation_reuse'])}"}[policy]
    knobs = json.loads(row["knobs"]) if isinstance(row.get("knobs"), str) else {}
    return what + ("" if not knobs else " @ " + ", ".join(f"{k}={v:g}"
                                                           for k, v in knobs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=8000)
    args = parser.parse_args()
    if not (PARENT / "config.json").is_file():
        raise SystemExit(f"{PARENT} is missing: run `python benchmarks/adaptive.py parent`")
    common = [f"trials={args.trials}", f"train.epochs={args.epochs}",
              f"data.train_size={args.train_size}", "data.val_size=5000", "data.seed=0",
              "train.batch_size=128", "concurrent_trials=1", "objectives=[accuracy:max, macs:min]",
              "latency.repeats=5", "latency.rounds=2", "sampler.population_size=4"]
    work = Path(tempfile.mkdtemp(prefix="mixed-"))
    try:
        mixed = search("mixed", common + [
            f"init.weights={PARENT}", "space.dims.num_heads=3", "space.dims.mlp_ratio=4.0",
            "train.lr=0.0005", "train.warmup_epochs=0.2",
            "space.dims.halt_beta=-15.0"], work)
        static = search("static", common + [
            "space.dims.token_policy=static", "space.dims.embed_dim=[48, 96, 144]",
            "space.dims.depth={low: 3, high: 8}", "space.dims.num_heads=[2, 3, 4]"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = [0.0, float(max(mixed["full_macs"].max(), static["full_macs"].max()))]
    lines = header("A mixed adaptive study against a static-only one") + [
        f"Two searches of {args.trials} trials each from `configs/vit_cascade.yaml` (NSGA-II, "
        f"{args.epochs} epochs per trial on {args.train_size:,} Fashion-MNIST training "
        "images, the 5,000 validation images the parent was selected on), objectives "
        "accuracy and executed MACs per image. `mixed`: every candidate warm-started from "
        "the static parent of results/benchmarks/adaptive.md (trained 10 epochs on 55,000 "
        "images: the mixed study inherits that training), token policy static / halting / "
        "gating / cascade drawn with its knobs (lr 5e-4; a cascade's exit thresholds fitted "
        "on 1,000 calibration images). `static`: static ViTs (width 48-144, "
        "depth 3-8, 2-4 heads) from scratch (lr 2e-3). Hypervolume reference: accuracy 0, "
        f"{reference[1] / 1e6:.2f} MMACs.", "",
        "| study | trials | rows (points) | front size | hypervolume (accuracy x MMACs) |",
        "|---|---:|---:|---:|---:|"]
    fronts = {}
    for name, frame in (("mixed", mixed), ("static", static)):
        front = pareto_front(frame, OBJECTIVES)
        fronts[name] = front
        hv = hypervolume(frame, OBJECTIVES, reference) / 1e6
        lines.append(f"| {name} | {frame['trial'].nunique()} | {len(frame)} | {len(front)} | "
                     f"{hv:.3f} |")
    for name, front in fronts.items():
        lines += ["", f"Front of `{name}`:", "", "| trial | point | candidate | accuracy | "
                  "MMACs |", "|---:|---:|---|---:|---:|"]
        for _, r in front.iterrows():
            lines.append(f"| {r['trial']} | {r['point']} | {describe(r)} | "
                         f"{r['accuracy']:.4f} | {r['macs'] / 1e6:.2f} |")
    write_table("mixed_search", lines)


if __name__ == "__main__":
    main()
