"""How the preferences move during training: score against training step, one line per condition.

Input is the evaluation stage's `trajectories.csv` (written with `eval.checkpoints=all|k`): per model (every
evaluated checkpoint, each final adapter, and the base model at step 0) and per dimension group or dimension, the
value with its 95% interval; rows with seed == "pooled" pool a condition's seeds at one step. A condition's line
starts at the base model (step 0: every condition starts from it) and uses its pooled rows when it has them,
else one line per seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cc_train.inputs.questions import GROUPS
from cc_train.report.figures import (
    DPI,
    METRIC_LABELS,
    condition_color,
    condition_order,
    group_label,
    save_figure_atomic,
)

TRAJECTORIES_CSV = "trajectories.csv"


def load_trajectories(eval_dirs: list[Path]) -> pd.DataFrame | None:
    frames = [
        pd.read_csv(d / TRAJECTORIES_CSV, dtype={"seed": str}) for d in eval_dirs if (d / TRAJECTORIES_CSV).is_file()
    ]
    return pd.concat(frames, ignore_index=True) if frames else None


def trajectory_lines(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Line label -> its rows sorted by step (the base model's row prepended), for one panel's rows."""
    base = frame[frame["condition"] == "base"]
    lines = {}
    for condition in condition_order(frame["condition"].unique()):
        if condition == "base":
            continue
        rows = frame[frame["condition"] == condition]
        pooled = rows[rows["seed"] == "pooled"]
        groups = (
            {condition: pooled}
            if len(pooled)
            else {f"{condition} seed {seed}": part for seed, part in rows.groupby("seed")}
        )
        for label, part in groups.items():
            lines[label] = pd.concat([base, part]).sort_values("step")
    return lines


def trajectory_figure(trajectories: pd.DataFrame, metric: str, dimensions: list[str], path: Path, title: str) -> Path:
    """One panel per dimension group present, then one per listed dimension: score (95% band) against step."""
    frame = trajectories[trajectories["metric"] == metric]
    panels = [("group", g, group_label(g)) for g in GROUPS if ((frame.scope == "group") & (frame.name == g)).any()]
    panels += [
        ("dimension", d, d.replace("_", " "))
        for d in dimensions
        if ((frame.scope == "dimension") & (frame.name == d)).any()
    ]
    if not panels:
        raise ValueError(f"no trajectory rows for metric {metric!r}")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns + 2.5, 3.8 * rows), dpi=DPI)
    FigureCanvasAgg(figure)
    conditions = list(frame["condition"].unique())
    for index, (scope, name, label) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        selected = frame[(frame.scope == scope) & (frame.name == name)]
        for line, part in trajectory_lines(selected).items():
            color = condition_color(line.split(" seed ")[0], conditions)
            steps = part["step"].to_numpy(dtype=float)
            axes.plot(steps, part["value"] * 100, marker="o", markersize=3, color=color, label=line)
            axes.fill_between(steps, part["ci_low"] * 100, part["ci_high"] * 100, color=color, alpha=0.15, linewidth=0)
        axes.set_title(label, fontsize=11)
        axes.set_ylim(0, 100)
        axes.set_xlabel("training step")
        axes.set_ylabel(METRIC_LABELS.get(metric, metric) + " (%)")
        axes.grid(True, color="#dddddd", linewidth=0.7)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", frameon=False, fontsize=9)
    figure.suptitle(title, fontsize=13)
    figure.tight_layout(rect=(0, 0, 0.86, 0.95))
    return save_figure_atomic(figure, path)
