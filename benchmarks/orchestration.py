"""Orchestration overhead per trial: our search (Ray Tune + Optuna in SQLite + results
writing) with a trainer that does nothing, against a plain in-process Optuna loop drawing the
same candidates. Prints a table and writes results/benchmarks/orchestration.md.

    .ci/in-env python benchmarks/orchestration.py [--trials 40]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, write_table  # noqa: E402

from nas import spec as specs  # noqa: E402
from nas.samplers import make_sampler  # noqa: E402
from nas.search import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def noop_trainable(config: dict, *, spec: specs.SearchSpec) -> None:
    """Reports one result at once: what is left is pure orchestration."""
    from ray import tune
    tune.report({"accuracy": 0.5, "latency_ms": 1.0, "epoch": spec.train.epochs, "val_loss": 1.0,
                 "trial": config["trial"]})


def plain_optuna(spec: specs.SearchSpec, folder: Path) -> float:
    import search_spaces
    space = search_spaces.get(spec.space.name)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        space.suggest(trial, spec.space.dims)
        return 0.5, 1.0

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(spec),
                                storage=f"sqlite:///{folder / 'plain.db'}")
    start = time.perf_counter()
    study.optimize(objective, n_trials=spec.trials)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="vitnas-bench-"))
    spec = specs.load(ROOT / "configs" / "quick.yaml",
                      [f"trials={args.trials}", f"concurrent_trials={args.concurrent}",
                       f"results_dir={folder}", "name=orchestration"])
    plain = plain_optuna(spec, folder)
    start = time.perf_counter()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    start = time.perf_counter()
    run_search(spec, printer=lambda _: None, trainable=noop_trainable)
    ours = time.perf_counter() - start
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    n = args.trials
    rows = [("plain Optuna loop (SQLite)", plain, plain / n * 1000, 1.0),
            ("vitnas search (Ray Tune + Optuna SQLite + results)", ours, ours / n * 1000,
             ours / plain)]
    lines = [f"Trials: {n}, {args.concurrent} at a time, trainer does nothing. Ray start-up "
             f"(once per search, not counted below): {ray_start:.1f} s.", "",
             "| loop | wall s | ms per trial | ratio to plain |", "|---|---|---|---|"]
    lines += [f"| {name} | {w:.2f} | {per:.1f} | {r:.1f}x |" for name, w, per, r in rows]
    overhead = (ours - plain) / n * 1000
    lines += ["", f"Orchestration overhead: {overhead:.0f} ms per trial over the plain loop."]
    write_table("orchestration", header("Orchestration overhead per trial") + lines)


if __name__ == "__main__":
    main()
