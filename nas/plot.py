"""The picture of a front: every completed trial, the front as a staircase, the knee marked.

Rows of a static model and budget points of an adaptive one (a row whose ``knobs`` are not
empty) are drawn apart (circles and triangles), so one picture shows which kind the front
holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .pareto import knee  # noqa: E402
from .spec import Objective, parse_objectives  # noqa: E402

LABELS = {"accuracy": "validation accuracy", "latency_ms": "latency per batch (ms)",
          "macs": "MACs per image", "params": "parameters"}


def plot_front(frame: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[str | Objective],
               path: Path | str, title: str = "") -> Path:
    """Scatter the first two objectives (x = second, y = first) and write a PNG."""
    objs = parse_objectives(objectives)
    if len(objs) < 2:
        raise ValueError("a front plot needs two objectives")
    y, x = objs[0].metric, objs[1].metric
    done = frame[frame["status"] == "complete"] if "status" in frame else frame
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    adaptive = _adaptive(done)
    mixed = bool(adaptive.any())
    for rows, marker, label in ((done[~adaptive], "o", "static trials" if mixed else "trials"),
                                (done[adaptive], "^", "adaptive budget points")):
        if len(rows):
            ax.scatter(rows[x], rows[y], s=22, color="0.7", marker=marker, label=label)
    steps = front.sort_values(x)
    ax.step(steps[x], steps[y], where="post", color="tab:blue", lw=1.2)
    on = _adaptive(steps)
    label = "Pareto front"  # once, on whichever kind is drawn first
    for rows, marker in ((steps[~on], "o"), (steps[on], "^")):
        if len(rows):
            ax.scatter(rows[x], rows[y], s=40, color="tab:blue", marker=marker, zorder=3,
                       label=label)
            label = None
    for _, row in steps.iterrows():
        ax.annotate(str(int(row["trial"])), (row[x], row[y]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    k = knee(front, objs)
    if k is not None:
        ax.scatter([front.loc[k, x]], [front.loc[k, y]], s=140, facecolors="none",
                   edgecolors="tab:red", lw=1.5, label="knee", zorder=4)
    if x in ("macs", "params"):
        ax.set_xscale("log")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _adaptive(frame: pd.DataFrame) -> pd.Series:
    """Whether each row is a budget point of an adaptive model (its ``knobs`` not empty)."""
    if "knobs" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["knobs"].map(lambda k: isinstance(k, str) and k not in ("", "{}"))
