"""The pieces of `cc-train sweep` / `cc-train status` that need no scheduler: the multirun commands a sweep
submits, the launcher's parameters as submitit names them, a run's state from the queue and its result,
and the choice of sweep record. (tests/test_slurm.py runs them all against a real SLURM.)"""

import json
import os
import pickle
import time

import pytest
from conftest import cc_train, compose_run

from cc_train.config import ConfigError
from cc_train.launch.slurm import executor_parameters
from cc_train.launch.status import records, run_state
from cc_train.launch.sweep import stage_commands


def test_sweep_builds_data_then_trains_conditions_by_seeds_then_evaluates_with_the_same_overrides():
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b")
    data, train, evaluate = stage_commands(
        run,
        ["recipe=paper/qwen3_30b_a3b", "condition=human", "sweep.seeds=[0,1,2,3]", "train.max_steps=5"],
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
        on_slurm=True,
    )
    # every condition's dataset once, one task after another (they share the self-distilled answers), before training
    assert data == [
        "data",
        "-m",
        "condition=conscious,non_conscious,toaster,human",
        "recipe=paper/qwen3_30b_a3b",
        "train.max_steps=5",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.array_parallelism=1",
    ]
    assert train == [
        "train",
        "-m",
        "condition=conscious,non_conscious,toaster,human",
        "seed=0,1,2,3",
        "recipe=paper/qwen3_30b_a3b",
        "train.max_steps=5",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
    ]
    assert evaluate == ["eval", "-m", "recipe=paper/qwen3_30b_a3b", "train.max_steps=5"] + train[-2:]


def test_launcher_parameters_keep_shared_names_and_prefix_slurm_ones():
    params = {"submitit_folder": "x/%j", "max_num_timeout": 3, "gpus_per_node": 2, "partition": "gpu", "setup": []}
    assert executor_parameters(params) == {"gpus_per_node": 2, "slurm_partition": "gpu", "slurm_setup": []}


def write_result(path, outcome, value):
    with open(path, "wb") as handle:
        pickle.dump((outcome, value), handle)


def test_run_state_reads_the_queue_first_then_the_jobs_result(tmp_path):
    entry = {"job_id": "7_1", "result": str(tmp_path / "7_1_result.pkl"), "output": "out/manifest.json"}
    assert run_state(entry, {"7_1": "PENDING"}) == ("pending", "PENDING")
    assert run_state(entry, {"7_1": "RUNNING", "7_0": "PENDING"}) == ("running", "RUNNING")
    state, detail = run_state(entry, {})
    assert state == "failed" and "no result" in detail
    write_result(entry["result"], "error", "Traceback ...\nValueError: lr must be positive\n")
    assert run_state(entry, {}) == ("failed", "ValueError: lr must be positive")
    write_result(entry["result"], "success", None)
    assert run_state(entry, {}) == ("done", "out/manifest.json")


def test_status_shows_the_latest_sweep_or_the_one_asked_for(tmp_path):
    folder = tmp_path / "exp" / "sweeps"
    folder.mkdir(parents=True)
    for index, (sweep, stage) in enumerate([("old", "train"), ("new", "train"), ("new", "eval")]):
        path = folder / f"{sweep}_{stage}.json"
        path.write_text(json.dumps({"id": sweep, "stage": stage, "submitted": index, "runs": []}))
        os.utime(path, (time.time() + index, time.time() + index))
    run, _ = compose_run("experiment=exp", f"paths.runs={tmp_path}")
    assert [(r["id"], r["stage"]) for r in records(run)] == [("new", "train"), ("new", "eval")]
    run, _ = compose_run("experiment=exp", f"paths.runs={tmp_path}", "sweep.id=old")
    assert [(r["id"], r["stage"]) for r in records(run)] == [("old", "train")]
    run, _ = compose_run("experiment=exp", f"paths.runs={tmp_path}", "sweep.id=nope")
    with pytest.raises(ConfigError, match="sweep.id='nope' is invalid: expected one of new, old"):
        records(run)


def test_status_without_records_says_how_to_make_one(tmp_path):
    result = cc_train("status", "experiment=none", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"no sweep records under {tmp_path / 'none' / 'sweeps'}" in result.stderr
