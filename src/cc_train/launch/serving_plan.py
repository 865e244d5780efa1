"""The evaluation's vLLM engines planned for a recipe on H100 and H200 nodes, before any job exists: `cc-train plan`
prints them and `cc-train sweep` refuses an engine that cannot fit (launch/preflight.py). The engine arithmetic is
generation/engine_memory.py's; a card's memory is launch/cards.py's.
"""

from __future__ import annotations

from cc_train.config import RunConfig
from cc_train.generation.engine_memory import EnginePlan, engine_plan, merge_cost, smallest_engine
from cc_train.launch.cards import CARDS, GPUS_PER_NODE, card_gib
from cc_train.models.registry import preset_targets, unservable_targets
from cc_train.models.shapes import Shape, resolve_shape, weight_bytes


def served_merged(run: RunConfig) -> list[str]:
    """The modules of this run's adapters that vLLM cannot serve as LoRA (so every adapter is served merged)."""
    targets = preset_targets(run.model.arch, run.peft.preset, run.peft.unservable)
    return unservable_targets(run.model.arch, targets.modules)


def evaluation_engine(run: RunConfig, gpu_gib: float, adapters: int) -> tuple[EnginePlan, EnginePlan]:
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


def overlay_bytes(s: Shape) -> float:
    """One adapter's overlay of an FP8 release (generation/fp8_overlay.py): kv_b_proj of every layer and lm_head,
    merged, in BF16."""
    kv_b = s.heads * (s.qk_nope_head_dim + s.v_head_dim) * s.kv_lora_rank
    return 2 * (s.layers * kv_b + s.vocab * s.hidden)


def merged_note(run: RunConfig, adapters: int) -> str:
    shape = resolve_shape(run.model)
    if shape.fp8_block:
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
    for kind in CARDS:
        configured, fitting = evaluation_engine(run, card_gib(kind), adapters)
        lines.append(f"  {kind:<11} configured {configured.describe()}")
        if not configured.fits or fitting.gpus < configured.gpus:
            lines.append(f"  {'':<11} smallest   {fitting.describe()}")
    if merged:
        lines.append(f"  {merged_note(run, adapters)}")
        shape = resolve_shape(run.model)
        fp8 = weight_bytes(shape, 2, fp8=True)
        settings = dict(adapters=adapters, rank=run.peft.r, max_model_len=run.eval.max_model_len, fully_sharded=True)
        for kind in CARDS:
            budget = card_gib(kind) * run.eval.gpu_memory_utilization
            option = smallest_engine(shape, fp8, budget, GPUS_PER_NODE, **settings)
            lines.append(
                f"  {kind:<11} with peft.unservable=exclude, as LoRA on the FP8 release (eval.serve_model): "
                f"{option.describe()}"
            )
    return lines
