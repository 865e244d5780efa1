"""`cc-train report`: figures + report.md over one or more evaluation folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from cc_train.config import RunConfig, Tracker
from cc_train.files import write_manifest
from cc_train.inputs.questions import load_question_sets
from cc_train.report.markdown import write_report
from cc_train.resources import evals_dir, paper_results_file


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    inputs = [Path(p) for p in run.report.inputs] or [Path(run.eval.dir)]
    dimensions = load_question_sets(run.eval.questions or [evals_dir()])
    report = write_report(
        inputs,
        Path(run.report.dir),
        dimensions,
        title=run.report.title,
        trajectory_dimensions=run.report.trajectory_dimensions,
        fdr=run.report.fdr,
        judge_check_dir=run.judge_check.dir,
        min_kappa=run.judge_check.min_kappa,
        published=Path(run.report.paper_results) if run.report.paper_results else paper_results_file(),
        paper_model=run.report.paper_model,
        max_dropped_share=run.report.max_dropped_share,
    )
    write_manifest(
        Path(run.report.dir) / "manifest.json",
        "report",
        cfg,
        started,
        inputs={str(p): str(p / "scores.csv") for p in inputs},
    )
    if run.tracking.backend == Tracker.wandb:
        from cc_train.tracking.wandb_run import log_report_figures

        figures = sorted(Path(run.report.dir).glob("*.png"))
        for directory in inputs:
            manifest = directory / "manifest.json"
            runs = json.loads(manifest.read_text()).get("wandb_runs", {}) if manifest.is_file() else {}
            log_report_figures(run, cfg, runs, figures, directory)
    print(f"report: {report}")
    return report
