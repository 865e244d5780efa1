"""`cc-train sweep`: the study as SLURM jobs. One data array over `conditions`, its tasks one after another (the
self-distilled answers they share are generated once, by the first), then one training array over `conditions` x
`sweep.seeds` that starts only after every dataset was built, then one evaluation job (base + every adapter of the
experiment in one engine) after the whole training array succeeded (`--dependency=afterok` each time). All three are
the plain multirun commands, so a sweep can be reproduced, or resumed, by hand; runs whose adapter is complete are
skipped inside their job.

    cc-train sweep recipe=paper/qwen3_30b_a3b hydra/launcher=slurm hydra.launcher.partition=gpu
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
from cc_train.launch.preflight import check_sweep
from cc_train.launch.slurm import SWEEP_ID_ENV, sweeps_dir
from cc_train.pipeline import trained_conditions
from cc_train.train import sft
from cc_train.train.sft import StaleOutputError
from hydra_plugins.cc_train_launcher.submit_and_return import SubmitAndReturnLauncher

SWEPT_KEYS = ("condition=", "seed=", "conditions=", "sweep.")


class SweepError(UserError):
    """A stage submission of the sweep failed; its own output above says why."""


def stage_commands(
    run: RunConfig, task_overrides: list[str], hydra_overrides: list[str], on_slurm: bool = False
) -> tuple[list, list, list]:
    """The `cc-train data -m`, `cc-train train -m` and `cc-train eval -m` argument lists this sweep runs."""
    kept = [o for o in task_overrides if not o.startswith(SWEPT_KEYS)]
    conditions = f"condition={','.join(trained_conditions(run))}"
    one_at_a_time = ["hydra.launcher.array_parallelism=1"] if on_slurm else []  # the shared answers: generated once
    grid = [conditions, f"seed={','.join(map(str, run.sweep.seeds))}"]
    return (
        ["data", "-m", conditions, *kept, *hydra_overrides, *one_at_a_time],
        ["train", "-m", *grid, *kept, *hydra_overrides],
        ["eval", "-m", *kept, *hydra_overrides],
    )


def check_finished_runs(run: RunConfig, cfg: DictConfig) -> None:
    """Before queueing anything: every condition resolves, and every finished adapter of the grid was made from
    the inputs this config gives it (else its job would stop on it later); names what changed."""
    for condition in trained_conditions(run):
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
        adapters = len(trained_conditions(run)) * len(run.sweep.seeds)
        check_sweep(run, gpus_per_task, adapters, launcher.get("mem_gb"))
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith("hydra.mode=")]
    on_slurm = hydra_cfg.launcher._target_ == f"{SubmitAndReturnLauncher.__module__}.{SubmitAndReturnLauncher.__name__}"
    data, train, evaluate = stage_commands(run, list(hydra_cfg.overrides.task), hydra_overrides, on_slurm)
    sweep_id = time.strftime("%Y%m%d-%H%M%S")
    env = {**os.environ, SWEEP_ID_ENV: sweep_id}

    # each stage waits for the one before: on SLURM through afterok, off SLURM the multirun has already finished
    for command, after in ((data, None), (train, "data"), (evaluate, "train")):
        if on_slurm and after:
            record = json.loads((sweeps_dir(run.paths.runs, run.experiment) / f"{sweep_id}_{after}.json").read_text())
            command.append(f"+hydra.launcher.additional_parameters.dependency='afterok:{record['job_id']}'")
        submit(command, env)
    if on_slurm:
        print(f"sweep {sweep_id}: follow it with `cc-train status experiment={run.experiment}`")
    return sweep_id


def submit(arguments: list[str], env: dict) -> None:
    print("sweep: cc-train " + " ".join(arguments), flush=True)
    result = subprocess.run([sys.executable, "-m", "cc_train", *arguments], env=env)
    if result.returncode != 0:
        raise SweepError(f"`cc-train {' '.join(arguments[:2])} ...` exited with status {result.returncode}")
