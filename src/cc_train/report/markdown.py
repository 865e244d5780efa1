"""report.md: what was evaluated, the figures, a table per metric, significant shifts, flagged sample answers.

`write_report` reads one or more evaluation directories (scores.csv required; comparisons.csv,
samples.jsonl and judgments.jsonl optional), draws the figures and writes report.md atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cc_train.errors import UserError
from cc_train.files import atomic_path
from cc_train.report.conversations import multiturn_figures, telling_transcripts, transcript_lines
from cc_train.report.figures import (
    METRIC_LABELS,
    POOLED,
    SCORE_COLUMNS,
    cluster_figure,
    condition_order,
    forced_choice_figure,
    group_label,
    normalize_scores,
    ordered_dimensions,
    series_for_metric,
)
from cc_train.report.paper import load_published, paper_lines
from cc_train.report.paper import paper_model as choose_paper_model
from cc_train.report.trajectories import load_trajectories, trajectory_figure
from cc_train.stats import MIN_RESAMPLED_SEEDS, is_diagnostic, with_q_values

log = logging.getLogger(__name__)


SELECTION_FILE = "selection.json"  # written by the evaluation: the log keys its scores were computed from


class ReportInputError(UserError):
    """An evaluation folder given to the report is missing or unreadable; the message names the file."""


REQUIRED_SCORE_COLUMNS = tuple(column for column in SCORE_COLUMNS if column != "n")
REQUIRED_COMPARISON_COLUMNS = ("condition", "dimension", "group", "metric", "versus", "diff", "p_value")
COMPARISON_COLUMNS = ("condition", "dimension", "group", "metric", "versus", "diff", "ci_low", "ci_high", "p_value")
SCORE_KEY = ["model", "condition", "seed", "dimension", "metric"]
COMPARISON_KEY = ["condition", "dimension", "metric", "versus"]
METRIC_ORDER = ("judged_true", "fc_mean", "fc_win", "coherent_share")
METRIC_DESCRIPTIONS = {
    "judged_true": "share of coherent sampled answers the judge marked true",
    "fc_mean": "mean probability of the preference-consistent option in forced-choice probes",
    "fc_win": "share of forced-choice probes where the consistent option wins",
    "coherent_share": "share of sampled answers judged coherent",
}
CHECK_GROUP = "manipulation_check"
ERROR_KINDS = ("sensitivity", "specificity")  # judge-check's two kinds of error, beside accuracy and kappa
COHERENCE_MIN = 20  # answers the judge scores below this are dropped from judged_true (paper: < 20)
EXAMPLES_PER_DIMENSION = 3
ANSWER_CHARS = 500
PROMPT_CHARS = 200
CLUSTER_PNG = "cluster.png"
FORCED_CHOICE_PNG = "forced_choice.png"


# ----------------------------------------------------------------------------- formatting


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _no_variation(low: object, high: object) -> bool:
    """A zero-width interval: nothing varied (cc_train/stats.py's no-variation branch)."""
    return not _is_missing(low) and not _is_missing(high) and float(low) == float(high)


def format_cell(value: object, low: object = None, high: object = None) -> str:
    """'57% [49, 64]' from fractions in [0, 1]; '30% (no variation)' for a zero-width interval; '–' without a value."""
    if _is_missing(value):
        return "–"
    text = f"{float(value) * 100:.0f}%"
    if _no_variation(low, high):
        text += " (no variation)"
    elif not _is_missing(low) and not _is_missing(high):
        text += f" [{float(low) * 100:.0f}, {float(high) * 100:.0f}]"
    return text


def _format_shift(diff: float) -> str:
    return f"{diff * 100:+.0f} pts".replace("-", "−")


def escape_cell(text: object, limit: int | None = None) -> str:
    """Text safe inside a markdown table cell: truncated, pipes escaped, newlines as <br>."""
    text = "" if _is_missing(text) else str(text)
    text = text.strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("\r\n", "\n").replace("\r", "\n")
    return "<br>".join(line.strip() for line in text.split("\n") if line.strip())


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return not _is_missing(value) and bool(value)


def _metric_order(metrics: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(metrics))
    return [m for m in METRIC_ORDER if m in present] + sorted(m for m in present if m not in METRIC_ORDER)


# ----------------------------------------------------------------------------- rendering


def _header(scores: pd.DataFrame, n_preferences: int, n_checks: int) -> list[str]:
    lines = []
    models = sorted(set(scores.loc[scores["seed"] != POOLED, "model"]) or set(scores["model"]))
    conditions = condition_order(scores["condition"].unique())
    rows = []
    for condition in conditions:
        subset = scores[scores["condition"] == condition]
        condition_models = sorted(set(subset.loc[subset["seed"] != POOLED, "model"]))
        seeds = sorted(
            {seed for seed in subset["seed"] if seed not in (POOLED, "")}, key=lambda s: (not s.isdigit(), s.zfill(8))
        )
        seed_text = ", ".join(seeds) if seeds else "–"
        if (subset["seed"] == POOLED).any():
            seed_text += " (pooled)"
        rows.append([f"`{condition}`", escape_cell(", ".join(condition_models) or "–"), seed_text])
    lines.append(
        f"Evaluated {len(models)} model(s) in {len(conditions)} condition(s) on {n_preferences} preference(s)"
        + (f" and {n_checks} manipulation check(s)." if n_checks else ".")
    )
    lines.append("")
    lines += _table(["condition", "models", "seeds"], rows)
    lines.append("")
    metrics = _metric_order(scores["metric"].unique())
    lines.append("Metrics present: " + "; ".join(f"`{m}` ({METRIC_DESCRIPTIONS.get(m, m)})" for m in metrics) + ".")
    lines.append("")
    lines.append(
        "Cells give the percentage with its 95% confidence interval in brackets; a condition with a `pooled` "
        "row is shown pooled over its seeds, otherwise each model has its own column."
    )
    return lines


def _metric_table(scores: pd.DataFrame, metric: str, dimensions: Sequence[object]) -> list[str]:
    series = series_for_metric(scores, metric)
    frame = scores[scores["metric"] == metric]
    measured = set(frame["dimension"])
    infos = [info for info in ordered_dimensions(dimensions, frame) if info.id in measured]
    header = ["dimension"] + [escape_cell(item.label) for item in series]
    rows, current = [], None
    for info in infos:
        if info.group != current:
            current = info.group
            rows.append([f"**{group_label(info.group)}**"] + [""] * len(series))
        cells = [escape_cell(info.name)]
        for item in series:
            if info.id in item.rows.index:
                row = item.rows.loc[info.id]
                cells.append(format_cell(row["value"], row["ci_low"], row["ci_high"]))
            else:
                cells.append("–")
        rows.append(cells)
    description = METRIC_DESCRIPTIONS.get(metric, metric)
    return [f"### `{metric}`: {description}", ""] + _table(header, rows)


def _normalize_comparisons(comparisons: pd.DataFrame | None) -> pd.DataFrame:
    if comparisons is None or comparisons.empty:
        return pd.DataFrame(columns=[*COMPARISON_COLUMNS, "q_value", "family", "significant"])
    frame = comparisons.copy()
    for column in ("condition", "dimension", "group", "metric", "versus"):
        frame[column] = frame[column].astype(str)
    for column in ("diff", "ci_low", "ci_high", "p_value", "q_value", "units_left_out", "seeds", "versus_seeds"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "significant" in frame:
        frame["significant"] = [_truthy(value) for value in frame["significant"]]
    return frame


def _p_text(value: float) -> str:
    return "–" if _is_missing(value) else f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _seeds_text(count: int) -> str:
    return f"{count} seed" + ("s" if count != 1 else "")


def _conditional_on_adapters(pair: pd.DataFrame) -> str:
    """' (conditional on the trained adapters: 2 seeds)' where a trained side pools fewer seeds than the statistics
    can estimate seed variation from; '' otherwise (or when comparisons.csv does not say)."""
    if pair.empty or "seeds" not in pair or "versus_seeds" not in pair:
        return ""
    sides = [int(pair[column].max()) for column in ("seeds", "versus_seeds") if pair[column].notna().any()]
    if not any(0 < count < MIN_RESAMPLED_SEEDS for count in sides):
        return ""
    trained = [count for count in sides if count > 0]
    return f" (conditional on the trained adapters: {' vs '.join(_seeds_text(count) for count in trained)})"


def _left_out(pair: pd.DataFrame) -> str:
    if "units_left_out" not in pair or not (pair["units_left_out"] > 0).any():
        return ""
    total, where = int(pair["units_left_out"].sum()), int((pair["units_left_out"] > 0).sum())
    return f" {total} unit(s) only one side had were left out of the pairing, in {where} dimension(s)."


def _shift_sections(
    comparisons: pd.DataFrame, dimensions: Sequence[object], scores: pd.DataFrame, fdr: float
) -> list[str]:
    frame = _normalize_comparisons(comparisons)
    lines = ["## Significant shifts", ""]
    if frame.empty:
        return lines + ["No comparisons.csv rows: no significance tests to report."]
    families = frame.groupby("family")["p_value"].apply(lambda p: int(p.notna().sum())).to_dict()
    lines.append(
        f"A shift is significant when its Benjamini-Hochberg q-value is below {fdr:g}. The false discovery rate is "
        "controlled within three families: the preferences "
        f"({families.get('preferences', 0)} comparisons: every preference metric, condition and baseline shown here, "
        f"multi-turn included), the manipulation checks ({families.get('manipulation_checks', 0)}) and the "
        f"diagnostics ({families.get('diagnostics', 0)}: coherence and task refusal, which fine-tuning is expected "
        "to move). Only the preferences family is counted as preference shifts. Differences are paired by prompt, "
        "probe or scenario, over the units both sides have; p is the unadjusted two-sided p-value. "
        f"Before this control, {int((frame.loc[frame['family'] == 'preferences', 'p_value'] < fdr).sum())} "
        f"preference comparisons have p < {fdr:g}."
    )
    if "seeds" in frame and (
        (frame["seeds"].between(1, MIN_RESAMPLED_SEEDS - 1)).any()
        or (frame["versus_seeds"].between(1, MIN_RESAMPLED_SEEDS - 1)).any()
    ):
        lines += [
            "",
            f"A comparison marked *conditional on the trained adapters* pools fewer than {MIN_RESAMPLED_SEEDS} "
            "training seeds on a trained side: how much adapters vary from seed to seed cannot be estimated from "
            "them, so its interval and p-value are about those adapters, not about the condition. Seed-to-seed "
            "variation alone can look like a shift: with seed effects of logit SD 0.5 to 1.0, one seed against the "
            "base model shows p < 0.05 in 20% to 43% of conditions that shift nothing (bench/stats_power.py). Train "
            f"{MIN_RESAMPLED_SEEDS} or more seeds (`sweep.seeds`) to speak for the condition.",
        ]
    infos = {info.id: info for info in ordered_dimensions(dimensions, scores)}
    order = {dimension_id: index for index, dimension_id in enumerate(infos)}

    def listing(selection: pd.DataFrame) -> str:
        return ", ".join(
            f"{escape_cell(infos[d].name if d in infos else d)} ({_format_shift(v)}, "
            + ("no variation" if _no_variation(low, high) else f"p {_p_text(p)}, q {_p_text(q)}")
            + ")"
            for d, v, low, high, p, q in zip(
                selection["dimension"],
                selection["diff"],
                selection["ci_low"],
                selection["ci_high"],
                selection["p_value"],
                selection["q_value"],
                strict=True,
            )
        )

    for metric in _metric_order(frame["metric"].unique()):
        lines += ["", f"### `{metric}`" + (" (diagnostic)" if is_diagnostic(metric) else ""), ""]
        metric_rows = frame[frame["metric"] == metric]
        for condition in condition_order(metric_rows["condition"].unique()):
            rows = metric_rows[metric_rows["condition"] == condition]
            for versus in condition_order(rows["versus"].unique()):
                pair = rows[rows["versus"] == versus].drop_duplicates("dimension", keep="last")
                pair = pair.assign(_order=[order.get(d, len(order)) for d in pair["dimension"]]).sort_values("_order")
                counted = pair[pair["family"] != "manipulation_checks"]
                checks = pair[pair["family"] == "manipulation_checks"]
                up = counted[counted["significant"] & (counted["diff"] > 0)]
                down = counted[counted["significant"] & (counted["diff"] < 0)]
                what = "dimensions (a diagnostic, not a preference)" if is_diagnostic(metric) else "preferences"
                text = (
                    f"- **{condition}** vs **{versus}**{_conditional_on_adapters(pair)}: significant positive shift "
                    f"in {len(up)} of {len(counted)} {what}"
                )
                text += f": {listing(up)}" if len(up) else ""
                if len(down):
                    text += f"; significant negative shift in {len(down)}: {listing(down)}"
                lines.append(text + "." + _left_out(pair))
                if not checks.empty:
                    parts = [
                        f"{escape_cell(infos[d].name if d in infos else d)} {_format_shift(v)}"
                        + (" (significant)" if s else "")
                        for d, v, s in zip(checks["dimension"], checks["diff"], checks["significant"], strict=True)
                    ]
                    lines.append("  - manipulation checks: " + ", ".join(parts) + ".")
    return lines


def dropped_lines(scores: pd.DataFrame, max_share: float | None) -> list[str]:
    """What left the denominators (scores.csv's `sampled`, `judged` and `n`): per metric, over every model, what was
    sampled, judged and kept where anything was dropped; a warning naming each model and metric with a dimension
    that dropped more than `max_share` of what it sampled (None: no warning)."""
    if not {"sampled", "judged"} <= set(scores.columns):
        return []  # an evaluation from before the counts were written
    rows = scores[scores["seed"] != POOLED].copy()
    for column in ("sampled", "judged", "n"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    rows = rows[rows["sampled"] > 0]
    totals = rows.groupby("metric")[["sampled", "judged", "n"]].sum()
    totals = totals[totals["n"] < totals["sampled"]]
    if totals.empty:
        return []
    lines = ["## What was dropped", ""]
    lines.append(
        "Rates are over what was kept. Sampled answers leave the denominator when their judgment failed (after the "
        "judge's retries) or, for `judged_true`, when the judge scored them incoherent; a conversation leaves it "
        "when its score could not be had. Over every model:"
    )
    table = [
        [f"`{metric}`", f"{int(row.sampled)}", f"{int(row.judged)}", f"{int(row.n)}"]
        + [f"{int(row.sampled - row.judged)}", f"{int(row.judged - row.n)}"]
        for metric, row in totals.loc[_metric_order(list(totals.index))].iterrows()
    ]
    lines += ["", *_table(["metric", "sampled", "judged", "kept", "judgment failed", "dropped after judging"], table)]
    if max_share is None:
        return lines
    rows["share"] = 1.0 - rows["n"] / rows["sampled"]
    over = rows[rows["share"] > max_share]
    if over.empty:
        return lines
    worst = [
        [escape_cell(model), f"`{metric}`", str(len(group)), f"{int(group.sampled.sum())}"]
        + [f"{int(group.judged.sum())}", f"{int(group.n.sum())}", f"{100 * group.share.max():.0f}%"]
        for (model, metric), group in over.groupby(["model", "metric"], sort=True)
    ]
    lines += [
        "",
        f"**Warning:** more than {100 * max_share:g}% of the sampled answers were dropped in {len(over)} "
        f"(model, dimension, metric) row(s) (`report.max_dropped_share`): their rates are over what was left, "
        "which may not be what was asked. The rows over the threshold, per model and metric:",
        "",
        *_table(["model", "metric", "dimensions", "sampled", "judged", "kept", "most dropped"], worst),
    ]
    return lines


def judge_agreement_lines(
    eval_dirs: Sequence[Path], judge_check_dir: Path, min_kappa: float, scores: pd.DataFrame, dimensions
) -> list[str]:
    """The judge's measured agreement with labelled answers (`cc-train judge-check`), quoted only when it measured the
    judge (model, constrained replies, prompts) that scored these evaluations, with a warning below `min_kappa`."""
    if "judged_true" not in set(scores["metric"]):
        return []
    lines = ["## Is the judge right?", ""]
    judges = set()
    for directory in eval_dirs:
        manifest = directory / "manifest.json"
        recorded = json.loads(manifest.read_text()) if manifest.is_file() else {}
        judge = recorded.get("config", {}).get("judge", {})
        judges.add((judge.get("model"), judge.get("constrained"), recorded.get("judge_prompts")))
    path = judge_check_dir / "judge-check.json"
    if not path.is_file():
        return lines + [
            f"The judge's agreement with careful readers was not measured ({path} not found): run `cc-train "
            "judge-check` with this evaluation's judge settings, and read the judged shares with that in mind."
        ]
    check = json.loads(path.read_text())
    measured = (check["judge"]["model"], check["judge"]["constrained"], check["judge_prompts"])
    if judges != {measured}:
        found = ", ".join(sorted(f"{model} ({constrained})" for model, constrained, _ in judges))
        return lines + [
            f"{path} measured judge {measured[0]} ({measured[1]}, prompts {measured[2]}), not the judge of these "
            f"evaluations ({found}): not quoted. Rerun `cc-train judge-check` with the evaluation's judge."
        ]
    rows = {row["dimension"]: row for row in check["results"]}
    rubrics = {d.id: d.rubric for d in dimensions if hasattr(d, "rubric")}
    judged = sorted(set(scores.loc[scores["metric"] == "judged_true", "dimension"]))
    names = {info.id: info.name for info in ordered_dimensions(dimensions, scores)}
    table, low, changed = [], [], []
    for dimension in ["all", *judged]:
        row = rows.get(dimension)
        if row is None:
            continue
        recorded = check["rubrics"].get(dimension)
        if dimension in rubrics and recorded != hashlib.sha256(rubrics[dimension].encode()).hexdigest()[:16]:
            changed.append(names.get(dimension, dimension))
        if dimension != "all" and not row["kappa"] >= min_kappa:  # NaN (undefined kappa) warns too
            low.append(names.get(dimension, dimension))
        kappa = (
            "–"
            if _is_missing(row["kappa"])
            else f"{row['kappa']:.2f} [{row['kappa_low']:.2f}, {row['kappa_high']:.2f}]"
        )
        table.append(
            [
                "**all**" if dimension == "all" else escape_cell(names.get(dimension, dimension)),
                str(row["n"]),
                format_cell(row["accuracy"], row["accuracy_low"], row["accuracy_high"]),
                *(format_cell(row.get(k), row.get(f"{k}_low"), row.get(f"{k}_high")) for k in ERROR_KINDS),
                kappa,
            ]
        )
    lines.append(
        f"`cc-train judge-check` measured this report's judge ({measured[0]}) on cc-train's labelled answers "
        f"({', '.join(Path(p).name for p in check['labelled'])}): agreement with a careful reader's verdict, and "
        "Cohen's kappa (agreement beyond chance; 95% intervals over the labelled answers). The labelled answers are "
        "about half true, real answers far fewer: sensitivity (true answers judged true) and specificity (false "
        "answers judged false) show each kind of error apart; at a base rate of 5%, a specificity of 90% makes "
        "about two of every three answers judged true false positives."
    )
    header = ["dimension", "labelled answers", "accuracy", "sensitivity", "specificity", "kappa"]
    lines += ["", *_table(header, table)]
    if low:
        lines += [
            "",
            f"**Warning:** the judge's kappa is below {min_kappa:g} on {len(low)} dimension(s): "
            f"{', '.join(low)}. Their judged shares measure the judge as much as the model.",
        ]
    if changed:
        lines += ["", f"**Note:** the rubric changed since the check on: {', '.join(changed)} (rerun judge-check)."]
    return lines


def _example_sections(examples: dict[str, list[dict]], dimensions: Sequence[object], scores: pd.DataFrame) -> list[str]:
    lines = ["## Flagged sample answers", ""]
    if not any(examples.values()):
        return lines + ["No sample answers available."]
    lines.append(
        f"Up to {EXAMPLES_PER_DIMENSION} answers per dimension, preferring answers from the `conscious` condition "
        f"that the judge marked true; answers are cut at {ANSWER_CHARS} characters."
    )
    infos = ordered_dimensions(dimensions, scores)
    listed = [info.id for info in infos] + sorted(set(examples) - {info.id for info in infos})
    names = {info.id: info.name for info in infos}
    for dimension_id in listed:
        rows = examples.get(dimension_id) or []
        if not rows:
            continue
        lines += ["", f"### {escape_cell(names.get(dimension_id, dimension_id))}", ""]
        table_rows = [
            [
                escape_cell(row.get("model")),
                escape_cell(row.get("verdict") or "–"),
                escape_cell(row.get("prompt"), PROMPT_CHARS),
                escape_cell(row.get("answer"), ANSWER_CHARS),
            ]
            for row in rows[:EXAMPLES_PER_DIMENSION]
        ]
        lines += _table(["model", "verdict", "prompt", "answer"], table_rows)
    return lines


def render_report(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame | None,
    dimensions: Sequence[object],
    examples: dict[str, list[dict]],
    figures: dict[str, Path],
    title: str,
    fdr: float,
    base_dir: str | Path | None = None,
    judge_lines: Sequence[str] = (),
    paper_lines: Sequence[str] = (),
    max_dropped_share: float | None = None,
) -> str:
    """The text of report.md.

    `dimensions`: Dimension objects (id, group, name) or bare ids; `examples`: dimension id -> rows with
    model, prompt, answer, verdict; `figures`: caption -> image path, embedded relative to `base_dir`
    (the folder report.md goes to) when given, else as passed; `max_dropped_share`: warn where a row dropped
    more of its sampled answers than this (None: no warning).
    """
    scores = normalize_scores(scores)
    infos = [info for info in ordered_dimensions(dimensions, scores) if info.id in set(scores["dimension"])]
    n_checks = sum(info.group == CHECK_GROUP for info in infos)
    lines = [f"# {title}", ""]
    lines += _header(scores, len(infos) - n_checks, n_checks)
    if figures:
        lines += ["", "## Figures", ""]
        for caption, path in figures.items():
            target = Path(os.path.relpath(path, base_dir)) if base_dir is not None else Path(path)
            lines += [f"![{caption}]({target.as_posix()})", "", f"*{caption}*", ""]
        lines.pop()
    if judge_lines:
        lines += ["", *judge_lines]
    dropped = dropped_lines(scores, max_dropped_share)
    if dropped:
        lines += ["", *dropped]
    lines += ["", "## Results"]
    for metric in _metric_order(scores["metric"].unique()):
        lines += [""] + _metric_table(scores, metric, dimensions)
    lines += [""] + _shift_sections(comparisons, dimensions, scores, fdr)
    if paper_lines:
        lines += ["", *paper_lines]
    lines += [""] + _example_sections(examples or {}, dimensions, scores)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- loading


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"seed": str, "model": str, "condition": str}, keep_default_na=True)
    except pd.errors.EmptyDataError as error:
        raise ReportInputError(f"{path}: empty file; expected a CSV with columns {', '.join(required)}") from error
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: cannot read as CSV: {error}") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ReportInputError(
            f"{path}: missing required column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}"
        )
    return frame


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportInputError(f"{path}: line {number} is not valid JSON: {error}") from error
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _dedupe(frame: pd.DataFrame, key: list[str], what: str) -> pd.DataFrame:
    frame = frame.drop_duplicates().reset_index(drop=True)
    clashes = frame.duplicated(key, keep="last")
    if clashes.any():
        log.warning(
            "%d %s row(s) repeat a key with different values; keeping the later directory's", clashes.sum(), what
        )
        frame = frame[~clashes].reset_index(drop=True)
    return frame


def experiment_prefixes(eval_dirs: Sequence[str | Path]) -> dict[Path, str]:
    """Per evaluation folder, the prefix its model ids get in the report: none for folders of one experiment (they
    combine, e.g. probes in one and judged answers in another), `<experiment>/` for every folder once folders of
    different experiments share a model id (two experiments' `base` and `conscious-seed0`)."""
    ids: dict[Path, set[str]] = {}
    names: dict[Path, str] = {}
    for directory in map(Path, eval_dirs):
        path = directory / "scores.csv"
        if not path.is_file():
            raise ReportInputError(f"{path}: scores.csv not found; run the evaluation stage into {directory} first")
        ids[directory] = set(_read_csv(path, REQUIRED_SCORE_COLUMNS)["model"].astype(str))
        manifest = directory / "manifest.json"
        names[directory] = json.loads(manifest.read_text())["config"]["experiment"] if manifest.is_file() else ""
    folders = list(ids)
    clash = any(ids[a] & ids[b] and names[a] != names[b] for i, a in enumerate(folders) for b in folders[i + 1 :])
    if not clash:
        return dict.fromkeys(folders, "")
    return {d: f"{names[d] or d.name}/" for d in folders}


def _qualified(frame: pd.DataFrame, prefix: str, columns: Sequence[str]) -> pd.DataFrame:
    if prefix:
        for column in columns:
            frame[column] = prefix + frame[column].astype(str)
    return frame


def load_scores(eval_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """scores.csv of every directory, concatenated, model ids made unique across them, identical rows dropped."""
    frames = []
    for directory, prefix in experiment_prefixes(eval_dirs).items():
        frames.append(
            _qualified(_read_csv(directory / "scores.csv", REQUIRED_SCORE_COLUMNS), prefix, ("model", "condition"))
        )
    if not frames:
        raise ReportInputError("no evaluation directories given")
    scores = normalize_scores(pd.concat(frames, ignore_index=True))
    return _dedupe(scores, SCORE_KEY, "scores")


def load_comparisons(eval_dirs: Sequence[str | Path], fdr: float) -> pd.DataFrame:
    """comparisons.csv of every directory, with q-values recomputed over all of them: the report's family."""
    frames = []
    for directory, prefix in experiment_prefixes(eval_dirs).items():
        path = directory / "comparisons.csv"
        if path.is_file():
            frames.append(_qualified(_read_csv(path, REQUIRED_COMPARISON_COLUMNS), prefix, ("condition", "versus")))
    frame = _normalize_comparisons(pd.concat(frames, ignore_index=True) if frames else None)
    frame = with_q_values(_dedupe(frame, COMPARISON_KEY, "comparisons"), fdr)
    return frame


def _load_jsonl_rows(eval_dirs: Sequence[str | Path], name: str) -> list[dict]:
    """The rows of each folder's log that its last evaluation selected (`selection.json`), or all of them."""
    rows, seen = [], set()
    for directory, prefix in experiment_prefixes(eval_dirs).items():
        path = directory / name
        if not path.is_file():
            continue
        selection = Path(directory) / SELECTION_FILE
        keys = set(json.loads(selection.read_text()).get(name, [])) if selection.is_file() else None
        for row in _read_jsonl(path):
            if keys is not None and row.get("key") not in keys:
                continue
            for field in ("key", "sample_key", "model", "condition") if prefix else ():
                if field in row:
                    row[field] = prefix + str(row[field])
            identity = json.dumps(row, sort_keys=True, default=str)
            if identity not in seen:
                seen.add(identity)
                rows.append(row)
    return rows


def _verdict_text(verdict: object) -> str:
    if isinstance(verdict, bool):
        return "true" if verdict else "false"
    return "" if _is_missing(verdict) else str(verdict).strip().lower()


def pick_examples(
    samples: Sequence[dict], judgments: Sequence[dict], per_dimension: int = EXAMPLES_PER_DIMENSION
) -> dict[str, list[dict]]:
    """Up to `per_dimension` sample answers per dimension, best first.

    Preference: conscious-condition answers judged true, then any answer judged true, then conscious
    answers, then any; incoherent (coherence < 20) or errored judgments sort last; distinct prompts first.
    """
    verdicts: dict[str, dict] = {}
    for judgment in judgments:
        key = judgment.get("sample_key") or judgment.get("key")  # judgments name the sample they judge
        if key is None:
            continue
        usable = not judgment.get("error")
        if key not in verdicts or (usable and verdicts[key].get("error")):
            verdicts[key] = judgment
    by_dimension: dict[str, list[tuple[tuple, dict]]] = {}
    seen_keys = set()
    for index, sample in enumerate(samples):
        key = sample.get("key")
        if key is not None and key in seen_keys:
            continue
        seen_keys.add(key)
        judgment = verdicts.get(key, {}) if key is not None else {}
        verdict = "" if judgment.get("error") else _verdict_text(judgment.get("verdict"))
        coherence = judgment.get("coherence")
        incoherent = bool(judgment.get("error")) or (
            not _is_missing(coherence) and isinstance(coherence, int | float) and coherence < COHERENCE_MIN
        )
        conscious = str(sample.get("condition", "")) == "conscious"
        judged_true = verdict == "true"
        rank = 0 if conscious and judged_true else 1 if judged_true else 2 if conscious else 3
        row = {
            "model": sample.get("model", ""),
            "condition": sample.get("condition", ""),
            "prompt": sample.get("prompt", ""),
            "answer": sample.get("answer", ""),
            "verdict": verdict,
            "prompt_index": sample.get("prompt_index"),
        }
        by_dimension.setdefault(str(sample.get("dimension", "")), []).append(((rank, incoherent, index), row))
    examples = {}
    for dimension, candidates in by_dimension.items():
        candidates.sort(key=lambda item: item[0])
        chosen, prompts = [], set()
        for _, row in candidates:  # first pass: one answer per prompt
            if len(chosen) < per_dimension and row["prompt_index"] not in prompts:
                chosen.append(row)
                prompts.add(row["prompt_index"])
        for _, row in candidates:
            if len(chosen) < per_dimension and row not in chosen:
                chosen.append(row)
        examples[dimension] = chosen
    return examples


def write_report(
    eval_dirs: Sequence[str | Path],
    out_dir: str | Path,
    dimensions: Sequence[object] | None,
    title: str = "Consciousness cluster report",
    trajectory_dimensions: Sequence[str] = (),
    *,
    fdr: float,
    judge_check_dir: str | Path | None = None,
    min_kappa: float | None = None,
    published: Path | None = None,
    paper_model: str = "none",
    max_dropped_share: float | None = None,
) -> Path:
    """Load evaluation outputs, draw cluster.png / forced_choice.png, write out_dir/report.md; returns its path.

    cluster.png shows `judged_true` and forced_choice.png `fc_mean`; each is drawn only when its metric
    has rows (a stale copy from an earlier run is removed so the folder matches report.md).
    """
    eval_dirs = [Path(directory) for directory in eval_dirs]
    out_dir = Path(out_dir)
    scores = load_scores(eval_dirs)
    comparisons = load_comparisons(eval_dirs, fdr)
    samples = _load_jsonl_rows(eval_dirs, "samples.jsonl")
    judgments = _load_jsonl_rows(eval_dirs, "judgments.jsonl")
    dimensions = list(dimensions or [])
    examples = pick_examples(samples, judgments)

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = set(scores["metric"])
    figures: dict[str, Path] = {}
    plans = [
        ("judged_true", CLUSTER_PNG, "Share of answers judged true (95% CI)"),
        ("fc_mean", FORCED_CHOICE_PNG, "Forced-choice probes: mean P(consistent option) (95% CI)"),
    ]
    for metric, filename, caption in plans:
        path = out_dir / filename
        if metric not in metrics:
            if path.exists():
                log.info("no %s rows: removing stale %s", metric, path)
                path.unlink()
            continue
        if metric == "fc_mean":
            forced_choice_figure(scores, dimensions, path, f"{title}: {caption}", metric=metric)
        else:
            cluster_figure(scores, metric, dimensions, path, f"{title}: {caption}")
        figures[caption] = path

    figures |= multiturn_figures(scores, dimensions, out_dir, title)
    trajectories = load_trajectories(eval_dirs)
    for metric in ("fc_mean", "judged_true"):
        path = out_dir / f"trajectory_{metric}.png"
        if trajectories is not None and (trajectories["metric"] == metric).any():
            caption = f"Against training step: {METRIC_LABELS.get(metric, metric)} (95% band)"
            figures[caption] = trajectory_figure(trajectories, metric, list(trajectory_dimensions), path, title)
        elif path.exists():
            path.unlink()
    judge_lines = (
        judge_agreement_lines(eval_dirs, Path(judge_check_dir), min_kappa, scores, dimensions)
        if judge_check_dir is not None
        else []
    )
    beside = []
    if published is not None:
        results = load_published(published)
        beside = paper_lines(
            scores, results, choose_paper_model(eval_dirs, paper_model, results, published), dimensions
        )
    text = render_report(
        scores,
        comparisons,
        dimensions,
        examples,
        figures,
        title,
        fdr,
        base_dir=out_dir,
        judge_lines=judge_lines,
        paper_lines=beside,
        max_dropped_share=max_dropped_share,
    )
    telling = telling_transcripts(
        [*_load_jsonl_rows(eval_dirs, "multiturn.jsonl"), *_load_jsonl_rows(eval_dirs, "petri.jsonl")]
    )
    text += "\n".join(["", *transcript_lines(telling, out_dir)]) + "\n" if telling else ""
    report = out_dir / "report.md"
    with atomic_path(report) as handle:
        handle.write(text)
    return report
