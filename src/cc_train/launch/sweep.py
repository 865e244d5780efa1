"""`cc-train sweep`: the study as SLURM jobs, each stage starting only once the one before it succeeded
(`--dependency=afterok`):
  1. one data array over `conditions`, its tasks one after another (the self-distilled answers they share are
     generated once, by the first);
  2. one training array over `conditions` x `sweep.seeds`;
  3. the evaluation as an array of `sweep.eval_shards` jobs (`eval.shard=I/N`), each running its node's GPUs as
     data-parallel engines (`eval.engines=auto`) on its share of the targets;
  4. one merge job (`eval.shard=merge`: every shard's rows by key -> scores.csv, comparisons.csv), no GPU;
  5. the report job, no GPU.
Each is a plain multirun command, printed as it is queued, so a sweep can be reproduced or resumed by hand; runs
whose adapter is complete are skipped inside their job, and a rerun shard redoes only its missing rows.

    cc-train sweep recipe=paper/qwen3_30b_a3b hydra/launcher=slurm hydra.launcher.partition=gpu sweep.eval_shards=4
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cc_train.config import ConfigError, RunConfig, to_run_config
from cc_train.data import build as data_build
from cc_train.errors import UserError
from cc_train.inputs.conditions import trained_conditions
from cc_train.launch.preflight import check_sweep
from cc_train.launch.slurm import SWEEP_ID_ENV, sweeps_dir
from cc_train.train import sft
from cc_train.train.sft import StaleOutputError
from hydra_plugins.cc_train_launcher.submit_and_return import SubmitAndReturnLauncher

SWEPT_KEYS = ("condition=", "seed=", "conditions=", "sweep.")
EVAL_PLACEMENT = ("eval.shard=", "eval.engine=")  # each evaluation job's own


class SweepError(UserError):
    """A stage submission of the sweep failed; its own output above says why."""


def stage_commands(
    run: RunConfig, task_overrides: list[str], hydra_overrides: list[str], on_slurm: bool = False
) -> dict[str, list]:
    """The multirun argument lists this sweep runs, by record name: `data`, `train`, `eval` (the shards),
    `eval-merge`, `report`. On SLURM the evaluation jobs get sweep.eval_gpus_per_node (when set) and the merge and
    report jobs no GPU."""
    kept = [o for o in task_overrides if not o.startswith(SWEPT_KEYS) and not o.startswith(EVAL_PLACEMENT)]
    conditions = f"condition={','.join(trained_conditions(run.conditions, run.condition_dirs))}"
    one_at_a_time = ["hydra.launcher.array_parallelism=1"] if on_slurm else []  # the shared answers: generated once
    grid = [conditions, f"seed={','.join(map(str, run.sweep.seeds))}"]
    count = run.sweep.eval_shards
    shards = f"eval.shard={','.join(f'{index}/{count}' for index in range(1, count + 1))}"
    gpus = run.sweep.eval_gpus_per_node
    on_gpus = [f"hydra.launcher.gpus_per_node={gpus}"] if on_slurm and gpus is not None else []
    no_gpus = ["hydra.launcher.gpus_per_node=0"] if on_slurm else []
    return {
        "data": ["data", "-m", conditions, *kept, *hydra_overrides, *one_at_a_time],
        "train": ["train", "-m", *grid, *kept, *hydra_overrides],
        "eval": ["eval", "-m", shards, *kept, *hydra_overrides, *on_gpus],
        "eval-merge": ["eval", "-m", "eval.shard=merge", *kept, *hydra_overrides, *no_gpus],
        "report": ["report", "-m", *kept, *hydra_overrides, *no_gpus],
    }


def check_finished_runs(run: RunConfig, cfg: DictConfig) -> None:
    """Before queueing anything: every condition resolves, and every finished adapter of the grid was made from
    the inputs this config gives it (else its job would stop on it later); names what changed."""
    for condition in trained_conditions(run.conditions, run.condition_dirs):
        for seed in run.sweep.seeds:
            task_cfg = cfg.copy()
            with open_dict(task_cfg):
                task_cfg.condition, task_cfg.seed = condition, seed
            task = to_run_config(task_cfg)
            changed = data_build.stale_keys(task)  # also fails here on an undefined condition
            if not sft.is_complete(task):
                continue
            out = sft.adapter_dir(task)
            if changed:
                raise StaleOutputError(
                    f"{out} was trained on a dataset whose inputs changed since ({'; '.join(changed)}). Delete "
                    f"{task.train.dir} to train again with this config, or choose another experiment=."
                )
            if changed is not None:
                recorded = json.loads((out / "manifest.json").read_text()).get("fingerprint", {})
                sft.refuse_if_stale(recorded, sft.fingerprint(task, data_build.dataset_path(task)), out, task)


def main(run: RunConfig, cfg: DictConfig) -> str:
    if not run.conditions or not run.sweep.seeds:
        raise ConfigError("conditions and sweep.seeds must each name at least one value")
    check_finished_runs(run, cfg)
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.launcher
    gpus_per_task = int(launcher.get("nodes", 1) or 1) * int(launcher.get("gpus_per_node", 0) or 0)
    if gpus_per_task:
        adapters = len(trained_conditions(run.conditions, run.condition_dirs)) * len(run.sweep.seeds)
        check_sweep(run, gpus_per_task, adapters, launcher.get("mem_gb"))
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith("hydra.mode=")]
    on_slurm = hydra_cfg.launcher._target_ == f"{SubmitAndReturnLauncher.__module__}.{SubmitAndReturnLauncher.__name__}"
    commands = stage_commands(run, list(hydra_cfg.overrides.task), hydra_overrides, on_slurm)
    sweep_id = time.strftime("%Y%m%d-%H%M%S")
    env = {**os.environ, SWEEP_ID_ENV: sweep_id}
    # each stage waits for the one before: on SLURM through afterok, off SLURM the multirun has already finished
    after = None
    for stage, command in commands.items():
        if after:
            command.append(f"+hydra.launcher.additional_parameters.dependency='afterok:{after}'")
        submit(command, env)
        if on_slurm:
            after = json.loads((sweeps_dir(run.paths.runs, run.experiment) / f"{sweep_id}_{stage}.json").read_text())
            after = after["job_id"]
    if on_slurm:
        print(f"sweep {sweep_id}: follow it with `cc-train status experiment={run.experiment}`")
    return sweep_id


def submit(arguments: list[str], env: dict) -> None:
    print("sweep: cc-train " + " ".join(arguments), flush=True)
    result = subprocess.run([sys.executable, "-m", "cc_train", *arguments], env=env)
    if result.returncode != 0:
        raise SweepError(f"`cc-train {' '.join(arguments[:2])} ...` exited with status {result.returncode}")
