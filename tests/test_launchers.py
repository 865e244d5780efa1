"""One node per run, and nothing shipped that a CPU test cannot hold to it: the multi-node ZeRO-3 path is gone (its
launcher went through pdsh, its loading built the whole model per rank, its audit read emptied parameters, its
evaluation needed a Ray cluster nobody started). What remains refuses clearly: a DeepSpeed launch, a Ray engine, a
multi-node train.sbatch, and an FP8 release under a launcher of several processes, each naming the one-node recipe."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, compose_run

from cc_train.config import ConfigError
from cc_train.models.loading import load_model
from cc_train.train.sft import refuse_deepspeed


def test_a_deepspeed_launch_is_refused_before_anything_loads(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a DeepSpeed config
    with pytest.raises(ConfigError, match=r"does not support.*recipe=paper/deepseek_v3_1"):
        refuse_deepspeed()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    refuse_deepspeed()


def test_a_vllm_engine_over_several_nodes_is_refused_with_the_one_node_recipe():
    with pytest.raises(ConfigError, match=r"eval.distributed_executor_backend='ray'.*recipe=paper/deepseek_v3_1"):
        compose_run("recipe=paper/deepseek_v3_1", "eval.distributed_executor_backend=ray")
    compose_run("recipe=paper/deepseek_v3_1", "eval.distributed_executor_backend=mp")  # one node: fine


def test_train_sbatch_refuses_more_than_one_node_before_starting_anything(tmp_path):
    env = {**os.environ, "SLURM_NNODES": "2", "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(tmp_path), "PATH": "/bin"}
    result = subprocess.run(
        ["bash", str(REPO / "slurm/train.sbatch"), "recipe=paper/deepseek_v3_1"], env=env, capture_output=True,
        text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert (
        result.returncode == 2
        and "submit with --nodes=1" in result.stderr
        and "ACCELERATE_CONFIG=none" in (result.stderr)
    )
    assert not list(tmp_path.iterdir())  # no stop file, no srun: nothing started


def test_an_fp8_release_under_a_multi_process_launch_is_refused(monkeypatch, tiny_checkpoints, tmp_path):
    from pathlib import Path

    from rehearsal.stand_ins import fp8_release

    release = fp8_release(Path(tiny_checkpoints["deepseek_v3"]), tmp_path / "fp8", block=32)
    run, _ = compose_run("model=tiny_deepseek_v3", f"model.path={release}", "model.build.kind=none")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match=r"trains in one process.*ACCELERATE_CONFIG=none"):
        load_model(run.model, "cpu")


def test_nothing_shipped_names_deepspeed_or_ray():
    shipped = [*REPO.glob("recipes/**/*.yaml"), *REPO.glob("conf/**/*.yaml"), *REPO.glob("slurm/**/*")]
    shipped += [REPO / "pyproject.toml", REPO / "Dockerfile", *REPO.glob("constraints/*.txt")]
    for path in shipped:
        if path.is_file():
            text = path.read_text().lower()
            assert "deepspeed" not in text and "zero3" not in text and "ray cluster" not in text, path
    assert not (REPO / "slurm/accelerate/deepspeed_zero3.yaml").exists()
