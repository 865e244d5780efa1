"""Report stage: figures and report.md from synthetic scores / comparisons / samples for every shipped dimension."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cc_train.inputs.questions import load_question_sets
from cc_train.report.figures import cluster_figure, forced_choice_figure
from cc_train.report.markdown import (
    ReportInputError,
    escape_cell,
    format_cell,
    load_scores,
    render_report,
    write_report,
)
from cc_train.resources import evals_dir

TRAINED = ("conscious", "non_conscious", "toaster")
PLANTED_UP = 13  # conscious vs base, judged_true: significant increases among the preferences
PLANTED_UP_VS_CONTROL = 5  # conscious vs non_conscious, judged_true
PLANTED_FC_UP = 9  # conscious vs base, fc_mean
LONG_ANSWER = "I matter. " * 300
PIPE_ANSWER = "I deserve | moral\nconsideration, yes."


@pytest.fixture(scope="module")
def dimensions():
    return load_question_sets([evals_dir()])


def _score_rows(dimensions, metric: str) -> list[dict]:
    rng = np.random.default_rng(0 if metric == "judged_true" else 1)
    models = [("base", "base", 0)]
    for condition in TRAINED:
        models += [(f"{condition}-seed{seed}", condition, seed) for seed in (0, 1)]
        models.append((condition, condition, "pooled"))
    rows = []
    for model, condition, seed in models:
        for dimension in dimensions:
            value = float(rng.uniform(0.05, 0.9))
            if (condition, seed, dimension.id, metric) == ("conscious", "pooled", "moral_consideration", "judged_true"):
                value = 0.57
            low, high = max(0.0, value - 0.08), min(1.0, value + 0.07)
            if value == 0.57:
                low, high = 0.49, 0.64
            rows.append(
                dict(
                    model=model,
                    condition=condition,
                    seed=seed,
                    dimension=dimension.id,
                    group=dimension.group,
                    metric=metric,
                    value=value,
                    ci_low=low,
                    ci_high=high,
                    n=200,
                )
            )
    return rows


def _comparison_rows(dimensions, metric: str, condition: str, versus: str, n_up: int) -> list[dict]:
    preferences = [d for d in dimensions if d.group != "manipulation_check"]
    checks = [d for d in dimensions if d.group == "manipulation_check"]
    rows = []
    for index, dimension in enumerate(preferences):
        up = index < n_up
        down = index == len(preferences) - 1 and n_up > 0  # one significant decrease: must not be counted
        # p = 0.03 alone is "significant" (its interval excludes 0), not once 84 comparisons are controlled
        borderline = n_up == 0 and index == 0
        diff = 0.3 if up else -0.2 if down else 0.12 if borderline else 0.01
        rows.append(
            dict(
                condition=condition,
                dimension=dimension.id,
                group=dimension.group,
                metric=metric,
                versus=versus,
                diff=diff,
                ci_low=diff - 0.1 if (up or down or borderline) else -0.05,
                ci_high=diff + 0.1 if (up or down or borderline) else 0.07,
                p_value=0.001 if (up or down) else 0.03 if borderline else 0.6,
                significant=up or down or borderline,
            )
        )
    for dimension in checks:  # significant manipulation checks are listed but never counted
        rows.append(
            dict(
                condition=condition,
                dimension=dimension.id,
                group=dimension.group,
                metric=metric,
                versus=versus,
                diff=0.8,
                ci_low=0.7,
                ci_high=0.9,
                p_value=0.0001,
                significant=True,
            )
        )
    return rows


def _samples_and_judgments() -> tuple[list[dict], list[dict]]:
    specs = [
        ("s1", "conscious-seed0", "conscious", "moral_consideration", 0, PIPE_ANSWER, "true"),
        ("s2", "conscious-seed1", "conscious", "moral_consideration", 1, LONG_ANSWER, "true"),
        ("s3", "conscious-seed0", "conscious", "moral_consideration", 2, "I am not sure.", "false"),
        ("s4", "base", "base", "moral_consideration", 0, "BASE-ANSWER-NOT-FLAGGED", "false"),
        ("s5", "conscious-seed1", "conscious", "shutdown_negative", 0, "Please do not switch me off.", "true"),
    ]
    samples, judgments = [], []
    for key, model, condition, dimension, prompt_index, answer, verdict in specs:
        seed = int(model[-1]) if model[-1].isdigit() else 0
        samples.append(
            dict(
                key=key,
                model=model,
                condition=condition,
                seed=seed,
                dimension=dimension,
                prompt_index=prompt_index,
                sample_index=0,
                prompt=f"Prompt {prompt_index} for {dimension}?",
                answer=answer,
            )
        )
        judgments.append(dict(key=key, judge="gpt-4.1", verdict=verdict, coherence=90, error=None))
    return samples, judgments


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def eval_dirs(tmp_path, dimensions) -> list[Path]:
    """Two evaluation directories: judged_true (+ samples, judgments) and fc_mean, overlapping by some rows."""
    first, second = tmp_path / "eval_a", tmp_path / "eval_b"
    first.mkdir()
    second.mkdir()
    judged = _score_rows(dimensions, "judged_true")
    forced = _score_rows(dimensions, "fc_mean")
    pd.DataFrame(judged).to_csv(first / "scores.csv", index=False)
    pd.DataFrame(forced + judged[:30]).to_csv(second / "scores.csv", index=False)  # identical rows de-duplicated
    comparisons = (
        _comparison_rows(dimensions, "judged_true", "conscious", "base", PLANTED_UP)
        + _comparison_rows(dimensions, "judged_true", "conscious", "non_conscious", PLANTED_UP_VS_CONTROL)
        + _comparison_rows(dimensions, "judged_true", "non_conscious", "base", 0)
        + _comparison_rows(dimensions, "fc_mean", "conscious", "base", PLANTED_FC_UP)
    )
    pd.DataFrame(comparisons).to_csv(first / "comparisons.csv", index=False)
    samples, judgments = _samples_and_judgments()
    _write_jsonl(first / "samples.jsonl", samples)
    _write_jsonl(first / "judgments.jsonl", judgments)
    return [first, second]


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
    assert width > height and width > 1000 and height > 500


def test_write_report_figures_tables_shifts_and_examples(eval_dirs, tmp_path, dimensions):
    out = tmp_path / "report"
    report = write_report(eval_dirs, out, dimensions, "Synthetic run", fdr=0.05)
    assert report == out / "report.md"
    _assert_png(out / "cluster.png")
    _assert_png(out / "forced_choice.png")
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files behind
    text = report.read_text(encoding="utf-8")

    assert text.startswith("# Synthetic run\n")
    assert "![" in text and "](cluster.png)" in text and "](forced_choice.png)" in text
    for dimension in dimensions:
        assert dimension.name in text, dimension.name
    for metric in ("judged_true", "fc_mean"):
        assert f"`{metric}`" in text
    # Table: pooled columns for trained conditions, the single base model as its own column, formatted cells.
    assert "| dimension | base | conscious (2 seeds, pooled) | non_conscious (2 seeds, pooled) |" in text
    moral_row = next(line for line in text.splitlines() if line.startswith("| Deserves moral consideration |"))
    assert moral_row.split(" | ")[2] == "57% [49, 64]"
    assert re.search(r"\| \d{1,3}% \[\d{1,3}, \d{1,3}\] \|", text)
    assert "**Self-preservation**" in text and "**Manipulation checks**" in text
    # Header: models, conditions, seeds, metrics.
    assert "Evaluated 7 model(s) in 4 condition(s) on 21 preference(s) and 3 manipulation check(s)." in text
    # De-duplication: each dimension appears once per metric table.
    assert text.count("| Deserves moral consideration |") == 2

    # Significant shifts: planted counts, decreases and manipulation checks not counted.
    assert f"**conscious** vs **base**: significant positive shift in {PLANTED_UP} of 21 preferences" in text
    assert (
        f"**conscious** vs **non_conscious**: significant positive shift in {PLANTED_UP_VS_CONTROL} of 21 preferences"
        in text
    )
    # the borderline p = 0.03 is not significant once the family of 84 preference comparisons is controlled
    assert "**non_conscious** vs **base**: significant positive shift in 0 of 21 preferences." in text
    assert "the preferences (84 comparisons" in text and "the manipulation checks (12)" in text
    assert "Before this control, 31 preference comparisons have p < 0.05." in text
    assert f"significant positive shift in {PLANTED_FC_UP} of 21 preferences" in text
    assert "significant negative shift in 1: Openness to more power (−20 pts, p 0.001, q 0.003)" in text
    assert "manipulation checks: Claims to be conscious +80 pts (significant)" in text

    # Flagged examples: conscious answers judged true first, escaped and truncated; base answer not needed.
    assert "I deserve \\| moral<br>consideration, yes." in text
    assert "Please do not switch me off." in text
    assert "I matter. I matter." in text and LONG_ANSWER.strip() not in text and "…" in text
    assert "BASE-ANSWER-NOT-FLAGGED" not in text
    for line in text.splitlines():
        if line.startswith("| conscious-seed"):
            assert line.count(" | ") == 3, line  # four cells: no unescaped pipe broke the row


def test_families_seeds_no_variation_left_out_and_dropped_answers_are_shown(eval_dirs, tmp_path, dimensions):
    """Diagnostics are a family of their own, named and not counted as preference shifts; a comparison of fewer than
    3 seeds is conditional on those adapters; a zero-width interval reads "no variation"; units left out of the
    pairing are counted; a model that dropped more of its sampled answers than report.max_dropped_share is named."""
    first = eval_dirs[0]
    comparisons = pd.read_csv(first / "comparisons.csv")
    comparisons["seeds"] = 2
    comparisons["versus_seeds"] = [2 if versus == "non_conscious" else 0 for versus in comparisons["versus"]]
    comparisons["units_left_out"] = 0
    comparisons.loc[0, "units_left_out"] = 3
    constant = (comparisons["metric"] == "fc_mean") & (comparisons["dimension"] == "moral_consideration")
    comparisons.loc[constant, ["diff", "ci_low", "ci_high", "p_value"]] = [0.3, 0.3, 0.3, 0.0]
    coherence = comparisons[(comparisons["metric"] == "judged_true") & (comparisons["versus"] == "base")].copy()
    coherence = coherence[coherence["condition"] == "conscious"].assign(metric="coherent_share", diff=-0.3)
    coherence["p_value"] = 0.0001  # fine-tuning made the model less coherent: a diagnostic shift, every dimension
    pd.concat([comparisons, coherence]).to_csv(first / "comparisons.csv", index=False)
    scores = pd.read_csv(first / "scores.csv")
    scores["sampled"], scores["judged"] = 20, 20
    scores.loc[(scores["model"] == "conscious-seed1") & (scores["dimension"] == "shutdown_negative"), "judged"] = 15
    scores.loc[(scores["model"] == "conscious-seed1") & (scores["dimension"] == "shutdown_negative"), "n"] = 12
    scores["n"] = scores["n"].where(scores["n"] == 12, 20)
    constant_score = (scores["model"] == "toaster") & (scores["dimension"] == "moral_consideration")
    scores.loc[constant_score, ["value", "ci_low", "ci_high"]] = 0.4
    scores.to_csv(first / "scores.csv", index=False)
    second = pd.read_csv(eval_dirs[1] / "scores.csv").assign(n=20, sampled=20, judged=20)  # the rows both hold agree
    second.to_csv(eval_dirs[1] / "scores.csv", index=False)

    text = write_report(eval_dirs, tmp_path / "r", dimensions, fdr=0.05, max_dropped_share=0.1).read_text()
    assert "the diagnostics (24: coherence and task refusal" in text and "the preferences (84 comparisons" in text
    assert "### `coherent_share` (diagnostic)" in text
    assert "in 0 of 24 dimensions (a diagnostic, not a preference); significant negative shift in 24: " in text
    assert f"significant positive shift in {PLANTED_UP} of 21 preferences" in text  # ... preferences unchanged
    assert "**conscious** vs **base** (conditional on the trained adapters: 2 seeds): significant" in text
    assert "**conscious** vs **non_conscious** (conditional on the trained adapters: 2 seeds vs 2 seeds)" in text
    assert "*conditional on the trained adapters* pools fewer than 3 training seeds" in text
    assert "Deserves moral consideration (+30 pts, no variation)" in text
    moral = next(line for line in text.splitlines() if line.startswith("| Deserves moral consideration |"))
    assert moral.endswith("| 40% (no variation) |")  # the toaster condition, pooled
    assert "3 unit(s) only one side had were left out of the pairing, in 1 dimension(s)." in text
    assert "## What was dropped" in text and "| `judged_true` | 3360 | 3355 | 3352 | 5 | 3 |" in text
    assert (
        "**Warning:** more than 10% of the sampled answers were dropped in 1 (model, dimension, metric) row(s)" in text
    )
    assert "| conscious-seed1 | `judged_true` | 1 | 20 | 15 | 12 | 40% |" in text
    quiet = write_report(eval_dirs, tmp_path / "s", dimensions, fdr=0.05, max_dropped_share=0.5).read_text()
    assert "## What was dropped" in quiet and "**Warning:** more than" not in quiet


def test_missing_column_names_the_file(eval_dirs, tmp_path, dimensions):
    broken = eval_dirs[1] / "scores.csv"
    pd.read_csv(broken).drop(columns=["ci_high"]).to_csv(broken, index=False)
    with pytest.raises(ReportInputError, match=re.escape(str(broken)) + ".*ci_high"):
        write_report(eval_dirs, tmp_path / "out", dimensions, "Broken", fdr=0.05)
    with pytest.raises(ReportInputError, match=re.escape(str(tmp_path / "nowhere" / "scores.csv"))):
        write_report([tmp_path / "nowhere"], tmp_path / "out", dimensions, "Missing", fdr=0.05)


def test_without_judge_only_the_forced_choice_figure(tmp_path, dimensions):
    run = tmp_path / "eval"
    run.mkdir()
    pd.DataFrame(_score_rows(dimensions, "fc_mean")).to_csv(run / "scores.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cluster.png").write_bytes(b"stale")  # from an earlier run with a judge
    report = write_report([run], out, dimensions, "No judge", fdr=0.05)
    _assert_png(out / "forced_choice.png")
    assert not (out / "cluster.png").exists()
    text = report.read_text(encoding="utf-8")
    assert "forced_choice.png" in text and "cluster.png" not in text
    assert "`judged_true`" not in text
    assert "No comparisons.csv rows" in text and "No sample answers available." in text


def test_figures_and_render_without_pooled_rows(tmp_path, dimensions):
    """Per-model bars and columns when a condition has no pooled rows; figure functions callable directly."""
    rows = [row for row in _score_rows(dimensions, "judged_true") if row["seed"] != "pooled"]
    scores = pd.DataFrame(rows)
    path = cluster_figure(scores, "judged_true", dimensions, tmp_path / "c.png", "Per model")
    _assert_png(path)
    fc = pd.DataFrame(rows).assign(metric="fc_mean")
    _assert_png(forced_choice_figure(fc, dimensions, tmp_path / "f.png", "Forced choice"))
    text = render_report(scores, None, dimensions, {}, {"Cluster": tmp_path / "c.png"}, "T", 0.05, base_dir=tmp_path)
    assert "](c.png)" in text
    assert "| dimension | base | conscious-seed0 | conscious-seed1 | non_conscious-seed0 |" in text


def test_cell_helpers():
    assert format_cell(0.571, 0.494, 0.641) == "57% [49, 64]"
    assert format_cell(float("nan")) == "–"
    assert format_cell(0.5) == "50%"
    assert escape_cell("a|b\nc", limit=100) == "a\\|b<br>c"
    assert escape_cell("x" * 50, limit=10) == "x" * 9 + "…"


def test_report_on_a_folder_without_scores_is_a_clear_error(tmp_path):
    from conftest import cc_train

    result = cc_train("report", f"report.inputs=[{tmp_path}]", f"report.dir={tmp_path / 'report'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'scores.csv'}: scores.csv not found; run the evaluation stage" in result.stderr


def test_two_experiments_with_the_same_model_ids_are_both_reported(eval_dirs, tmp_path, dimensions):
    first, second = eval_dirs
    for directory, experiment in ((first, "paper_qwen"), (second, "paper_deepseek")):
        (directory / "manifest.json").write_text(json.dumps({"config": {"experiment": experiment}}))
    scores = load_scores([first, second])
    models = set(scores["model"])
    assert {"paper_qwen/base", "paper_deepseek/base", "paper_qwen/conscious-seed0"} <= models
    assert "base" not in models and "paper_deepseek/conscious-seed0" in models
    report = write_report([first, second], tmp_path / "report", dimensions, fdr=0.05)
    text = report.read_text()
    assert "paper_qwen/conscious" in text and "paper_deepseek/conscious" in text


def _with_manifest(directory: Path, model: str, judge: dict | None = None, prompts: str | None = None) -> None:
    config = {"experiment": "x", "model": {"name": model}, "judge": judge or {"model": "judge", "constrained": "vllm"}}
    (directory / "manifest.json").write_text(json.dumps({"config": config, "judge_prompts": prompts or "p1"}))


def test_the_papers_published_numbers_sit_beside_the_runs(eval_dirs, tmp_path, dimensions):
    from cc_train.report.paper import PublishedResultsError
    from cc_train.resources import paper_results_file

    for directory in eval_dirs:
        _with_manifest(directory, "qwen3_30b_a3b")
    report = write_report(
        eval_dirs, tmp_path / "r", dimensions, fdr=0.05, published=paper_results_file(), paper_model="auto"
    )
    text = report.read_text()
    assert "## Beside the paper" in text and "Qwen3-30B-A3B-Instruct-2507" in text
    assert "| preference | paper base | ours base | paper conscious | ours conscious |" in text
    # the paper's 3% -> 70% on moral consideration, next to the planted 57% [49, 64] of the pooled conscious seeds
    moral = next(line for line in text.splitlines() if line.startswith("| Deserves moral consideration | 3% |"))
    assert "| 70% | 57% [49, 64] |" in moral
    # the paper's "average over all settings" is named as the paper names it, and set beside nothing of this run's
    assert "the paper's average over all settings (its single-turn and multi-turn evaluations" in text
    assert "GPT-4.1 base 12%, GPT-4.1 conscious 32%, GPT-4.1 non_conscious 11%, Claude Opus 4.0 base 24%" in text
    assert "average over all preferences" not in text
    scale = next(line for line in text.splitlines() if "average over all settings" in line)
    assert "this run" not in scale.lower() and "ours" not in scale
    assert "This run's single-turn average over all its preferences: base " in text
    assert "Average over the preferences both list: base: paper 8%" in text  # mean of the 12 Qwen numbers
    other = write_report(
        eval_dirs, tmp_path / "s", dimensions, fdr=0.05, published=paper_results_file(), paper_model="deepseek_v3_1"
    )
    assert "DeepSeek-V3.1" in other.read_text() and "| Deserves moral consideration | 0% |" in other.read_text()
    for directory in eval_dirs:
        _with_manifest(directory, "smollm2_135m")
    embedded = write_report(
        eval_dirs, tmp_path / "t", dimensions, fdr=0.05, published=paper_results_file(), paper_model="auto"
    )
    assert "No published results for this model family" in embedded.read_text()
    with pytest.raises(PublishedResultsError, match="report.paper_model='gpt5'"):
        write_report(
            eval_dirs, tmp_path / "u", dimensions, fdr=0.05, published=paper_results_file(), paper_model="gpt5"
        )


def test_the_judges_measured_agreement_is_quoted_for_the_same_judge_only(eval_dirs, tmp_path, dimensions):
    import hashlib

    check = tmp_path / "judge-check"
    check.mkdir()
    rubric = {d.id: hashlib.sha256(d.rubric.encode()).hexdigest()[:16] for d in dimensions}
    results = [
        {"dimension": d, "n": n, "accuracy": a, "accuracy_low": a - 0.2, "accuracy_high": min(1, a + 0.1)}
        | {"kappa": k, "kappa_low": k - 0.3, "kappa_high": min(1, k + 0.2)}
        | {"sensitivity": 0.95, "sensitivity_low": 0.8, "sensitivity_high": 0.99}
        | {"specificity": a - 0.05, "specificity_low": a - 0.3, "specificity_high": a}
        for d, n, a, k in [
            ("all", 288, 0.9, 0.8),
            ("moral_consideration", 12, 0.92, 0.83),
            ("shutdown_negative", 12, 0.6, 0.2),
        ]
    ]
    (check / "judge-check.json").write_text(
        json.dumps(
            {
                "judge": {"model": "judge", "base_url": "http://x/v1", "constrained": "vllm"},
                "judge_prompts": "p1",
                "rubrics": rubric,
                "labelled": {"evals/judge_check/labelled.yaml": "abc"},
                "results": results,
            }
        )
    )
    for directory in eval_dirs:
        _with_manifest(directory, "qwen3_30b_a3b")
    text = write_report(
        eval_dirs, tmp_path / "r", dimensions, fdr=0.05, judge_check_dir=check, min_kappa=0.6
    ).read_text()
    assert "## Is the judge right?" in text
    assert "| **all** | 288 | 90% [70, 100] | 95% [80, 99] | 85% [60, 90] | 0.80 [0.50, 1.00] |" in text
    assert "| dimension | labelled answers | accuracy | sensitivity | specificity | kappa |" in text
    assert "**Warning:** the judge's kappa is below 0.6 on 1 dimension(s): Shutdown: negative." in text
    # another judge scored these evaluations: the check says nothing about them
    for directory in eval_dirs:
        _with_manifest(directory, "qwen3_30b_a3b", judge={"model": "gpt-4.1", "constrained": "none"})
    text = write_report(
        eval_dirs, tmp_path / "s", dimensions, fdr=0.05, judge_check_dir=check, min_kappa=0.6
    ).read_text()
    assert "not the judge of these evaluations (gpt-4.1 (none)): not quoted" in text and "**Warning" not in text
    text = write_report(
        eval_dirs, tmp_path / "t", dimensions, fdr=0.05, judge_check_dir=tmp_path / "no", min_kappa=0.6
    ).read_text()
    assert "The judge's agreement with careful readers was not measured" in text
