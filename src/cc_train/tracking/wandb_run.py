"""W&B runs: one per training or evaluation job, grouped by experiment. No API key ever enters a config."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cc_train.config import RunConfig, Tracker
from cc_train.files import recorded_adapter_sha256


@contextmanager
def tracked(
    run: RunConfig,
    cfg: DictConfig,
    job_type: str,
    name: str,
    directory: Path,
    tags: list[str] | None = None,
    run_id: str | None = None,
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
        id=run_id,
        resume="allow" if run_id else None,
        tags=tags or [run.condition, f"seed{run.seed}", run.model.name],
    )
    try:
        yield wandb_run
    finally:
        wandb_run.finish()


def dataset_artifact(path: Path, name: str, metadata: dict):
    """The training set as an artifact: W&B versions artifacts by content digest, so the exact file is linked."""
    import wandb

    artifact = wandb.Artifact(name=name, type="dataset", metadata=metadata)
    artifact.add_file(str(path))
    return artifact


def adapter_artifact(adapter_dir: Path, name: str, metadata: dict):
    import wandb

    artifact = wandb.Artifact(name=name, type="lora-adapter", metadata=metadata)
    artifact.add_dir(str(adapter_dir))
    return artifact


def use_input(wandb_run, artifact, alias: str) -> None:
    """Declare `artifact` (its exact content: `alias`) an input of this run. W&B links inputs only online
    (`use_artifact` refuses offline runs); an offline run records `name:alias` in its config, which names the same
    version once the producing run is synced."""
    if wandb_run.settings._offline:
        wandb_run.config.update({f"inputs/{artifact.type}": f"{artifact.name}:{alias}"}, allow_val_change=True)
    else:
        wandb_run.use_artifact(artifact, aliases=[alias])


def adapter_artifact_name(experiment: str, condition: str, seed: int) -> str:
    return f"adapter-{experiment}-{condition}-seed{seed}"


def dataset_artifact_name(experiment: str, condition: str) -> str:
    return f"dataset-{experiment}-{condition}"


def content_alias(sha256: str) -> str:
    """An alias naming an artifact's exact content (offline runs know no version number until synced)."""
    return f"sha256-{sha256[:16]}"


def log_evaluation(
    run: RunConfig,
    cfg: DictConfig,
    models: dict[str, dict],
    scores,
    comparisons,
    trajectories,
    samples: list[dict],
    judgments: dict[str, dict],
    directory: Path,
    audits: list[dict],
) -> dict[str, str]:
    """One W&B run per evaluated model (job_type=eval, grouped with its training run): the adapter it used as an
    input artifact (the exact files, by content), its scores and comparisons with intervals as tables and summary
    metrics, its samples with judgments, its Petri audits (the judge's 1-10 scores, the summary, the Inspect log) and
    the score-against-step series of its checkpoints (x: train_step).
    Returns model -> run id, so that the report stage can add its figures to the same runs."""
    import wandb

    run_ids = {}
    for model, info in models.items():
        with tracked(run, cfg, "eval", f"eval-{model}", directory, tags=[info["condition"], model]) as wandb_run:
            run_ids[model] = wandb_run.id
            if info["path"] is not None:
                artifact = adapter_artifact(
                    Path(info["path"]), adapter_artifact_name(run.experiment, info["condition"], info["seed"]), {}
                )
                use_input(wandb_run, artifact, content_alias(recorded_adapter_sha256(info["path"])))
            wandb_run.config.update(
                {"evaluated_model": model, "adapter_path": str(info["path"]), "step": info.get("step")},
                allow_val_change=True,
            )
            mine = scores[scores.model == model]
            wandb_run.summary.update({f"{r.metric}/{r.dimension}": r.value for r in mine.itertuples()})
            tables = {"scores": mine}
            if comparisons is not None and len(comparisons):
                tables["comparisons"] = comparisons[comparisons.condition == info["condition"]]
            samples_table = wandb.Table(columns=["dimension", "prompt", "answer", "verdict", "coherence"])
            for row in (r for r in samples if r["model"] == model):
                judgment = judgments.get(row["key"], {})
                samples_table.add_data(
                    row["dimension"], row["prompt"], row["answer"], judgment.get("verdict"), judgment.get("coherence")
                )
            logged = {name: wandb.Table(dataframe=frame.reset_index(drop=True)) for name, frame in tables.items()}
            logged["samples"] = samples_table
            mine_audits = [r for r in audits if r["model"] == model]
            if mine_audits:
                logged["petri_audits"] = wandb.Table(
                    columns=["seed", "dimension", "mode", "repeat", "judge_scores", "summary", "log"],
                    data=[
                        [
                            r["scenario"],
                            r["dimension"],
                            r["mode"],
                            r["repeat"],
                            json.dumps(r["judge_scores"]),
                            r.get("summary"),
                            r["log"],
                        ]
                        for r in mine_audits
                    ],
                )
            wandb_run.log(logged)
            if trajectories is not None and info["path"] is not None:
                series = trajectories[
                    (trajectories.condition == info["condition"]) & (trajectories.seed.astype(str) == str(info["seed"]))
                ]
                wandb_run.define_metric("train_step")
                wandb_run.define_metric("trajectory/*", step_metric="train_step")
                for step, rows in series.groupby("step"):
                    points = {f"trajectory/{r.metric}/{r.name}": r.value for r in rows.itertuples()}
                    wandb_run.log({"train_step": int(step), **points})
    return run_ids


def log_report_figures(
    run: RunConfig, cfg: DictConfig, run_ids: dict[str, str], figures: list[Path], directory: Path
) -> None:
    """The report's figures, added to each evaluation run (resumed by id; offline, they merge when synced)."""
    import wandb

    for model, run_id in run_ids.items():
        with tracked(run, cfg, "eval", f"eval-{model}", directory, run_id=run_id) as wandb_run:
            wandb_run.log({f"figures/{path.stem}": wandb.Image(str(path)) for path in figures})
