"""Importance-guided search against the sampler alone, at the same number of trials: the
hypervolume of the (accuracy, MACs) front on Fashion-MNIST, over several sampler seeds.
Prints a table and writes results/benchmarks/importance.md.

    .ci/in-env python benchmarks/importance.py [--seeds 3] [--trials 10] [--epochs 2]

Both arms run configs/quick.yaml's efficientvit space with objectives accuracy:max and
macs:min (MACs, unlike latency, do not move with the load of this shared machine) and the
same sampler seed; the guided arm enqueues ``--proposals`` importance-guided configs
(nas/guidance.py) once ``--after`` trials have completed. One reference point serves every
run: accuracy REF_ACCURACY and 1.1 x the MACs of the space's largest candidate (every knob at
its largest value), so hypervolumes compare across runs and arms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

import search_spaces  # noqa: E402
from nas import hypervolume, load_results, pareto_front  # noqa: E402
from nas import spec as specs  # noqa: E402
from nas.guidance import Knob, kept_fraction  # noqa: E402
from nas.search import run_search  # noqa: E402
from trainers.importance import COMPONENTS  # noqa: E402
from trainers.measure import count_macs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["accuracy:max", "macs:min"]
REF_ACCURACY = 0.5


def make_spec(args: argparse.Namespace, folder: Path, seed: int, guided: bool
              ) -> specs.SearchSpec:
    sets = [f"trials={args.trials}", f"train.epochs={args.epochs}", "concurrent_trials=2",
            f"objectives={OBJECTIVES}", f"sampler.seed={seed}",
            f"guidance.proposals={args.proposals if guided else 0}",
            f"guidance.after={args.after}", "latency.repeats=3", "latency.rounds=1",
            "latency.warmup=1"]
    name = f"{'guided' if guided else 'sampler'}-{seed}"
    return specs.load(ROOT / "configs" / "quick.yaml", sets, name=name,
                      results_dir=str(folder))


def largest_macs(spec: specs.SearchSpec) -> int:
    """MACs of the space's largest candidate: the largest value of every knob."""
    space = search_spaces.get(spec.space.name)
    dims = {**space.dims, **spec.space.dims}
    config = space.from_params({k: max(d.values()) for k, d in dims.items()}, dims)
    model = space.build(config, num_classes=10, in_chans=1)
    return count_macs(model, (1, config.img_size, config.img_size))


def summary(frame: pd.DataFrame, reference: list[float]) -> dict:
    front = pareto_front(frame, OBJECTIVES)
    box = (1.0 - reference[0]) * reference[1]
    trials = frame.drop_duplicates("trial").set_index("trial")
    proposals = trials[trials["origin"].str.startswith("proposal")]
    return {"hv": 100 * hypervolume(front, OBJECTIVES, reference) / box,
            "best_acc": frame["accuracy"].max(), "min_macs": frame["macs"].min() / 1e6,
            "front": len(front), "proposals": len(proposals),
            "on_front": int(front["origin"].str.startswith("proposal").sum()),
            "vs_parent": [vs_parent(trials, n, row) for n, row in proposals.iterrows()],
            "needed": [needed(row) for row in front.to_dict("records")]}


def needed(row: dict) -> dict:
    """Per component, the share of channels keeping 90% of importance in the most and the
    least demanding stage (a knob shared by every stage must serve the most demanding)."""
    out = {}
    for component in COMPONENTS:
        stages = [Knob(component, "", stage) for stage in range(4)]
        shares = [s for s in (kept_fraction(row, k) for k in stages) if s == s]
        if shares:
            out[component] = (max(shares), min(shares))
    return out


def vs_parent(trials: pd.DataFrame, number: int, row: pd.Series) -> dict:
    """A proposal against the front trial it came from: MACs ratio, accuracy change."""
    _, parent, component = row["origin"].split(":")
    base = trials.loc[int(parent.removeprefix("from="))]
    return {"trial": number, "component": component, "macs": row["macs"] / base["macs"],
            "accuracy": row["accuracy"] - base["accuracy"]}


def run_arm(args: argparse.Namespace, folder: Path, seed: int, guided: bool) -> pd.DataFrame:
    spec = make_spec(args, folder, seed, guided)
    start = time.perf_counter()
    study = run_search(spec, printer=lambda line: print(f"[{spec.name}] {line}", flush=True))
    print(f"[{spec.name}] done in {time.perf_counter() - start:.0f}s", flush=True)
    return load_results(study)


def mean_sd(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(results: dict, reference: list[float], args: argparse.Namespace) -> list[str]:
    lines = ["| arm | hypervolume (% of box) | best accuracy | smallest MACs (M) | front size "
             "| proposals run | proposals on the front |", "|---|---|---|---|---|---|---|"]
    for arm, runs in results.items():
        col = {k: [r[k] for r in runs.values()] for k in runs[next(iter(runs))]}
        lines.append(f"| {arm} | {mean_sd(col['hv'])} | {mean_sd(col['best_acc'], 3)} | "
                     f"{mean_sd(col['min_macs'], 3)} | {mean_sd(col['front'], 1)} | "
                     f"{sum(col['proposals'])} | {sum(col['on_front'])} |")
    lines += ["", "| sampler seed | hypervolume, sampler only | hypervolume, guided | "
              "guided - sampler |", "|---|---|---|---|"]
    sampler, guided = results["sampler only"], results["guided"]
    for seed in sampler:
        diff = guided[seed]["hv"] - sampler[seed]["hv"]
        lines.append(f"| {seed} | {sampler[seed]['hv']:.2f} | {guided[seed]['hv']:.2f} | "
                     f"{diff:+.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--proposals", type=int, default=3)
    ap.add_argument("--after", type=int, default=4)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vitnas-importance-"))
    reference = [REF_ACCURACY, 1.1 * largest_macs(make_spec(args, folder, 0, False))]
    results: dict[str, dict[int, dict]] = {"sampler only": {}, "guided": {}}
    started = time.perf_counter()
    for seed in range(args.seeds):
        for arm, guided in (("sampler only", False), ("guided", True)):
            frame = run_arm(args, folder, seed, guided)
            assert frame["macs"].max() <= reference[1], "reference MACs below a candidate"
            results[arm][seed] = summary(frame, reference)
            print(f"{arm} seed {seed}: {results[arm][seed]}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    intro = [f"configs/quick.yaml's efficientvit space on Fashion-MNIST (4,000 training, 1,000 "
             f"validation images), objectives {', '.join(OBJECTIVES)}; {args.trials} trials of "
             f"{args.epochs} epochs, 2 side by side, NSGA-II (population 6), sampler seeds 0.."
             f"{args.seeds - 1}; guided: up to {args.proposals} proposals enqueued after "
             f"{args.after} complete trials. Importance (4 batches) is computed in both arms. "
             f"Hypervolume reference point, the same for every run: accuracy "
             f"{reference[0]}, MACs {reference[1] / 1e6:.3f}M (1.1 x the space's largest "
             f"candidate); shown as % of the box [{reference[0]}, 1] x [0, "
             f"{reference[1] / 1e6:.3f}M]. Mean ± sample standard deviation over seeds. "
             f"Total {(time.perf_counter() - started) / 60:.0f} min (other jobs shared the "
             f"machine: timings are not results).", ""]
    write_table("importance", header("Importance-guided search") + intro
                + table(results, reference, args) + [""] + notes(results, args))


def verdict(diffs: list[float]) -> str:
    mean = statistics.mean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    if abs(mean) <= sd:
        return ("no measurable effect: the mean difference is smaller than its seed-to-seed "
                f"spread (sd {sd:.2f})")
    if mean > 0:
        return "guidance helped" + (" in every seed" if min(diffs) > 0 else " on average")
    return "guidance hurt" + (" in every seed" if max(diffs) < 0 else " on average")


def importance_line(results: dict) -> str:
    """The mean over every front trial of both arms of what ``needed`` says."""
    rows = [n for arm in results.values() for run in arm.values() for n in run["needed"]]
    parts = []
    for component in COMPONENTS:
        pairs = [n[component] for n in rows if component in n]
        if pairs:
            parts.append(f"{component} {statistics.mean(p[0] for p in pairs):.2f} "
                         f"({statistics.mean(p[1] for p in pairs):.2f})")
    return ("**What importance said**: share of channels (heads, blocks) keeping 90% of a "
            "component's importance, mean over the front trials of both arms, in the most "
            f"(least) demanding stage: {', '.join(parts)}. A knob shared by every stage "
            "(key_dim, v_ratio, ffn_ratio) can only shrink as far as its most demanding stage "
            "allows, to a value of its domain: key_dim 8 of 16 and v_ratio 0.5 of 1 keep 50%, "
            "ffn_ratio 2 of 3 keeps 67% (and a stage's heads go 4 -> 2: 50%).")


def notes(results: dict, args: argparse.Namespace) -> list[str]:
    """What the numbers say: the paired difference, what the proposals did, and why."""
    sampler, guided = results["sampler only"], results["guided"]
    diffs = [guided[s]["hv"] - sampler[s]["hv"] for s in sampler]
    wins = sum(d > 0 for d in diffs)
    moves = [p for run in guided.values() for p in run["vs_parent"]]
    lines = [f"**Result**: {verdict(diffs)}. Paired by seed (both arms draw the same first "
             f"trials), guided minus sampler-only hypervolume: {mean_sd(diffs)} points of the "
             f"box; guided is higher in {wins} of {len(diffs)} seeds.", ""]
    if moves:
        done = [p for p in moves if p["accuracy"] == p["accuracy"]]
        kinds = ", ".join(f"{k} {sum(p['component'] == k for p in moves)}"
                          for k in dict.fromkeys(p["component"] for p in moves))
        on_front = sum(run["on_front"] for run in guided.values())
        lines += [f"**What the proposals did**: {len(moves)} ran ({kinds}); {on_front} "
                  f"ended on their run's final front. Against the front trial each came from: "
                  f"MACs x{statistics.mean(p['macs'] for p in moves):.2f} (mean), accuracy "
                  f"{statistics.mean(p['accuracy'] for p in done):+.3f} (mean of {len(done)} "
                  "trained).", ""]
    lines += [importance_line(results), ""]
    best = [statistics.mean(r["best_acc"] for r in arm.values()) for arm in (sampler, guided)]
    lines += ["**Why**: a proposal keeps a front trial's architecture and shrinks only the "
              "component its Taylor importance marks as unused, so it lands beside its parent "
              "at fewer MACs for about the same accuracy: it fills in the front where the "
              "sampler has already found good candidates. Its cost is the trial it takes from "
              "the sampler: "
              + ("the sampler-only arm's extra draws found more accurate candidates (best "
                 f"accuracy {best[0]:.3f} vs {best[1]:.3f}), so the front's accurate end is "
                 "where guidance loses. " if best[0] > best[1] else
                 "here those draws found no more accurate candidate. ")
              + f"Caveats: {args.trials} trials of {args.epochs} epochs on 4,000 images and "
              "importance from 4 batches are noisy; the quick space leaves one smaller step "
              "for most knobs (key_dim 8/16, ffn_ratio 2/3, v_ratio 0.5/1, depth 1/2); "
              f"{len(diffs)} seeds only."]
    return lines


if __name__ == "__main__":
    main()
