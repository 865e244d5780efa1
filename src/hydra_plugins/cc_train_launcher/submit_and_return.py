"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, except that `launch` returns once the
array is queued (the plugin's own waits for every result; `wait: true` keeps that) and records the
submission for `cc-train status` and `cc-train sweep`. Jobs run exactly as the plugin runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import MISSING


@dataclass
class SubmitAndReturnConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.cc_train_launcher.submit_and_return.SubmitAndReturnLauncher"
    wait: bool = MISSING  # true: block until every job has finished


class SubmitAndReturnLauncher(SlurmLauncher):
    def __init__(self, wait: bool, **params) -> None:
        super().__init__(**params)
        self.wait = wait

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from cc_train.launch.slurm import executor_parameters, write_record
        from cc_train.stages import stage_of_module

        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        executor.update_parameters(**executor_parameters(self.params))
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        arguments = [
            (list(overrides), "hydra.sweep.dir", initial_job_idx + index, f"job_id_for_{index}", Singleton.get_state())
            for index, overrides in enumerate(job_overrides)
        ]
        jobs = executor.map_array(self, *zip(*arguments, strict=True))

        loader = self.hydra_context.config_loader
        run_configs = [(list(o), loader.load_sweep_config(self.config, list(o))) for o in job_overrides]
        write_record(stage_of_module(self.task_function.__module__), self.config, jobs, run_configs)
        if self.wait:
            return [job.results()[0] for job in jobs]
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=None) for o in job_overrides]


def register() -> None:
    """Make `hydra/launcher=cc_slurm` known, also where Hydra's plugin scan misses an editable install."""
    ConfigStore.instance().store(group="hydra/launcher", name="cc_slurm", node=SubmitAndReturnConf)
    Plugins.instance().register(SubmitAndReturnLauncher)
