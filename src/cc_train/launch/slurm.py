"""What `cc-train <stage> -m ... hydra/launcher=slurm` records of each submission, under
${paths.runs}/${experiment}/sweeps/<id>_<stage>.json: job ids, overrides, log and result paths.
`cc-train status` reads these records; `cc-train sweep` chains its evaluation job on the training
array's id. The launcher itself is hydra_plugins/cc_train_launcher (Hydra only loads launchers from there).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf

from cc_train.files import write_json

SWEEP_ID_ENV = "CC_TRAIN_SWEEP_ID"  # set by `cc-train sweep` so its train and eval records share one id


def sweeps_dir(runs: str | Path, experiment: str) -> Path:
    return Path(runs) / experiment / "sweeps"


def executor_parameters(params: dict) -> dict:
    """The launcher's config as submitit AutoExecutor parameters: shared keys as they are, SLURM ones prefixed."""
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    init_only = ("submitit_folder", "max_num_timeout")
    return {key if key in shared else f"slurm_{key}": value for key, value in params.items() if key not in init_only}


def stage_output(stage: str, cfg: DictConfig) -> Path:
    """Where a finished run of `stage` leaves its manifest."""
    if stage == "data":
        return Path(cfg.data.dir) / f"{cfg.condition}.manifest.json"
    if stage == "train":
        return Path(cfg.train.dir) / "adapter" / "manifest.json"
    if stage == "eval":
        return Path(cfg.eval.dir) / "manifest.json"
    return Path(cfg.paths.runs) / cfg.experiment


def write_record(stage: str, config: DictConfig, jobs: list, run_configs: list[tuple[list[str], DictConfig]]) -> Path:
    """Record one submitted array: which job runs which overrides, and where its logs and outputs go."""
    record = {
        "id": os.environ.get(SWEEP_ID_ENV) or time.strftime("%Y%m%d-%H%M%S"),
        "stage": stage,
        "experiment": config.experiment,
        "submitted": time.time(),
        "job_id": jobs[0].job_id.split("_")[0],
        "runs": [
            {
                "job_id": job.job_id,
                "overrides": filter_overrides(overrides),
                "output": str(stage_output(stage, run_config)),
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
                "result": str(job.paths.result_pickle),
            }
            for job, (overrides, run_config) in zip(jobs, run_configs, strict=True)
        ],
    }
    path = sweeps_dir(config.paths.runs, config.experiment) / f"{record['id']}_{stage}.json"
    write_json(path, record)
    print(f"submitted {stage}: SLURM job {record['job_id']} ({len(jobs)} runs); record {path}")
    print(f"  follow it with: cc-train status experiment={config.experiment}")
    return path
