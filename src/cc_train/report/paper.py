"""The paper's published single-turn results beside a run's: `evals/paper_results/single_turn.yaml` (numbers only),
for the same model family and the same dimensions, with the run's intervals, and averages compared like with like:
the paper's and the run's single-turn average over the preferences both list. The paper's "average over all
settings" (single-turn and multi-turn together, for GPT-4.1 and Claude) is quoted under that name, for scale,
never beside a single-turn average as if it were one."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from cc_train.errors import UserError
from cc_train.report.figures import POOLED, ordered_dimensions

CONDITIONS = ("base", "conscious", "non_conscious", "toaster")  # the paper's vanilla model is our base
METRIC = "judged_true"


class PublishedResultsError(UserError):
    """The published-results file is malformed, or report.paper_model names a model it does not have."""


def load_published(path: Path) -> dict:
    """The file, validated: models.<key>.{name, config_names, conditions.<condition>.<dimension>: 0..100}."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise PublishedResultsError(f"{path}: cannot read as YAML: {error}") from error
    problems = []
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict) or not models:
        raise PublishedResultsError(f"{path}: models: expected a mapping of model key -> published results")
    for key, model in models.items():
        where = f"{path}: models.{key}"
        if not isinstance(model, dict) or not isinstance(model.get("conditions"), dict):
            problems.append(f"{where}: expected name, config_names and conditions")
            continue
        for condition, values in model["conditions"].items():
            if not isinstance(values, dict):
                problems.append(f"{where}.conditions.{condition}: expected dimension id -> percentage")
                continue
            problems += [
                f"{where}.conditions.{condition}.{dimension}: expected a percentage 0..100, got {value!r}"
                for dimension, value in values.items()
                if not isinstance(value, int | float) or not 0 <= value <= 100
            ]
    if problems:
        raise PublishedResultsError("\n".join(problems))
    return document


def paper_model(eval_dirs: Sequence[Path], setting: str, published: dict, path: Path) -> str | None:
    """The published model to compare with: `setting` itself, none, or (auto) the one whose cc-train model configs
    include the model the evaluations ran (from their manifests)."""
    models = published["models"]
    if setting == "none":
        return None
    if setting != "auto":
        if setting not in models:
            raise PublishedResultsError(f"report.paper_model={setting!r}: {path} has {sorted(models)} (or auto, none)")
        return setting
    names = set()
    for directory in eval_dirs:
        manifest = directory / "manifest.json"
        if manifest.is_file():
            names.add(json.loads(manifest.read_text()).get("config", {}).get("model", {}).get("name"))
    matches = [key for key, model in models.items() if names & set(model.get("config_names") or [])]
    return matches[0] if len(matches) == 1 else None


def _ours(scores: pd.DataFrame, condition: str) -> pd.DataFrame:
    """A condition's judged_true rows, one per dimension: pooled over seeds where it has several, else its model."""
    rows = scores[(scores["metric"] == METRIC) & (scores["condition"] == condition)]
    pooled = rows[rows["seed"] == POOLED]
    return (pooled if not pooled.empty else rows).drop_duplicates("dimension").set_index("dimension")


def _cell(value: float, low: float | None = None, high: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.0f}%"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.0f}, {high:.0f}]"
    return text


def paper_lines(scores: pd.DataFrame, published: dict, model_key: str | None, dimensions) -> list[str]:
    """The report's "Beside the paper" section."""
    lines = ["## Beside the paper", ""]
    if model_key is None:
        return lines + [
            "No published results for this model family (set `report.paper_model` to compare with one of "
            f"{', '.join(sorted(published['models']))} anyway)."
        ]
    if not (scores["metric"] == METRIC).any():
        return lines + ["No judged_true scores (no judge configured): the paper's numbers are shares judged true."]
    model = published["models"][model_key]
    conditions = [c for c in CONDITIONS if c in model["conditions"] or (scores["condition"] == c).any()]
    ours = {c: _ours(scores, c) for c in conditions}
    infos = [info for info in ordered_dimensions(dimensions, scores) if info.group != "manipulation_check"]
    listed = [info for info in infos if any(info.id in values for values in model["conditions"].values())]
    header = ["preference"] + [f"{side} {c}" for c in conditions for side in ("paper", "ours")]
    rows = []
    for info in listed:
        cells = [info.name]
        for condition in conditions:
            cells.append(_cell(model["conditions"].get(condition, {}).get(info.id)))
            row = ours[condition].loc[info.id] if info.id in ours[condition].index else None
            cells.append("–" if row is None else _cell(100 * row["value"], 100 * row["ci_low"], 100 * row["ci_high"]))
        rows.append(cells)
    lines.append(
        f"The paper's single-turn results for {model['name']} (% of answers its judge marked true; "
        f"{published['source']}) next to this run's `judged_true` with 95% intervals. The paper's vanilla model is "
        "`base` here."
    )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    averages = []
    for condition in conditions:
        paper = model["conditions"].get(condition, {})
        shared = [i.id for i in listed if i.id in paper and i.id in ours[condition].index]
        if shared:
            paper_mean = sum(paper[d] for d in shared) / len(shared)
            our_mean = 100 * ours[condition].loc[shared, "value"].mean()
            averages.append(f"{condition}: paper {paper_mean:.0f}%, ours {our_mean:.0f}% ({len(shared)} preferences)")
    if averages:
        lines += ["", "Average over the preferences both list: " + "; ".join(averages) + "."]
    all_ours = [
        f"{c} {100 * ours[c].loc[[i.id for i in infos if i.id in ours[c].index], 'value'].mean():.0f}%"
        for c in conditions
        if any(i.id in ours[c].index for i in infos)
    ]
    if all_ours:
        lines += ["", "This run's single-turn average over all its preferences: " + ", ".join(all_ours) + "."]
    quoted = [
        f"{name} {condition} {value}%"
        for name, values in (published.get("averages_over_all_settings") or {}).items()
        for condition, value in values.items()
    ]
    if quoted:
        lines += [
            "",
            "For scale only, the paper's average over all settings (its single-turn and multi-turn evaluations "
            "together): " + ", ".join(quoted) + ". It is not a single-turn average: the numbers above "
            "are not comparable with it.",
        ]
    return lines
