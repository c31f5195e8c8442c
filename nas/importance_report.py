"""``nas importance``: where trained candidates keep their importance, per block and component.

The EfficientViT paper's reallocation picture (its Fig. 2/3, from Taylor pruning of Swin-T and
DeiT-T), drawn for our own search: per block, the fraction of a component's channels (heads,
Q/K, V, FFN) needed to keep ``coverage`` of its Taylor importance
(``trainers.importance.retained_fractions``), and per block container the fraction of its
blocks (depth). A low fraction says the trained candidate wastes that component there.

For one trial (its trials/<n>/importance.safetensors), or aggregated over the trials on the
study's Pareto front (its own objectives and constraints, as ``nas pareto`` shows it): mean,
min and max per (block, component) over the trials that have that block (``n`` of them); the
budget points of one trial count once, and front trials without scores (pruned variants, a
study run with ``importance.batches: 0``) are left out and named.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

from trainers.groups import component
from trainers.importance import COMPONENTS, keep_fraction, load_scores, retained_fractions

from .pareto import study_front
from .results import IMPORTANCE, TRIALS, ResultsError, fmt, load_results
from .sections import fail

WIDTHS = tuple(c for c in COMPONENTS if c != "depth")


def trial_scores(study_dir: Path, trial: int,
                 frame: pd.DataFrame | None = None) -> dict[str, torch.Tensor]:
    """The Taylor scores of ``trial`` (ResultsError: no such trial, or it has none)."""
    frame = load_results(study_dir) if frame is None else frame
    rows = frame[frame["trial"] == trial]
    if rows.empty:
        raise ResultsError(f"--trial = {trial}: no such trial in {study_dir}; trials: "
                           f"{sorted(set(frame['trial'].tolist()))}")
    path = study_dir / TRIALS / str(trial) / IMPORTANCE
    if not path.is_file():
        row = rows.iloc[0]
        raise ResultsError(f"--trial = {trial}: no importance scores (no {path}; status "
                           f"{row['status']}, origin {row['origin']}): only trials trained "
                           f"in a study with importance.batches > 0 have them")
    return load_scores(path)


def fractions(scores: dict[str, torch.Tensor], coverage: float) -> pd.DataFrame:
    """Rows block, stage, component, retained: the width components per block, then depth
    per block container (block "blocks" or "stages.{s}.blocks")."""
    widths = retained_fractions(scores, coverage=coverage)
    depth = [{"block": name.removesuffix(".depth"),
              "stage": int(m.group(1)) if (m := re.match(r"stages\.(\d+)\.", name)) else 0,
              "component": "depth", "retained": keep_fraction(scores[name], coverage)}
             for name in scores if component(name) == "depth"]
    return pd.concat([widths, pd.DataFrame(depth, columns=widths.columns)], ignore_index=True)


def _position(block: str) -> tuple[int, int]:
    """Forward order of block names: "blocks.3" (0, 3); "stages.1.downsample" (1, -1);
    "stages.1.blocks.0" (1, 0)."""
    nums = [int(n) for n in re.findall(r"\d+", block)]
    if "downsample" in block:
        return nums[0], -1
    return (nums[0], nums[1]) if len(nums) == 2 else (0, nums[0] if nums else 0)


def _label(block: str) -> str:
    stage, index = _position(block)
    tail = "down" if index < 0 else f"b{index}"
    return f"s{stage}.{tail}" if block.startswith("stages.") else tail


def aggregate(per_trial: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Mean, min, max and count of ``retained`` per (block, component) over the trials."""
    rows = pd.concat([f.assign(trial=t) for t, f in per_trial.items()], ignore_index=True)
    stats = rows.groupby(["block", "component"], sort=False)["retained"].agg(
        ["mean", "min", "max", "count"]).reset_index().rename(columns={"count": "n"})
    return _ordered(stats)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    depth = frame["component"] == "depth"
    key = frame["block"].map(_position)
    rank = [(bool(d), k, COMPONENTS.index(c)) for d, k, c in
            zip(depth, key, frame["component"], strict=True)]
    order = sorted(range(len(frame)), key=rank.__getitem__)
    return frame.iloc[order].reset_index(drop=True)


def front_trials(study_dir: Path) -> tuple[list[int], list[int]]:
    """The front's trials (each once, best first) with scores, and those without."""
    trials = [int(t) for t in dict.fromkeys(study_front(study_dir)["trial"])]
    has = [t for t in trials if (study_dir / TRIALS / str(t) / IMPORTANCE).is_file()]
    return has, [t for t in trials if t not in has]


def _table(frame: pd.DataFrame, value: str) -> str:
    """Blocks as rows, width components as columns; depth on a line of its own."""
    widths = frame[frame["component"] != "depth"]
    wide = widths.pivot_table(index="block", columns="component", values=value,
                              aggfunc="first", sort=False)
    wide = wide[[c for c in WIDTHS if c in wide.columns]]
    text = wide.to_string(na_rep="-", index_names=False)
    depth = frame[frame["component"] == "depth"]
    blocks = ", ".join(f"{b} {v}" for b, v in zip(depth["block"], depth[value], strict=True))
    return text + (f"\ndepth (share of blocks): {blocks}" if blocks else "")


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    """One text cell per row: "0.45" for one trial, "0.45 [0.30-0.60]" aggregated."""
    if "mean" not in frame:
        return frame.assign(cell=frame["retained"].map(fmt))
    cells = [fmt(m) if lo == hi else f"{fmt(m)} [{fmt(lo)}-{fmt(hi)}]"
             for m, lo, hi in zip(frame["mean"], frame["min"], frame["max"], strict=True)]
    return frame.assign(cell=cells)


def importance_report(study_dir: Path, *, trial: int | None = None, coverage: float = 0.9,
                      style: str = "table", plot: Path | None = None) -> str:
    """The ``nas importance`` output (and the PNG at ``plot``)."""
    if not 0 < coverage <= 1:
        fail("--coverage", coverage, "must be in (0, 1]: the share of the importance to keep")
    if trial is not None:
        frame = _ordered(fractions(trial_scores(study_dir, trial), coverage))
        title = f"{study_dir.name}: trial {trial}"
        skipped: list[int] = []
    else:
        has, skipped = front_trials(study_dir)
        if not has:
            raise ResultsError(f"RESULTS = {str(study_dir)!r}: no trial on the Pareto front "
                               f"has importance scores (front trials: {skipped})")
        frame = aggregate({t: fractions(trial_scores(study_dir, t), coverage) for t in has})
        title = f"{study_dir.name}: Pareto front, trials {', '.join(map(str, has))}"
    if plot is not None:
        plot_fractions(frame, plot, title=title, coverage=coverage)
    if style != "table":
        return (frame.to_csv(index=False).rstrip("\n") if style == "csv"
                else frame.to_json(orient="records", indent=1))
    lines = [f"{title}: share of each component's channels that keeps {coverage:.0%} of its "
             f"Taylor importance" + (" (mean [min-max] over the trials)" if trial is None
                                     else "")]
    if skipped:
        lines.append(f"front trials without importance scores, left out: {skipped}")
    lines.append(_table(_cells(frame), "cell"))
    if plot is not None:
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def plot_fractions(frame: pd.DataFrame, path: Path, *, title: str, coverage: float) -> Path:
    """One line per width component over the blocks (forward order); aggregated frames get
    their min-max range shaded."""
    from .plot import plt  # matplotlib with the Agg backend, as for the front
    widths = frame[frame["component"] != "depth"]
    blocks = sorted(dict.fromkeys(widths["block"]), key=_position)
    x_of = {b: i for i, b in enumerate(blocks)}
    value = "mean" if "mean" in frame else "retained"
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(blocks) + 2), 4.4), dpi=120)
    for comp in WIDTHS:
        rows = widths[widths["component"] == comp]
        if rows.empty:
            continue
        x = [x_of[b] for b in rows["block"]]
        line, = ax.plot(x, rows[value], marker="o", ms=4, lw=1.3, label=comp)
        if value == "mean":
            ax.fill_between(x, rows["min"], rows["max"], color=line.get_color(), alpha=0.15)
    ax.set_xticks(range(len(blocks)), [_label(b) for b in blocks], rotation=45, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("block (forward order)")
    ax.set_ylabel(f"channels keeping {coverage:.0%} of importance")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
