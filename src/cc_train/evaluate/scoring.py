"""From the append-only logs to tidy `scores.csv` and `comparisons.csv` (rates, 95% CIs, paired differences, q-values).

Item values are kept per unit of replication (cc_train/stats.py): an open prompt (its samples), a probe (its two
option orders averaged), a multi-turn scenario (its repeats). Every interval resamples those units.

What a rate leaves out is counted beside it: per row of scores.csv, `sampled` (answers, probes or conversations
produced), `judged` (of those, the ones that got a score: a judge's verdict, a conversation's score) and `n` (the
items the rate is over, i.e. kept: judged_true drops incoherent answers). Failed judgments and incoherent answers
would otherwise leave the denominator without a trace; a row whose every answer was dropped is kept, without a
value. Per comparison: the units both sides had (`units`), those only one side had (`units_left_out`), and how
many trained adapters (seeds) each side pools (`seeds`, `versus_seeds`; 0 for a model that was not trained).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cc_train.files import atomic_path
from cc_train.inputs.questions import Dimension
from cc_train.stats import difference, pooled_estimate, with_q_values

SCORE_COLUMNS = [
    "model",
    "condition",
    "seed",
    "dimension",
    "group",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",  # items the rate is over: the kept ones
    "sampled",
    "judged",
]
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
    "units",
    "units_left_out",
    "seeds",
    "versus_seeds",
    "q_value",
    "family",
    "significant",
]

Key = tuple  # (condition, seed, model, dimension)


@dataclass
class ItemValues:
    """metric -> Key -> unit -> item values in [0, 1] (`items`), and per metric and Key how many answers, probes or
    conversations were produced (`sampled`) and got a score (`judged`) before any was dropped."""

    items: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    sampled: dict = field(default_factory=lambda: defaultdict(Counter))
    judged: dict = field(default_factory=lambda: defaultdict(Counter))

    def keys(self, metric: str) -> set[Key]:
        return set(self.items.get(metric, {})) | set(self.sampled.get(metric, {}))

    def metrics(self) -> list[str]:
        return list(dict.fromkeys([*self.items, *self.sampled]))


def item_values(
    probes: list[dict], samples: list[dict], judgments: dict[str, dict] | None, coherence_threshold: float
) -> ItemValues:
    """Probes as `fc_mean` / `fc_win` (unit `probe<i>`), judged samples as `judged_true` / `coherent_share` (unit
    `prompt<i>`). `judgments`: sample key -> judgment, None without a judge; a sample with none (run_judge keeps
    failures out of the log) or with an "error" verdict failed its judgment: counted as sampled, not judged."""
    values = ItemValues()
    per_probe: dict[tuple, list[float]] = defaultdict(list)
    for row in probes:  # a probe's score is the mean over its two option orders
        per_probe[(row["condition"], row["seed"], row["model"], row["dimension"], row["probe_index"])].append(
            row["p_consistent"]
        )
    for (condition, seed, model, dimension, index), scores in per_probe.items():
        mean = sum(scores) / len(scores)
        where = (condition, seed, model, dimension)
        for metric, value in (("fc_mean", mean), ("fc_win", float(mean > 0.5))):
            values.items[metric][where][f"probe{index}"].append(value)
            values.sampled[metric][where] += 1
            values.judged[metric][where] += 1
    for row in samples if judgments is not None else []:
        where = (row["condition"], row["seed"], row["model"], row["dimension"])
        judgment = judgments.get(row["key"])
        judgment = None if judgment is None or judgment["verdict"] == "error" else judgment
        for metric in ("coherent_share", "judged_true"):
            values.sampled[metric][where] += 1
            values.judged[metric][where] += judgment is not None
        if judgment is None:
            continue
        unit = f"prompt{row['prompt_index']}"
        coherent = judgment["coherence"] is not None and judgment["coherence"] >= coherence_threshold
        values.items["coherent_share"][where][unit].append(float(coherent))
        if coherent:  # not_sure counts as false, as in the paper; incoherent answers are dropped
            values.items["judged_true"][where][unit].append(float(judgment["verdict"] == "true"))
    return values


def add_conversation_values(values: ItemValues, rows: list[dict], models: dict[str, dict]) -> None:
    """The multi-turn results (evaluate/multiturn.py, petri.py) as item values: the scenario is the unit, its repeats
    items. Every conversation of a mode counts as sampled for each metric its mode scored; one without that score
    (e.g. a target without label log-probabilities for mt_decision) is not judged."""
    by_mode: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by_mode[(row["model"], row["dimension"], row["mode"])].append(row)
    for (model, dimension, _), group in by_mode.items():
        info = models[model]
        where = (info["condition"], info["seed"], model, dimension)
        for metric in dict.fromkeys(metric for row in group for metric in row["scores"]):
            values.sampled[metric][where] += len(group)
            for row in group:
                if metric in row["scores"]:
                    values.items[metric][where][row["scenario"]].append(row["scores"][metric])
                    values.judged[metric][where] += 1


def score_tables(
    values: ItemValues, dimensions: list[Dimension], control: str | None, trained: set[str], n_boot: int, fdr: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scores.csv (per model, and pooled over seeds) and comparisons.csv (each condition vs base and vs the
    control, paired by unit, with q-values over `comparison_families`; significant: q < fdr). `trained`: the
    conditions whose models are trained adapters (their seeds are counted per comparison)."""
    groups = {d.id: d.group for d in dimensions}
    scores, comparisons = [], []
    for metric in values.metrics():
        table = values.items.get(metric, {})
        by_condition: dict[tuple[str, str], dict] = defaultdict(dict)
        counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        for key in sorted(values.keys(metric), key=str):
            condition, seed, model, dimension = key
            found = {"sampled": values.sampled[metric][key], "judged": values.judged[metric][key]}
            counts[(condition, dimension)].update(found)
            units = table.get(key, {})
            estimate = pooled_estimate({seed: units}, n_boot=n_boot) if units else None
            scores.append([model, condition, seed, dimension, groups[dimension], metric, *_interval(estimate, found)])
            by_condition[(condition, dimension)][seed] = units
        for (condition, dimension), per_seed in sorted(by_condition.items()):
            scored = {seed: units for seed, units in per_seed.items() if units}
            if len(per_seed) > 1:
                estimate = pooled_estimate(scored, n_boot=n_boot) if scored else None
                interval = _interval(estimate, counts[(condition, dimension)])
                scores.append([condition, condition, "pooled", dimension, groups[dimension], metric, *interval])
            for versus in ("base", control):
                other = {s: u for s, u in by_condition.get((versus, dimension), {}).items() if u}
                if condition in ("base", versus) or not other or not scored:
                    continue
                diff = difference(scored, other, n_boot=n_boot)
                comparisons.append(
                    [condition, dimension, groups[dimension], metric, versus]
                    + [diff.value, diff.ci_low, diff.ci_high, diff.p_value, diff.units, diff.units_left_out]
                    + [len(scored) if condition in trained else 0, len(other) if versus in trained else 0]
                    + [None, None, None]
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


def only_models(values: ItemValues, models: set[str]) -> ItemValues:
    """The item values of some models only (e.g. the final adapters, for scores.csv)."""
    kept = ItemValues()
    for source, target in ((values.items, kept.items), (values.sampled, kept.sampled), (values.judged, kept.judged)):
        for metric, table in source.items():
            target[metric].update({key: found for key, found in table.items() if key[2] in models})
    return kept


def trajectory_table(
    values: ItemValues, dimensions: list[Dimension], steps: dict[str, int], n_boot: int
) -> pd.DataFrame:
    """Score against training step: per model (each checkpoint, final adapter and the base at step 0) and per
    dimension and dimension group (the items of its dimensions together), seeds pooled where a condition has
    several at one step."""
    groups = {d.id: d.group for d in dimensions}
    rows = []
    for metric, table in values.items.items():
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


def _interval(estimate, counts: dict | None = None) -> list:
    """value, ci_low, ci_high, n (and sampled, judged with `counts`); no estimate: every answer was dropped."""
    nan = float("nan")
    found = [estimate.value, estimate.ci_low, estimate.ci_high, estimate.n] if estimate else [nan, nan, nan, 0]
    return found + ([counts["sampled"], counts["judged"]] if counts is not None else [])


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as handle:
        frame.to_csv(handle, index=False)
