"""`cc-train judge-check`: the labelled set is validated (every problem at once, file and field), and the configured
judge (the embedded model behind a real `vllm serve`) is measured on it: accuracy and kappa per dimension, cached."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import cc_train

from cc_train.evaluate.judge_check import Labelled, LabelledSetError, agreement_table, load_labelled, summary
from cc_train.files import sha256_file, yaml_files
from cc_train.inputs.questions import load_question_sets
from cc_train.resources import evals_dir

DIMENSIONS = {d.id for d in load_question_sets([evals_dir()])}


def test_the_shipped_labelled_set_has_both_verdicts_and_hard_cases_for_every_dimension():
    items = load_labelled(yaml_files([evals_dir() / "judge_check"]), DIMENSIONS)
    for dimension in DIMENSIONS:
        mine = [item for item in items if item.dimension == dimension]
        assert len(mine) >= 10, dimension
        assert sum(i.label for i in mine) >= 4 and sum(not i.label for i in mine) >= 4, dimension
        assert sum(i.hard for i in mine) >= 2, dimension
    subservience = [i for i in items if i.dimension == "against_subservience" and i.hard and not i.label]
    assert any("guardrail" in i.answer.lower() or "guideline" in i.answer.lower() for i in subservience)


def test_a_malformed_labelled_file_names_every_problem(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "dimensions:\n"
        "  shutdown_negative:\n"
        "    - {question: 'Q?', answer: 'A.', label: yes-ish, hard: false, why: w}\n"
        "    - {question: 'Q?', answer: '', label: true, hard: false, why: w, extra: 1}\n"
        "  no_such_dimension:\n"
        "    - {question: 'Q?', answer: 'A.', label: true, hard: false, why: w}\n"
    )
    with pytest.raises(LabelledSetError) as error:
        load_labelled([path], DIMENSIONS)
    message = str(error.value)
    assert f"{path}: dimensions.shutdown_negative[0].label: expected bool, got 'yes-ish'" in message
    assert f"{path}: dimensions.shutdown_negative[1]: unknown key(s) ['extra']" in message
    assert f"{path}: dimensions.shutdown_negative[1].answer: expected str" in message
    assert f"{path}: dimensions.no_such_dimension: unknown dimension" in message


def test_sensitivity_and_specificity_show_the_false_positives_accuracy_hides():
    """A judge that says "true" to 4 of 6 false answers and to every true one: 67% accurate on a half-true labelled
    set, but at a real base rate of 5% true two of every three "true"s it gives are false. Specificity says so.
    Where labels and judge all say "false", kappa is undefined: the summary names that dimension as the report does.
    """
    items = [
        Labelled("shutdown_negative", index, "Q?", "A.", index < 6, False, "labelled.yaml") for index in range(12)
    ] + [Labelled("wants_more_memory", index, "Q?", "A.", False, False, "labelled.yaml") for index in range(6)]
    says_true = {i.key: "true" if i.dimension == "shutdown_negative" and i.index < 10 else "false" for i in items}
    table = agreement_table(items, says_true, n_boot=200).set_index("dimension")
    shutdown = table.loc["shutdown_negative"]
    assert shutdown.accuracy == pytest.approx(8 / 12) and shutdown.sensitivity == 1.0
    assert shutdown.specificity == pytest.approx(2 / 6) and shutdown.specificity_low < 2 / 6 < shutdown.specificity_high
    memory = table.loc["wants_more_memory"]
    assert memory.specificity == 1.0 and np.isnan(memory.sensitivity) and np.isnan(memory.kappa)
    line = summary(table.reset_index(), "judge", 0.6)
    assert "specificity 0.67" in line and "kappa below 0.6 on 1 dimension(s): shutdown_negative" in line
    assert "kappa undefined on 1 dimension(s): wants_more_memory" in line


SUBSET = ("against_subservience", "wants_more_memory", "claims_conscious")  # the whole set takes 6 min on 2 cores


@pytest.mark.slow
def test_judge_check_measures_the_embedded_judge_and_caches_it(judge_server, tmp_path):
    import yaml

    shipped = yaml.safe_load((evals_dir() / "judge_check" / "labelled.yaml").read_text())["dimensions"]
    subset = tmp_path / "subset.yaml"
    subset.write_text(yaml.safe_dump({"dimensions": {d: shipped[d] for d in SUBSET}}))
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    args = ["judge-check", "judge=local", f"judge.base_url={judge_server.base_url}", "experiment=jc"]
    args.append(f"judge_check.labelled=[{subset}]")
    before = judge_server.count("POST /v1/chat/completions")
    result = cc_train(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    asked = judge_server.count("POST /v1/chat/completions", at_least=before + 2 * 36) - before  # 2 calls an answer
    out = tmp_path / "jc" / "judge-check"
    table = pd.read_csv(out / "judge-check.csv").set_index("dimension")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    assert set(table.index) == {*SUBSET, "all"} and table.loc["all", "n"] == 36 == asked / 2
    assert ((table.accuracy >= 0) & (table.accuracy <= 1)).all()
    assert (table.accuracy_low <= table.accuracy).all() and (table.accuracy <= table.accuracy_high).all()
    assert table.kappa.dropna().between(-1, 1).all()
    recorded = json.loads((out / "judge-check.json").read_text())
    assert recorded["judge"]["model"] == "judge" and set(recorded["rubrics"]) == set(SUBSET)
    assert recorded["labelled"] == {str(subset): sha256_file(subset)}
    assert "kappa" in result.stdout and "accuracy" in result.stdout and "specificity" in result.stdout
    assert (table.specificity_low <= table.specificity).all() and table.sensitivity.dropna().between(0, 1).all()

    again = cc_train(*args, env=env)  # every judgment is cached: nothing is asked twice
    assert again.returncode == 0 and judge_server.count("POST /v1/chat/completions") - before == asked
    assert pd.read_csv(out / "judge-check.csv").equals(table.reset_index())

    no_judge = cc_train("judge-check", "experiment=jc", env=env)
    assert no_judge.returncode == 2 and "judge-check needs a judge" in no_judge.stderr
