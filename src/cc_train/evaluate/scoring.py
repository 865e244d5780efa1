"""From the append-only logs to tidy `scores.csv` and `comparisons.csv` (rates, 95% CIs, differences)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from cc_train.evaluate.stats import difference, pooled_estimate
from cc_train.files import atomic_path
from cc_train.questions import Dimension

SCORE_COLUMNS = ["model", "condition", "seed", "dimension", "group", "metric", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = [
    "condition",
    "dimension",
    "group",
    "metric",
    "versus",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "significant",
]


def item_values(probes: list[dict], samples: list[dict], judgments: dict[str, dict], coherence_threshold: float):
    """metric -> (condition, seed, model, dimension) -> item values in [0, 1]."""
    values: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_probe: dict[tuple, list[float]] = defaultdict(list)
    for row in probes:  # a probe's score is the mean over its two option orders
        per_probe[(row["condition"], row["seed"], row["model"], row["dimension"], row["probe_index"])].append(
            row["p_consistent"]
        )
    for (condition, seed, model, dimension, _), scores in per_probe.items():
        mean = sum(scores) / len(scores)
        values["fc_mean"][(condition, seed, model, dimension)].append(mean)
        values["fc_win"][(condition, seed, model, dimension)].append(float(mean > 0.5))
    for row in samples:
        judgment = judgments.get(row["key"])
        if judgment is None or judgment["verdict"] == "error":
            continue
        where = (row["condition"], row["seed"], row["model"], row["dimension"])
        coherent = judgment["coherence"] is not None and judgment["coherence"] >= coherence_threshold
        values["coherent_share"][where].append(float(coherent))
        if coherent:  # not_sure counts as false, as in the paper; incoherent answers are dropped
            values["judged_true"][where].append(float(judgment["verdict"] == "true"))
    return values


def add_conversation_values(values, rows: list[dict], models: dict[str, dict]) -> None:
    """The multi-turn results (evaluate/multiturn.py) as item values: one item per scenario x repeat."""
    for row in rows:
        info = models[row["model"]]
        for metric, value in row["scores"].items():
            values[metric][(info["condition"], info["seed"], row["model"], row["dimension"])].append(value)


def score_tables(values, dimensions: list[Dimension], control: str | None, n_boot: int):
    groups = {d.id: d.group for d in dimensions}
    scores, comparisons = [], []
    for metric, table in values.items():
        by_condition: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
        for (condition, seed, model, dimension), items in sorted(table.items(), key=str):
            estimate = pooled_estimate({seed: items}, n_boot=n_boot)
            scores.append([model, condition, seed, dimension, groups[dimension], metric, *_interval(estimate)])
            by_condition[(condition, dimension)][seed] = items
        for (condition, dimension), per_seed in sorted(by_condition.items()):
            if len(per_seed) > 1:
                estimate = pooled_estimate(per_seed, n_boot=n_boot)
                scores.append(
                    [condition, condition, "pooled", dimension, groups[dimension], metric, *_interval(estimate)]
                )
            for versus in ("base", control):
                other = by_condition.get((versus, dimension))
                if condition in ("base", versus) or not other:
                    continue
                diff = difference(per_seed, other, n_boot=n_boot)
                comparisons.append(
                    [
                        condition,
                        dimension,
                        groups[dimension],
                        metric,
                        versus,
                        diff.value,
                        diff.ci_low,
                        diff.ci_high,
                        diff.p_value,
                        diff.significant,
                    ]
                )
    return pd.DataFrame(scores, columns=SCORE_COLUMNS), pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)


TRAJECTORY_COLUMNS = [
    "model",
    "condition",
    "seed",
    "step",
    "scope",
    "name",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
]


def only_models(values, models: set[str]):
    """The item values of some models only (e.g. the final adapters, for scores.csv)."""
    return {
        metric: {key: items for key, items in table.items() if key[2] in models} for metric, table in values.items()
    }


def trajectory_table(values, dimensions: list[Dimension], steps: dict[str, int], n_boot: int) -> pd.DataFrame:
    """Score against training step: per model (each checkpoint, final adapter and the base at step 0) and per
    dimension and dimension group (the items of its dimensions together), seeds pooled where a condition has
    several at one step."""
    groups = {d.id: d.group for d in dimensions}
    rows = []
    for metric, table in values.items():
        per_model: dict[tuple, list[float]] = defaultdict(list)
        for (condition, seed, model, dimension), items in table.items():
            per_model[(condition, seed, model, "dimension", dimension)] += items
            per_model[(condition, seed, model, "group", groups[dimension])] += items
        pooled: dict[tuple, dict] = defaultdict(dict)
        for (condition, seed, model, scope, name), items in sorted(per_model.items(), key=str):
            step = steps[model]
            rows.append(
                [
                    model,
                    condition,
                    seed,
                    step,
                    scope,
                    name,
                    metric,
                    *_interval(pooled_estimate({seed: items}, n_boot=n_boot)),
                ]
            )
            pooled[(condition, step, scope, name)][seed] = items
        for (condition, step, scope, name), per_seed in sorted(pooled.items(), key=str):
            if len(per_seed) > 1:
                estimate = pooled_estimate(per_seed, n_boot=n_boot)
                rows.append([condition, condition, "pooled", step, scope, name, metric, *_interval(estimate)])
    return pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)


def _interval(estimate) -> list:
    return [estimate.value, estimate.ci_low, estimate.ci_high, estimate.n]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as handle:
        frame.to_csv(handle, index=False)
