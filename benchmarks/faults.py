"""Faults a cluster search meets: the driver killed and resumed, a worker node lost.

Writes results/benchmarks/faults.md. Needs Ray (real searches through the CLI).

``driver``: the default search (configs/quick.yaml, 12 trials of 3 epochs, two at a time)
once uninterrupted, then once with its driver killed by SIGKILL ``--kills`` times at seeded
random moments (each ``nas search --resume`` run is killed again after a random delay; the
last one runs to the end). Counted from the drivers' progress lines: trials finished, trials
finished before a kill and trained again (goal 0), interrupted trials continued from a
checkpoint, epochs trained more than once, and the extra wall time over the uninterrupted
run (process starts included).

``node``: a two-worker cluster on this machine (``ray.cluster_utils.Cluster``, a head with no
CPUs and two 1-CPU workers); a worker node is removed as soon as a trial has reported its
first epoch and a new one added; trials lost (goal 0) and retries.

    python benchmarks/faults.py [driver|node|all] [--kills 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCH = re.compile(r"^  trial (\d+) epoch (\d+)/")
DONE = re.compile(r"^\[\d+/\d+\] trial (\d+) (\w+)")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(args: list[str], cwd: Path, kill_after: float | None) -> tuple[list[str], float, bool]:
    """`nas search ARGS`; SIGKILL after ``kill_after`` seconds (None: to the end). Returns
    its lines, wall seconds and whether it was killed."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_after is None:
        out, _ = proc.communicate()
        return out.splitlines(), time.monotonic() - start, False
    try:
        out, _ = proc.communicate(timeout=kill_after)
        return out.splitlines(), time.monotonic() - start, False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        time.sleep(2)  # Ray's processes share the driver's fate
        return out.splitlines(), time.monotonic() - start, True


def _spec(work: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw.update(name=name, results_dir=str(work), **changes)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def driver(kills: int, seed: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    _, baseline, _ = _run([str(_spec(work, "plain"))], work, None)
    rng = random.Random(seed)
    runs: list[list[str]] = []
    total = 0.0
    args = [str(_spec(work, "killed"))]
    for k in range(kills + 1):
        delay = rng.uniform(15, 60) if k < kills else None
        lines, wall, killed = _run(args, work, delay)
        runs.append(lines)
        total += wall
        print(f"run {k}: {wall:.0f}s, {'killed' if killed else 'ended'}", file=sys.stderr)
        args = ["--resume", str(work / "killed")]
    finished_before: set[int] = set()
    rerun, resumed, epochs_seen = set(), 0, {}
    for lines in runs:
        started = {int(m.group(1)) for ln in lines if (m := EPOCH.match(ln))}
        rerun |= started & finished_before
        for ln in lines:
            if m := EPOCH.match(ln):
                key = (int(m.group(1)), int(m.group(2)))
                epochs_seen[key] = epochs_seen.get(key, 0) + 1
            if "resuming:" in ln:
                resumed += int(re.search(r"(\d+) to run again", ln).group(1))
        finished_before |= {int(m.group(1)) for ln in lines if (m := DONE.match(ln))}
    twice = sum(n - 1 for n in epochs_seen.values())
    import pandas as pd
    frame = pd.read_parquet(work / "killed" / "trials.parquet")
    return ["## Driver killed (SIGKILL) and resumed", "",
            f"The default search (12 trials, 3 epochs, 2 at a time), its driver killed {kills} "
            f"times at random moments (seed {seed}, 15-60 s into each run), resumed each time.",
            "", "| figure | value |", "|---|---:|",
            f"| trials finished (of 12) | {int((frame['status'] == 'complete').sum())} |",
            f"| trials finished before a kill and trained again (goal 0) | {len(rerun)} |",
            f"| interrupted trials handed out again (from their last checkpoint, if any) | "
            f"{resumed} |",
            f"| epochs trained more than once (of {len(epochs_seen)}) | {twice} |",
            f"| wall time, uninterrupted | {baseline:.0f} s |",
            f"| wall time, {kills} kills and resumes | {total:.0f} s "
            f"(+{total - baseline:.0f} s) |", ""]


def node() -> list[str]:
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="faults-node-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        spec = _spec(work, "node", ray_address=cluster.address, trials=4, retries=2,
                     storage=f"file://{work / 'shared'}")
        proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(spec)], cwd=work,
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if EPOCH.match(line):
                cluster.remove_node(workers[0], allow_graceful=False)
                cluster.add_node(num_cpus=1)
                break
        lines += proc.stdout.read().splitlines()
        proc.wait()
    finally:
        cluster.shutdown()
    import pandas as pd
    frame = pd.read_parquet(work / "node" / "trials.parquet")
    retries = sum("its worker died; retrying" in ln for ln in lines)
    lost = 4 - int((frame["status"] == "complete").sum())
    return ["## A worker node lost mid-trial", "",
            "Cluster on this machine: a head with no CPUs and two 1-CPU worker nodes; the "
            "default search with 4 trials; one worker node removed when the first epoch was "
            "reported, a new node added.", "", "| figure | value |", "|---|---:|",
            f"| trials lost (goal 0) | {lost} |", f"| retries from a checkpoint | {retries} |",
            f"| epochs of every trial | {sorted(set(frame['epochs']))} |", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=["driver", "node", "all"])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = header("Faults: driver crashes and node loss")
    if args.part in ("driver", "all"):
        lines += driver(args.kills, args.seed)
    if args.part in ("node", "all"):
        lines += node()
    write_table("faults" if args.part == "all" else f"faults_{args.part}", lines)


if __name__ == "__main__":
    main()
