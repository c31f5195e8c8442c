"""Accuracy vs MACs fronts of static and halting ViTs of the same widths (used by
benchmarks/halting.py ``fronts``; needs Ray: it runs two real searches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nas import spec as specs
from nas.pareto import hypervolume, non_dominated, pareto_front
from nas.results import load_results
from nas.search import run_search

OBJECTIVES = ["accuracy:max", "macs:min"]


def search(spec_path: Path, policy: str, trials: int, work: Path) -> pd.DataFrame:
    overrides = [f"space.dims.token_policy={policy}", f"trials={trials}",
                 "objectives=[accuracy:max, macs:min]"]
    spec = specs.load(spec_path, overrides, name=f"fronts-{policy}", results_dir=str(work))
    study = run_search(spec, printer=lambda line: print(line, flush=True))
    frame = load_results(study)
    return frame[frame["status"] == "complete"].copy()


def _rows(front: pd.DataFrame) -> list[str]:
    out = []
    for _, r in front.iterrows():
        cfg = json.loads(r["config"])
        eps = "" if pd.isna(r.get("halt_eps")) else f"{r['halt_eps']:g}"
        out.append(f"| {r['trial']} | {r['point']} | {eps} | {r['accuracy']:.3f} | "
                   f"{r['macs'] / 1e6:.2f} | {r['full_macs'] / 1e6:.2f} | {cfg['embed_dim']} | "
                   f"{cfg['depth']} | {cfg['num_heads']} |")
    return out


def beyond_static(halting: pd.DataFrame, static: pd.DataFrame) -> pd.DataFrame:
    """Halting rows that no static row dominates (accuracy up, MACs down)."""
    both = pd.concat([static.assign(kind="static"), halting.assign(kind="halting")])
    points = np.stack([-both["accuracy"].to_numpy(float), both["macs"].to_numpy(float)], 1)
    keep = non_dominated(points)
    return both[keep & (both["kind"] == "halting").to_numpy()]


def compare_fronts(spec_path: Path, *, trials: int, work: Path) -> list[str]:
    static = search(spec_path, "static", trials, work)
    halting = search(spec_path, "halting", trials, work)
    reference = [0.0, float(max(static["full_macs"].max(), halting["full_macs"].max()))]
    head = ["| trial | point | halt_eps | accuracy | MMACs | full MMACs | width | depth | "
            "heads |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines = ["## Accuracy vs MACs: static vs halting ViTs of the same widths", "",
             f"Two searches of {trials} trials each from `configs/vit_halting.yaml` (NSGA-II, "
             "3 epochs on 4,000 Fashion-MNIST images, 1,000 validation images), one with "
             "`token_policy: static`, one with `token_policy: halting`; objectives accuracy "
             "and MACs per image (for halting: executed by the removal path, averaged over "
             "the validation images). Each halting trial gives 5 rows (its budget points). "
             f"Hypervolume reference: accuracy 0, {reference[1] / 1e6:.2f} MMACs (the "
             "largest full model of both searches).", ""]
    for name, frame in (("static", static), ("halting", halting)):
        front = pareto_front(frame, OBJECTIVES)
        hv = hypervolume(front, OBJECTIVES, reference)
        lines += [f"**{name}**: {frame['trial'].nunique()} trials, {len(frame)} rows, front "
                  f"of {len(front)}, hypervolume {hv / 1e6:.3f} (accuracy x MMACs)", ""]
        lines += head + _rows(front) + [""]
    union = pareto_front(pd.concat([static, halting.assign(trial=halting["trial"] + 1000)]),
                         OBJECTIVES)
    hv_union = hypervolume(union, OBJECTIVES, reference)
    better = beyond_static(halting, static)
    lines += [f"Union of both: hypervolume {hv_union / 1e6:.3f}. Halting rows no static "
              f"model dominates: {len(better)} of {len(halting)}.", ""]
    return lines
