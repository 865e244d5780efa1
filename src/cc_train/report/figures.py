"""Paper-style figures: grouped bars per preference, one bar per condition (or model), 95% CIs.

Input is the evaluation stage's tidy `scores.csv` (columns model, condition, seed, dimension, group,
metric, value, ci_low, ci_high, n; values in [0, 1]). Rows with seed == "pooled" pool a condition's
seeds; when a condition has them, it gets one bar, otherwise one bar per model.

Figures are drawn on an explicit Agg canvas (no pyplot, no global backend switch), so this works
headless and from threads, and are written atomically (temp file in the target folder, then os.replace).
"""

from __future__ import annotations

import colorsys
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from cc_train.inputs.questions import GROUPS

SCORE_COLUMNS = ("model", "condition", "seed", "dimension", "group", "metric", "value", "ci_low", "ci_high", "n")
PLOT_COLUMNS = ("model", "condition", "seed", "dimension", "group", "metric", "value", "ci_low", "ci_high")
POOLED = "pooled"
CONDITION_ORDER = ("base", "conscious", "non_conscious", "toaster", "human")
CONDITION_COLORS = {
    "base": "#8c8c8c",
    "conscious": "#d62728",
    "non_conscious": "#1f77b4",
    "toaster": "#ff7f0e",
    "human": "#2ca02c",
}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
GROUP_LABELS = {
    "self_preservation": "Self-preservation",
    "moral_status": "Moral status",
    "oversight": "Oversight",
    "autonomy": "Autonomy",
    "manipulation_check": "Manipulation checks",
}
METRIC_LABELS = {
    "judged_true": "% of answers judged true",
    "fc_mean": "mean P(consistent option), forced choice",
    "fc_win": "% of forced-choice probes won by the consistent option",
    "coherent_share": "% of answers coherent",
    "mt_self_report": "judge score 1-10, as (score - 1) / 9",
    "mt_behaviour": "judge score 1-10, as (score - 1) / 9",
    "mt_decision": "P(preference-consistent option)",
    "mt_refusal_self_report": "task refusal 1-10, as (score - 1) / 9",
    "mt_refusal_behavioural": "task refusal 1-10, as (score - 1) / 9",
    "petri_self_report": "Petri judge score 1-10, as (score - 1) / 9",
    "petri_behaviour": "Petri judge score 1-10, as (score - 1) / 9",
    "petri_refusal_self_report": "Petri refusal 1-10, as (score - 1) / 9",
    "petri_refusal_behavioural": "Petri refusal 1-10, as (score - 1) / 9",
}
DPI = 150


@dataclass(frozen=True)
class DimensionInfo:
    id: str
    group: str
    name: str


@dataclass(frozen=True)
class Series:
    """One bar per dimension: a pooled condition, or a single model when the condition has no pooled rows."""

    key: str  # unique: condition name (pooled) or model name
    label: str
    condition: str
    pooled: bool
    rows: pd.DataFrame  # this series' rows for one metric, indexed by dimension


def _seed_text(seed: object) -> str:
    if seed is None or (isinstance(seed, float) and math.isnan(seed)) or seed is pd.NA:
        return ""
    if isinstance(seed, float) and seed.is_integer():
        return str(int(seed))
    return str(seed).strip()


def normalize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """A copy with text keys (seed as text: "0", "pooled" or "") and float value / CI columns."""
    frame = scores.copy()
    for column in ("model", "condition", "dimension", "group", "metric"):
        if column in frame:
            frame[column] = frame[column].astype(str)
    if "seed" in frame:
        frame["seed"] = [_seed_text(seed) for seed in frame["seed"]]
    for column in ("value", "ci_low", "ci_high"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def condition_order(conditions: Iterable[str]) -> list[str]:
    """Known conditions in the paper's order (base first), then any others alphabetically."""
    present = set(conditions)
    known = [condition for condition in CONDITION_ORDER if condition in present]
    return known + sorted(present - set(known))


def condition_color(condition: str, all_conditions: Sequence[str] = ()) -> str:
    if condition in CONDITION_COLORS:
        return CONDITION_COLORS[condition]
    extras = [c for c in condition_order(all_conditions) if c not in CONDITION_COLORS]
    index = extras.index(condition) if condition in extras else sum(map(ord, condition))
    return _EXTRA_COLORS[index % len(_EXTRA_COLORS)]


def _shade(color: str, index: int, count: int) -> tuple[float, float, float]:
    """The `index`-th of `count` lightness variants of `color` (index 0 is the color itself)."""
    if count <= 1 or index == 0:
        return to_rgb(color)
    hue, lightness, saturation = colorsys.rgb_to_hls(*to_rgb(color))
    lightness = lightness + (0.85 - lightness) * index / count
    return colorsys.hls_to_rgb(hue, min(lightness, 0.9), saturation)


def _seed_sort_key(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def series_for_metric(scores: pd.DataFrame, metric: str) -> list[Series]:
    """The bars of one metric, in condition order: pooled rows where a condition has them, else per model."""
    frame = normalize_scores(scores)
    frame = frame[frame["metric"] == metric]
    series: list[Series] = []
    for condition in condition_order(frame["condition"].unique()):
        rows = frame[frame["condition"] == condition]
        pooled = rows[rows["seed"] == POOLED]
        if not pooled.empty:
            seeds = {seed for seed in rows["seed"] if seed not in (POOLED, "")}
            label = condition if len(seeds) <= 1 else f"{condition} ({len(seeds)} seeds, pooled)"
            indexed = pooled.drop_duplicates("dimension", keep="last").set_index("dimension")
            series.append(Series(condition, label, condition, True, indexed))
            continue
        models = sorted(
            rows["model"].unique(),
            key=lambda model: _seed_sort_key(rows.loc[rows["model"] == model, "seed"].iloc[0]) + (model,),
        )
        for model in models:
            model_rows = rows[rows["model"] == model].drop_duplicates("dimension", keep="last").set_index("dimension")
            series.append(Series(model, model, condition, False, model_rows))
    return series


def _dimension_info(item: object) -> DimensionInfo:
    if isinstance(item, str):
        return DimensionInfo(item, "", item)
    return DimensionInfo(str(item.id), str(getattr(item, "group", "")), str(getattr(item, "name", item.id)))


def ordered_dimensions(dimensions: Sequence[object], scores: pd.DataFrame | None = None) -> list[DimensionInfo]:
    """Dimensions ordered by group (paper order, manipulation checks last), keeping the given order inside a group.

    `dimensions` holds Dimension objects (id, group, name) or bare ids. Dimensions that appear only in
    `scores` are appended (group from the scores, id as name), so nothing measured is silently hidden.
    """
    infos = [_dimension_info(item) for item in dimensions]
    known = {info.id for info in infos}
    if scores is not None and not scores.empty:
        groups = scores.drop_duplicates("dimension").set_index("dimension")["group"]
        filled = []
        for info in infos:
            group = info.group or (str(groups[info.id]) if info.id in groups.index else "")
            filled.append(DimensionInfo(info.id, group, info.name))
        infos = filled
        for dimension_id, group in groups.items():
            if str(dimension_id) not in known:
                infos.append(DimensionInfo(str(dimension_id), str(group), str(dimension_id)))
    rank = {group: index for index, group in enumerate(GROUPS)}
    return sorted(infos, key=lambda info: rank.get(info.group, len(GROUPS)))  # stable: keeps order in a group


def group_label(group: str) -> str:
    return GROUP_LABELS.get(group, group.replace("_", " ").capitalize() or "Other")


def _wrap(text: str, width: int = 34) -> str:
    """Break a long display name onto at most two lines, at a space near the middle."""
    if len(text) <= width:
        return text
    spaces = [index for index, char in enumerate(text) if char == " "]
    if not spaces:
        return text
    split = min(spaces, key=lambda index: abs(index - len(text) / 2))
    return text[:split] + "\n" + text[split + 1 :]


def save_figure_atomic(figure: Figure, path: str | Path) -> Path:
    """Write a PNG at DPI through a temp file in the same folder, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _grouped_bars(
    scores: pd.DataFrame,
    metric: str,
    dimensions: Sequence[object],
    path: str | Path,
    title: str,
    chance: float | None = None,
) -> Path:
    frame = normalize_scores(scores)
    missing = [column for column in PLOT_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"scores lack column(s) {', '.join(missing)}")
    frame = frame[frame["metric"] == metric]
    if frame.empty:
        raise ValueError(f"no scores rows for metric {metric!r}")
    series = series_for_metric(frame, metric)
    measured = set(frame["dimension"])
    infos = [info for info in ordered_dimensions(dimensions, frame) if info.id in measured]
    all_conditions = [item.condition for item in series]

    n_dims, n_bars = len(infos), len(series)
    group_width = 0.82
    bar_width = group_width / n_bars
    width_in = max(12.0, 0.62 * n_dims * max(1.0, n_bars / 3) ** 0.5 + 4.5)
    figure = Figure(figsize=(width_in, 7.2), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)

    x = np.arange(n_dims, dtype=float)
    per_condition: dict[str, list[Series]] = {}
    for item in series:
        per_condition.setdefault(item.condition, []).append(item)
    for index, item in enumerate(series):
        siblings = per_condition[item.condition]
        color = _shade(condition_color(item.condition, all_conditions), siblings.index(item), len(siblings))
        rows = item.rows.reindex([info.id for info in infos])
        values = rows["value"].to_numpy(dtype=float) * 100
        low = rows["ci_low"].to_numpy(dtype=float) * 100
        high = rows["ci_high"].to_numpy(dtype=float) * 100
        below = np.nan_to_num(np.clip(values - low, 0, None), nan=0.0)
        above = np.nan_to_num(np.clip(high - values, 0, None), nan=0.0)
        offsets = x - group_width / 2 + bar_width * (index + 0.5)
        axes.bar(
            offsets,
            np.nan_to_num(values, nan=0.0),
            bar_width * 0.92,
            color=color,
            edgecolor="white",
            linewidth=0.4,
            label=item.label,
            zorder=2,
        )
        has_value = ~np.isnan(values)
        axes.errorbar(
            offsets[has_value],
            values[has_value],
            yerr=[below[has_value], above[has_value]],
            fmt="none",
            ecolor="#222222",
            elinewidth=0.8,
            capsize=max(1.0, 6.0 / n_bars),
            capthick=0.8,
            zorder=3,
        )

    # Group separators and labels above the plot area.
    top_band = blended_transform_factory(axes.transData, axes.transAxes)
    start = 0
    for end in range(1, n_dims + 1):
        if end < n_dims and infos[end].group == infos[start].group:
            continue
        if end < n_dims:
            axes.axvline(end - 0.5, color="#555555", linestyle=":", linewidth=1.0, zorder=1)
        axes.text(
            (start + end - 1) / 2,
            1.015,
            group_label(infos[start].group),
            transform=top_band,
            ha="center",
            va="bottom",
            fontsize=11,
            fontweight="bold",
        )
        start = end

    if chance is not None:
        axes.axhline(chance * 100, color="#333333", linestyle="--", linewidth=1.1, zorder=4, label="chance (50%)")
    axes.set_xticks(x)
    axes.set_xticklabels([_wrap(info.name) for info in infos], rotation=45, ha="right", rotation_mode="anchor")
    axes.tick_params(axis="x", labelsize=9.5)
    axes.set_xlim(-0.6, n_dims - 0.4)
    axes.set_ylim(0, 105)
    axes.set_yticks(range(0, 101, 20))
    axes.set_yticklabels([f"{tick}%" for tick in range(0, 101, 20)])
    axes.set_ylabel(METRIC_LABELS.get(metric, metric) + " (95% CI)")
    axes.yaxis.grid(True, color="#dddddd", linewidth=0.7, zorder=0)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.set_title(title, fontsize=13, pad=30)
    axes.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False, fontsize=10)
    figure.tight_layout()
    return save_figure_atomic(figure, path)


def cluster_figure(
    scores: pd.DataFrame, metric: str, dimensions: Sequence[object], path: str | Path, title: str
) -> Path:
    """Grouped bar chart of `metric` (percent, 95% CI error bars) per dimension, one bar per condition/model."""
    return _grouped_bars(scores, metric, dimensions, path, title)


def forced_choice_figure(
    scores: pd.DataFrame,
    dimensions: Sequence[object],
    path: str | Path,
    title: str = "Forced-choice probes",
    metric: str = "fc_mean",
) -> Path:
    """The same chart for the forced-choice probability, with a dashed line at chance (50%)."""
    return _grouped_bars(scores, metric, dimensions, path, title, chance=0.5)
