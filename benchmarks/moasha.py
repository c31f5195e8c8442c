"""FIFO vs ASHA vs MO-ASHA on the default search's space at equal wall time: hypervolume of
the (accuracy, latency) front, trials started, CPU-hours. Prints a table and writes
results/benchmarks/moasha.md.

    .ci/in-env python benchmarks/moasha.py [--seeds 3] [--budget 220]

Every search is configs/quick.yaml (the efficientvit space, 4,000 Fashion-MNIST images, 3
epochs, NSGA-II) with one trial at a time on one core, stopped after ``--budget`` seconds of
trials (the trial still running then is cut: it stays unfinished), under ``scheduler`` none
(FIFO), asha (accuracy only) or moasha (both objectives), halving at its defaults (rungs at
epochs 1 and 3, a third continue), the same sampler seed for the three. CPU time is what the
driver and every process it started (Ray's and the trials') used, read from /proc. Per-run
figures go to runs.json in the work folder; ``--tables FOLDER`` writes the tables again from
one. One reference point serves every run: accuracy REF_ACCURACY and 1.1 x the largest
latency of a complete trial in any run; "small latency" is the fastest third of all complete
trials of all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

from nas import hypervolume, load_results, pareto_front  # noqa: E402
from nas import spec as specs  # noqa: E402
from nas.durable import PER_EPOCH  # noqa: E402
from nas.search import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = {"FIFO": "none", "ASHA": "asha", "MO-ASHA": "moasha"}
OBJECTIVES = ["accuracy:max", "latency_ms:min"]
REF_ACCURACY = 0.5
TICK = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used: user + system) of every process readable."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return out


class CpuClock:
    """CPU seconds used by this process and all its descendants while it runs (descendants
    polled every ``every`` s: the last value seen of each process counts)."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.seen, self._stop = every, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        table, me = _process_table(), os.getpid()
        for pid, (_, cpu) in table.items():
            parent, hops = pid, 0
            while parent not in (0, 1, me) and parent in table and hops < 32:
                parent, hops = table[parent][0], hops + 1
            if parent == me and pid != me:
                self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)

    def __enter__(self) -> CpuClock:
        self.own = sum(os.times()[:2])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.seconds = sum(os.times()[:2]) - self.own + sum(self.seen.values())


def run(scheduler: str, seed: int, budget: float, folder: Path) -> dict:
    sets = ["trials=200", "concurrent_trials=1", f"scheduler={scheduler}",
            f"sampler.seed={seed}"]
    spec = specs.load(ROOT / "configs" / "quick.yaml", sets, name=f"{scheduler}-{seed}",
                      results_dir=str(folder))
    started = time.perf_counter()
    with CpuClock() as clock:
        study = run_search(spec, time_budget_s=budget,
                           printer=lambda line: print(f"[{spec.name}] {line}", flush=True))
    ot = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{study / 'study.db'}")
    stopped = sum(bool((t.user_attrs.get(PER_EPOCH) or [{}])[-1].get("stopped"))
                  for t in ot.trials)
    return {"study": str(study), "cpu_h": clock.seconds / 3600, "stopped": stopped,
            "started": len(ot.trials), "wall": time.perf_counter() - started}


def summary(result: dict, reference: list[float], small: float) -> dict:
    frame = load_results(result["study"])
    done = frame[frame["status"] == "complete"]
    box = (1.0 - reference[0]) * reference[1]
    hv = 100 * hypervolume(pareto_front(frame, OBJECTIVES), OBJECTIVES, reference) / box
    fast = done[done["latency_ms"] <= small]
    return {"hv": hv, "started": result["started"], "complete": len(done),
            "stopped": result["stopped"], "cpu_h": result["cpu_h"],
            "hv_per_cpu_h": hv / result["cpu_h"],
            "fast_acc": fast["accuracy"].max() if len(fast) else float("nan"),
            "wall": result["wall"]}


def mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def tables(rows: dict[str, dict[int, dict]], small: float) -> list[str]:
    lines = ["| scheduler | hypervolume (% of box) | trials started | complete | stopped by "
             "the scheduler | CPU-hours | hypervolume per CPU-hour | best accuracy at "
             f"latency <= {small:.2f} ms |", "|---|---|---|---|---|---|---|---|"]
    for label, runs in rows.items():
        col = {k: [r[k] for r in runs.values()] for k in next(iter(runs.values()))}
        lines.append(f"| {label} | {mean_sd(col['hv'])} | {mean_sd(col['started'], 1)} | "
                     f"{mean_sd(col['complete'], 1)} | {mean_sd(col['stopped'], 1)} | "
                     f"{mean_sd(col['cpu_h'], 3)} | {mean_sd(col['hv_per_cpu_h'], 0)} | "
                     f"{mean_sd(col['fast_acc'], 3)} |")
    fifo, asha, mo = (rows[k] for k in SCHEDULERS)
    lines += ["", "| sampler seed | hypervolume per CPU-hour, MO-ASHA / FIFO | MO-ASHA / ASHA | "
              f"best accuracy at latency <= {small:.2f} ms: ASHA, MO-ASHA |",
              "|---|---|---|---|"]
    for seed in fifo:
        lines.append(f"| {seed} | {mo[seed]['hv_per_cpu_h'] / fifo[seed]['hv_per_cpu_h']:.2f} "
                     f"| {mo[seed]['hv_per_cpu_h'] / asha[seed]['hv_per_cpu_h']:.2f} | "
                     f"{asha[seed]['fast_acc']:.3f}, {mo[seed]['fast_acc']:.3f} |")
    ratio = np.mean([mo[s]["hv_per_cpu_h"] / fifo[s]["hv_per_cpu_h"] for s in fifo])
    fast = {k: {s: np.nan_to_num(r[s]["fast_acc"], nan=0.0) for s in r} for k, r in rows.items()}
    above = sum(fast["MO-ASHA"][s] > fast["ASHA"][s] for s in fifo)
    level = sum(fast["MO-ASHA"][s] >= fast["ASHA"][s] for s in fifo)
    lines += ["", f"**Goal**: MO-ASHA >= 1.2x FIFO's hypervolume per CPU-hour: "
              f"{ratio:.2f}x (mean of the seeds' ratios) - "
              f"{'met' if ratio >= 1.2 else 'missed'}; above ASHA's front at small latency "
              f"(best accuracy at latency <= {small:.2f} ms; none there counts as below): "
              f"above in {above}, at least level in {level} of {len(fifo)} seeds."]
    return lines


def run_all(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="vitnas-moasha-"))
    started = time.perf_counter()
    results: dict[str, dict[int, dict]] = {label: {} for label in SCHEDULERS}
    for seed in range(args.seeds):  # interleaved, so drift of the machine hits all alike
        for label, name in SCHEDULERS.items():
            results[label][seed] = run(name, seed, args.budget, folder)
    record = {"budget": args.budget, "seeds": args.seeds, "results": results,
              "minutes": (time.perf_counter() - started) / 60}
    (folder / "runs.json").write_text(json.dumps(record, indent=1))
    print(f"runs: {folder / 'runs.json'}", flush=True)
    return record


def notes(results: dict[str, dict[int, dict]]) -> list[str]:
    """What the figures rest on: how far one candidate's latency moved between runs, and
    what a stopped trial cost against a complete one."""
    frames = {(label, seed): load_results(r["study"]) for label, runs in results.items()
              for seed, r in runs.items()}
    spreads = []
    for seed in next(iter(results.values())):  # trial 0: the same candidate in every arm
        first = [f.loc[f["trial"] == 0, "latency_ms"].iloc[0] for (_, s), f in frames.items()
                 if s == seed and (f["trial"] == 0).any()]
        spreads.append(f"{min(first):.1f}-{max(first):.1f} ms")
    rows = pd.concat(frames.values())
    train = rows.groupby("status")["train_time_s"].mean()
    return ["", f"**Noise**: the first candidate of a seed (the same config in the three arms) "
            f"measured {', '.join(spreads)} in the three runs of seeds 0..{len(spreads) - 1}: "
            "latency on this shared machine moves between runs by more than the schedulers "
            "move the front. Training time: a stopped trial trained "
            f"{train.get('stopped', float('nan')):.0f} s on average, a complete one "
            f"{train.get('complete', float('nan')):.0f} s, and every trial also pays its start, "
            "measurement and (complete ones) importance. NSGA-II learns only from complete "
            "trials, so an arm that stops trials gives its sampler fewer to learn from."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=220.0, help="seconds of trials per search")
    ap.add_argument("--tables", metavar="FOLDER", help="only the tables, from a FOLDER's "
                    "runs.json of an earlier run")
    args = ap.parse_args()
    if args.tables:
        record = json.loads((Path(args.tables) / "runs.json").read_text())
    else:
        record = run_all(args)
    args.budget, args.seeds = record["budget"], record["seeds"]
    results = {label: {int(s): r for s, r in runs.items()}
               for label, runs in record["results"].items()}
    frames = pd.concat([load_results(r["study"]) for runs in results.values()
                        for r in runs.values()])
    done = frames[frames["status"] == "complete"]
    reference = [REF_ACCURACY, 1.1 * float(done["latency_ms"].max())]
    small = float(done["latency_ms"].quantile(1 / 3))
    rows = {label: {seed: summary(r, reference, small) for seed, r in runs.items()}
            for label, runs in results.items()}
    intro = [f"configs/quick.yaml's efficientvit space on Fashion-MNIST (4,000 training, 1,000 "
             f"validation images, 3 epochs), objectives {', '.join(OBJECTIVES)}; one trial at "
             f"a time on one core (another job used the other core), {args.budget:.0f} s of "
             f"trials per search, NSGA-II (population 6), sampler seeds 0..{args.seeds - 1}; "
             "halving at its defaults (rungs at epochs 1 and 3, reduction factor 3). "
             f"Hypervolume reference point, the same for every run: accuracy {REF_ACCURACY}, "
             f"latency {reference[1]:.2f} ms (1.1 x the slowest complete trial); shown as % of "
             f"the box. CPU-hours: the driver and all its processes (Ray's, the trials'). "
             "Mean ± sample standard deviation over seeds. Trials started: every trial "
             "drawn, the one the budget cut included. Total "
             f"{record['minutes']:.0f} min.", ""]
    write_table("moasha", header("Multi-objective early stopping (MO-ASHA)") + intro
                + tables(rows, small) + notes(results))


if __name__ == "__main__":
    main()
