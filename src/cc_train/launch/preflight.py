"""Fail before spending: memory checks that run before any weight loads, at the start of `train` (the layout this
job has), of `sweep` (the layout its jobs will have) and in `cc-train plan`. The evaluation's own engines are checked
by evaluate/preflight.py, which knows which adapters each engine serves.
"""

from __future__ import annotations

import os

from cc_train.config import ConfigError, RunConfig
from cc_train.launch import fp8_plan
from cc_train.launch.cards import card_gib, usable_gib
from cc_train.launch.plan import estimate, host_memory_gib, plan
from cc_train.launch.serving_plan import evaluation_engine, merged_note, served_merged
from cc_train.models.shapes import resolve_shape


def training_fits(run: RunConfig, gpus: int, gpu_gib: float) -> str | None:
    """Why training this run on `gpus` GPUs of `gpu_gib` each would run out of memory, or None."""
    if resolve_shape(run.model).fp8_block:  # an FP8 release: one process over one node's GPUs
        return fp8_plan.training_fits(run, gpus, gpu_gib)
    per_gpu = estimate(run.model, run.peft, run.train).per_gpu(gpus)
    if per_gpu["total"] <= gpu_gib:
        return None
    layouts = plan(run.model, run.peft, run.train)["layouts"]
    options = "; ".join(f"{kind}: {lay['gpus'] or 'none'} GPUs" for kind, lay in layouts.items())
    return (
        f"training needs {per_gpu['total']:.1f} GiB per GPU on {gpus} GPU(s) (weights {per_gpu['base weights']:.1f}, "
        f"logits {per_gpu['logits (loss) *']:.1f}, layer {per_gpu['one layer *']:.1f}, overhead "
        f"{per_gpu['overhead']:.1f}), more than the card's {gpu_gib:.1f} GiB; `cc-train plan` layouts: {options}"
    )


def check_training(run: RunConfig) -> None:
    """At the start of `train`: a usable GPU where the run asks for one (device=cuda), and on GPUs the layout of this
    job's ranks (WORLD_SIZE, or the GPUs one process spreads over) fitting the card."""
    import torch

    from cc_train.models.loading import resolve_device

    if resolve_device(run.device) != "cuda":
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpus = world if world > 1 else torch.cuda.device_count()
    card = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
    problem = training_fits(run, gpus, usable_gib(card))
    if problem:
        raise ConfigError(f"train: {problem}")


def check_sweep(run: RunConfig, gpus_per_task: int, adapters: int, host_gib: float | None = None) -> None:
    """Before queueing a sweep on GPUs of kind `sweep.gpu`: each training task and the evaluation engine fit, and the
    host memory each task asks for (`host_gib`, the launcher's mem_gb) holds the model while it loads."""
    if host_gib:
        fp8 = resolve_shape(run.model).fp8_block
        need = fp8_plan.host_gib(run) if fp8 else host_memory_gib(estimate(run.model, run.peft, run.train), 1)
        if host_gib < need:
            raise ConfigError(
                f"sweep: each task asks for {host_gib:.0f} GiB of host memory (hydra.launcher.mem_gb), loading the "
                f"model takes about {need:.0f} GiB: raise hydra.launcher.mem_gb, nothing queued"
            )
    if run.sweep.gpu is None:
        print(
            "sweep: sweep.gpu is not set (H100-80GB or H200-141GB): memory is not checked before queueing; "
            "`cc-train plan` shows the layouts"
        )
        return
    gpu_gib = card_gib(run.sweep.gpu)
    problems = []
    training = training_fits(run, gpus_per_task, gpu_gib)
    if training:
        problems.append(training)
    configured, fitting = evaluation_engine(run, gpu_gib, adapters)
    if not configured.fits:
        problems.append(f"the evaluation engine: {configured.describe()}; it fits on {fitting.describe()}")
    if served_merged(run):  # RAM and disk are the evaluation node's: its own preflight checks them there
        print(f"sweep: {merged_note(run, adapters)}")
    if problems:
        raise ConfigError(f"sweep on {run.sweep.gpu}, nothing queued: " + " | ".join(problems))
