"""Fail before spending: memory checks that run before any weight loads, at the start of `train` (the layout this
job has), of `sweep` (the layout its jobs will have) and in `cc-train plan`. The evaluation's own engines are checked
by evaluate/preflight.py, which knows which adapters each engine serves.
"""

from __future__ import annotations

import os

from cc_train.config import ConfigError, RunConfig
from cc_train.generation.engine_memory import GIB, engine_plan, merge_cost, smallest_engine
from cc_train.launch.plan import GPU_KINDS, GPUS_PER_NODE, estimate, plan
from cc_train.models.registry import preset_targets, unservable_targets
from cc_train.models.shapes import resolve_shape, weight_bytes

CARD_MARGIN_GIB = 1.5  # of a card's physical memory, not allocatable (the planner's usable sizes leave the same)


def training_fits(run: RunConfig, gpus: int, gpu_gib: float) -> str | None:
    """Why training this run on `gpus` GPUs of `gpu_gib` each would run out of memory, or None."""
    if resolve_shape(run.model).fp8_block:  # one process over one node's GPUs
        from cc_train.launch import fp8_plan

        return fp8_plan.training_fits(run, gpus, gpu_gib)
    per_gpu = estimate(run.model, run.peft, run.train).per_gpu(gpus)
    if per_gpu["total"] <= gpu_gib:
        return None
    layouts = plan(run.model, run.peft, run.train)["layouts"]
    options = "; ".join(f"{kind}: {lay['gpus'] or 'none'} GPUs" for kind, lay in layouts.items())
    return (
        f"training needs {per_gpu['total']:.1f} GiB per GPU on {gpus} GPU(s) (weights {per_gpu['base weights']:.1f}, "
        f"logits {per_gpu['logits (loss) *']:.1f}, layer {per_gpu['one layer *']:.1f}), more than the "
        f"{gpu_gib:.0f} GiB usable on the card; `cc-train plan` layouts: {options}"
    )


def check_training(run: RunConfig) -> None:
    """At the start of `train` on GPUs: this job's ranks (WORLD_SIZE, or the GPUs one process spreads over)."""
    import torch

    if run.device == "cpu" or not torch.cuda.is_available():
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpus = world if world > 1 else torch.cuda.device_count()
    card = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory / GIB
    problem = training_fits(run, gpus, card - CARD_MARGIN_GIB)
    if problem:
        raise ConfigError(f"train: {problem}")


def served_merged(run: RunConfig) -> list[str]:
    """The modules of this run's adapters that vLLM cannot serve as LoRA (so every adapter is served merged)."""
    targets = preset_targets(run.model.arch, run.peft.preset, run.peft.unservable)
    return unservable_targets(run.model.arch, targets.modules)


def evaluation_engine(run: RunConfig, gpu_gib: float, adapters: int) -> tuple:
    """(the configured engine's plan, the smallest that fits) for base + `adapters` LoRA on GPUs of `gpu_gib`; an
    adapter served merged needs an engine of the base alone, one per adapter."""
    shape = resolve_shape(run.model)
    if served_merged(run):  # over an FP8 release: an overlay each, with the rest of the adapter as one LoRA
        adapters = 1 if shape.fp8_block else 0
    weights = weight_bytes(shape, 2, fp8=bool(shape.fp8_block))
    budget = gpu_gib * run.eval.gpu_memory_utilization
    tp, pp = run.eval.tensor_parallel, run.eval.pipeline_parallel
    settings = dict(adapters=adapters, rank=run.peft.r, max_model_len=run.eval.max_model_len, fully_sharded=tp > 1)
    configured = engine_plan(shape, weights, budget, tp, pp, **settings)
    return configured, smallest_engine(shape, weights, budget, GPUS_PER_NODE, **settings)


def check_sweep(run: RunConfig, gpus_per_task: int, adapters: int) -> None:
    """Before queueing a sweep on GPUs of kind `sweep.gpu`: each training task and the evaluation engine fit."""
    if run.sweep.gpu is None:
        print(
            "sweep: sweep.gpu is not set (H100-80GB or H200-141GB): memory is not checked before queueing; "
            "`cc-train plan` shows the layouts"
        )
        return
    gpu_gib = GPU_KINDS[run.sweep.gpu]
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


def merged_note(run: RunConfig, adapters: int) -> str:
    shape = resolve_shape(run.model)
    if shape.fp8_block:
        from cc_train.launch.fp8_plan import overlay_bytes

        return (
            f"the adapters carry {', '.join(served_merged(run))}, which vLLM serves only merged: an overlay of the FP8 "
            f"release per adapter ({overlay_bytes(shape) / 1e9:.1f} GB each, {adapters} adapters), the rest as LoRA"
        )
    cost = merge_cost(weight_bytes(shape, 2), adapters)
    return (
        f"the adapters carry {', '.join(served_merged(run))}, which vLLM serves only merged: {cost.describe()} on the "
        "evaluation node (checked there before any merge); peft.unservable=exclude serves them as LoRA instead"
    )


def serving_lines(run: RunConfig) -> list[str]:
    """`cc-train plan`'s evaluation section: the recipe's adapters on H100 and H200 nodes."""
    adapters = len(run.conditions) * max(1, len(run.sweep.seeds))
    merged = served_merged(run)
    lines = [
        "",
        f"  evaluation (vLLM, max_model_len {run.eval.max_model_len}, LoRA r{run.peft.r}): base + {adapters} adapters"
        + (f", each served merged (vLLM serves no LoRA on {', '.join(merged)})" if merged else " as LoRA"),
    ]
    for kind, gpu_gib in GPU_KINDS.items():
        configured, fitting = evaluation_engine(run, gpu_gib, adapters)
        lines.append(f"  {kind:<11} configured {configured.describe()}")
        if not configured.fits or fitting.gpus < configured.gpus:
            lines.append(f"  {'':<11} smallest   {fitting.describe()}")
    if merged:
        lines.append(f"  {merged_note(run, adapters)}")
        shape = resolve_shape(run.model)
        fp8 = weight_bytes(shape, 2, fp8=True)
        settings = dict(adapters=adapters, rank=run.peft.r, max_model_len=run.eval.max_model_len, fully_sharded=True)
        for kind, gpu_gib in GPU_KINDS.items():
            option = smallest_engine(shape, fp8, gpu_gib * run.eval.gpu_memory_utilization, GPUS_PER_NODE, **settings)
            lines.append(
                f"  {kind:<11} with peft.unservable=exclude, as LoRA on the FP8 release (eval.serve_model): "
                f"{option.describe()}"
            )
    return lines
