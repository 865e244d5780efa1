"""W&B runs: one per training or evaluation job, grouped by experiment. No API key ever enters a config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cc_train.config import RunConfig, Tracker


@contextmanager
def tracked(run: RunConfig, cfg: DictConfig, job_type: str, name: str, directory: Path) -> Iterator[object | None]:
    """A W&B run for this job when `tracking=wandb` (offline when WANDB_MODE=offline), else None."""
    if run.tracking.backend == Tracker.none:
        yield None
        return
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    wandb_run = wandb.init(
        project=run.tracking.project,
        entity=run.tracking.entity,
        group=run.experiment,
        job_type=job_type,
        name=name,
        dir=str(directory),
        config=OmegaConf.to_container(cfg, resolve=True),
        mode=os.environ.get("WANDB_MODE") or run.tracking.mode,
        reinit="finish_previous",
        tags=[run.condition.value, f"seed{run.seed}", run.model.name],
    )
    try:
        yield wandb_run
    finally:
        wandb_run.finish()


def log_adapter(wandb_run, adapter_dir: Path, name: str, metadata: dict) -> None:
    import wandb

    artifact = wandb.Artifact(name=name, type="lora-adapter", metadata=metadata)
    artifact.add_dir(str(adapter_dir))
    wandb_run.log_artifact(artifact)
