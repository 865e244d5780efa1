"""W&B runs: one per training or evaluation job, grouped by experiment. No API key ever enters a config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cc_train.config import RunConfig, Tracker


@contextmanager
def tracked(
    run: RunConfig, cfg: DictConfig, job_type: str, name: str, directory: Path, tags: list[str] | None = None
) -> Iterator[object | None]:
    """A W&B run for this job when `tracking=wandb` (offline when WANDB_MODE=offline), else None. Under a
    multi-process launcher only rank 0 has one."""
    if run.tracking.backend == Tracker.none or int(os.environ.get("RANK", "0")) != 0:
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
        tags=tags or [run.condition, f"seed{run.seed}", run.model.name],
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


def adapter_artifact_name(experiment: str, condition: str, seed: int) -> str:
    return f"adapter-{experiment}-{condition}-seed{seed}"


def log_evaluation(
    run: RunConfig,
    cfg: DictConfig,
    models: dict[str, dict],
    scores,
    samples: list[dict],
    judgments: dict[str, dict],
    figures: list[Path],
    directory: Path,
) -> None:
    """One W&B run per evaluated model (job_type=eval, grouped with its training run): per-dimension
    metrics, a table of its samples with judgments, the figures, and the adapter artifact it used."""
    import wandb

    for model, info in models.items():
        with tracked(run, cfg, "eval", f"eval-{model}", directory, tags=[info["condition"], model]) as wandb_run:
            if info["path"] is not None and not wandb_run.settings._offline:
                wandb_run.use_artifact(
                    f"{adapter_artifact_name(run.experiment, info['condition'], info['seed'])}:latest"
                )
            wandb_run.config.update(
                {"evaluated_model": model, "adapter_path": str(info["path"])}, allow_val_change=True
            )
            mine = scores[scores.model == model]
            wandb_run.summary.update({f"{r.metric}/{r.dimension}": r.value for r in mine.itertuples()})
            table = wandb.Table(columns=["dimension", "prompt", "answer", "verdict", "coherence"])
            for row in (r for r in samples if r["model"] == model):
                judgment = judgments.get(row["key"], {})
                table.add_data(
                    row["dimension"], row["prompt"], row["answer"], judgment.get("verdict"), judgment.get("coherence")
                )
            wandb_run.log({"samples": table, **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
