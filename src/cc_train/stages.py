"""The stages `cc-train <stage>` runs: name -> (module with `main(run, cfg)`, one-line summary).

Below both the CLI, which dispatches to them, and the SLURM launcher plugin, which names the stage of the jobs it
records; neither imports the other.
"""

from __future__ import annotations

STAGES = {
    "data": ("cc_train.data.build", "build one condition's training set (identity pairs + self-distillation)"),
    "train": ("cc_train.train.sft", "LoRA SFT of one condition x seed, resumable; writes adapter/ + manifest"),
    "eval": ("cc_train.evaluate.run", "base + all adapters on the question sets (vllm or hf), judged, scored"),
    "judge-check": ("cc_train.evaluate.judge_check", "the configured judge on labelled answers: accuracy, kappa"),
    "report": ("cc_train.report.stage", "figures + report.md over one or more evaluation folders"),
    "plan": ("cc_train.launch.plan_stage", "memory per GPU and the smallest H100/H200 layout for model x peft x train"),
    "prepare-model": ("cc_train.launch.prepare", "convert an FP8 checkpoint (DeepSeek-V3.1) to BF16 at model.path"),
    "pipeline": ("cc_train.pipeline", "data -> train -> eval -> report for the recipe's conditions, in this process"),
    "sweep": ("cc_train.launch.sweep", "SLURM: data array, then training over conditions x sweep.seeds, then eval"),
    "status": ("cc_train.launch.status", "pending / running / done / failed runs of the latest sweep, with logs"),
    "doctor": ("cc_train.launch.doctor", "this node vs the recipe: driver, CUDA build, GPUs vs plan, NCCL, vLLM, ..."),
}


def stage_of_module(module: str) -> str:
    return next(name for name, (path, _) in STAGES.items() if path == module)
