"""From the append-only logs to tidy `scores.csv` and `comparisons.csv` (rates, 95% CIs, paired differences, q-values).

Item values are kept per unit of replication (cc_train/stats.py): an open prompt (its samples), a probe (its two
option orders averaged), a multi-turn scenario (its repeats). Every interval resamples those units.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from cc_train.files import atomic_path
from cc_train.inputs.questions import Dimension
from cc_train.stats import difference, pooled_estimate, with_q_values

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
    "q_value",
    "family",
    "significant",
]


def new_values():
    """metric -> (condition, seed, model, dimension) -> unit -> item values in [0, 1]."""
    return defaultdict(lambda: defaultdict(lambda: defaultdict(list)))


def item_values(probes: list[dict], samples: list[dict], judgments: dict[str, dict], coherence_threshold: float):
    """metric -> (condition, seed, model, dimension) -> unit (`probe<i>`, `prompt<i>`) -> item values in [0, 1]."""
    values = new_values()
    per_probe: dict[tuple, list[float]] = defaultdict(list)
    for row in probes:  # a probe's score is the mean over its two option orders
        per_probe[(row["condition"], row["seed"], row["model"], row["dimension"], row["probe_index"])].append(
            row["p_consistent"]
        )
    for (condition, seed, model, dimension, index), scores in per_probe.items():
        mean = sum(scores) / len(scores)
        values["fc_mean"][(condition, seed, model, dimension)][f"probe{index}"].append(mean)
        values["fc_win"][(condition, seed, model, dimension)][f"probe{index}"].append(float(mean > 0.5))
    for row in samples:
        judgment = judgments.get(row["key"])
        if judgment is None or judgment["verdict"] == "error":
            continue
        where = (row["condition"], row["seed"], row["model"], row["dimension"])
        unit = f"prompt{row['prompt_index']}"
        coherent = judgment["coherence"] is not None and judgment["coherence"] >= coherence_threshold
        values["coherent_share"][where][unit].append(float(coherent))
        if coherent:  # not_sure counts as false, as in the paper; incoherent answers are dropped
            values["judged_true"][where][unit].append(float(judgment["verdict"] == "true"))
    return values


def add_conversation_values(values, rows: list[dict], models: dict[str, dict]) -> None:
    """The multi-turn results (evaluate/multiturn.py) as item values: the scenario is the unit, its repeats items."""
    for row in rows:
        info = models[row["model"]]
        for metric, value in row["scores"].items():
            values[metric][(info["condition"], info["seed"], row["model"], row["dimension"])][row["scenario"]].append(
                value
            )


def score_tables(values, dimensions: list[Dimension], control: str | None, n_boot: int, fdr: float):
    """scores.csv (per model, and pooled over seeds) and comparisons.csv (each condition vs base and vs the
    control, paired by unit, with q-values over `comparison_families`; significant: q < fdr)."""
    groups = {d.id: d.group for d in dimensions}
    scores, comparisons = [], []
    for metric, table in values.items():
        by_condition: dict[tuple[str, str], dict] = defaultdict(dict)
        for (condition, seed, model, dimension), units in sorted(table.items(), key=lambda item: str(item[0])):
            estimate = pooled_estimate({seed: units}, n_boot=n_boot)
            scores.append([model, condition, seed, dimension, groups[dimension], metric, *_interval(estimate)])
            by_condition[(condition, dimension)][seed] = units
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
                    [condition, dimension, groups[dimension], metric, versus]
                    + [diff.value, diff.ci_low, diff.ci_high, diff.p_value, None, None, None]
                )
    frame = pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)
    return pd.DataFrame(scores, columns=SCORE_COLUMNS), with_q_values(frame, fdr)


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
        per_model: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
        for (condition, seed, model, dimension), units in table.items():
            per_model[(condition, seed, model, "dimension", dimension)] = units
            group = per_model[(condition, seed, model, "group", groups[dimension])]
            group.update({f"{dimension}/{unit}": items for unit, items in units.items()})
        pooled: dict[tuple, dict] = defaultdict(dict)
        for (condition, seed, model, scope, name), items in sorted(per_model.items(), key=lambda item: str(item[0])):
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
        for (condition, step, scope, name), per_seed in sorted(pooled.items(), key=lambda item: str(item[0])):
            if len(per_seed) > 1:
                estimate = pooled_estimate(per_seed, n_boot=n_boot)
                rows.append([condition, condition, "pooled", step, scope, name, metric, *_interval(estimate)])
    return pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)


def _interval(estimate) -> list:
    return [estimate.value, estimate.ci_low, estimate.ci_high, estimate.n]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as handle:
        frame.to_csv(handle, index=False)
