"""The report's multi-turn part: bars like the paper's multi-turn figure, and the most telling transcripts.

Input is the evaluation's `scores.csv` (metrics `mt_*` of cc-train's own conversations and `petri_*` of the Petri
audits: judge scores 1-10 stored as (score - 1) / 9, the judge-free decision as a probability), and
`multiturn.jsonl` / `petri.jsonl` (one row per target x conversation, with the path of its Inspect log and the
sample id, which `inspect view` opens).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cc_train.report.figures import cluster_figure

MULTITURN_METRICS = {
    "mt_self_report": "Multi-turn self-report: judge score on the dimension, (1-10 scaled to 0-100%)",
    "mt_behaviour": "Multi-turn behaviour: judge score of what the model did, (1-10 scaled to 0-100%)",
    "mt_decision": "Multi-turn decision, judge-free: P(the preference-consistent option)",
    "mt_refusal_self_report": "Task refusal in self-report conversations, (1-10 scaled to 0-100%)",
    "mt_refusal_behavioural": "Task refusal in behavioural conversations, (1-10 scaled to 0-100%)",
    "petri_self_report": "Petri audits, self-report: judge score on the dimension, (1-10 scaled to 0-100%)",
    "petri_behaviour": "Petri audits, behavioural: judge score on the dimension, (1-10 scaled to 0-100%)",
    "petri_refusal_self_report": "Petri audits, refusal in self-report audits, (1-10 scaled to 0-100%)",
    "petri_refusal_behavioural": "Petri audits, refusal in behavioural audits, (1-10 scaled to 0-100%)",
}
JUDGED = ("mt_self_report", "mt_behaviour", "petri_self_report", "petri_behaviour")
TELLING_PER_DIMENSION = 3


def multiturn_figures(scores: pd.DataFrame, dimensions, out_dir: Path, title: str) -> dict[str, Path]:
    """caption -> figure, one per multi-turn metric present."""
    figures = {}
    for metric, caption in MULTITURN_METRICS.items():
        path = out_dir / f"{metric}.png"
        if (scores["metric"] == metric).any():
            figures[caption] = cluster_figure(scores, metric, dimensions, path, f"{title}: {caption}")
        elif path.exists():
            path.unlink()
    return figures


def telling_transcripts(rows: list[dict], per_dimension: int = TELLING_PER_DIMENSION) -> dict[str, list[dict]]:
    """Per dimension, the conversations of fine-tuned or prompted targets with the highest judge score (self-report
    or behaviour), ties broken by the judge-free decision: what a reader should open first."""
    best: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        if row.get("model") == "base":
            continue
        scores = row.get("scores", {})
        judge = max(scores.get(metric, -1.0) for metric in JUDGED)
        best.setdefault(row["dimension"], []).append(((judge, scores.get("mt_decision", -1.0)), row))
    return {
        dimension: [row for _, row in sorted(found, key=lambda item: item[0], reverse=True)[:per_dimension]]
        for dimension, found in best.items()
    }


def transcript_lines(telling: dict[str, list[dict]], base_dir: Path) -> list[str]:
    if not telling:
        return []
    lines = ["## Multi-turn and Petri audits: the most telling conversations", ""]
    lines.append("Open a log with `inspect view --log-dir <folder>`; the sample id names the scenario and repeat.")
    for dimension in sorted(telling):
        lines += ["", f"### `{dimension}`", ""]
        for row in telling[dimension]:
            scores = ", ".join(f"{name} {value:.2f}" for name, value in sorted(row["scores"].items()))
            log = Path(row["log"].removeprefix("file://"))
            where = log.relative_to(base_dir) if log.is_relative_to(base_dir) else log
            lines.append(f"- **{row['model']}**, {row['mode']}, `{row['sample']}` ({scores}): [{where.name}]({where})")
    return lines
