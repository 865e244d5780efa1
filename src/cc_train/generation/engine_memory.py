"""Memory of a vLLM evaluation engine, planned before it starts: the base weights per GPU, the LoRA slots vLLM
preallocates, what is left for the KV cache, how many LoRA slots fit (`max_loras`), and what serving an adapter
merged into a copy of the base costs in CPU RAM and disk.

LoRA slots follow vLLM 0.32's own layer code (vllm/lora/layers/): at engine start every LoRA-capable module gets, per
slot, A and B buffers at `max_lora_rank` in the model dtype, whatever the adapters' ranks:
  column-parallel (in -> out):      A  r/f x in          B  out/tp x r
  merged column / QKV (slices):     A  slices x r/f x in  B  sum(out_i / tp) x r   (KV heads at least one per rank)
  row-parallel (in -> out):         A  r x in/tp         B  out/f x r
  replicated (the router; DeepSeek's fused q_a + kv_a: one A per slice):  A  r x in    B  out x r
  fused MoE (FusedMoEWithLoRA):     E x r x (3 H / f + 3 I / tp)   (gate and up A, B; down A, B)
  embeddings and lm_head (Qwen3, Llama; not DeepSeek):    (vocab + H) x r each, not sharded
with f = tp under `fully_sharded_loras`, else 1. For Qwen3-30B-A3B at r16 in bf16 that is 1.58 GiB per slot on one
GPU, 1.37 at tp 2 and 0.80 at tp 2 fully sharded: the MoE layers are almost all of it. `max_cpu_loras` (the LRU of
adapters kept in host memory) costs no GPU memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cc_train.config import Arch
from cc_train.models.shapes import Shape

GIB = 1024**3
ENGINE_OVERHEAD_GIB = 6.0  # activations of the profiling batch, CUDA graphs, sampler, NCCL buffers
MIN_KV_SEQUENCES = 8  # the KV cache must hold at least this many sequences of max_model_len
SLOT_SHARE = 0.5  # LoRA slots may take at most this share of what weights and overhead leave (the rest: KV cache)
HOST_LORA_SHARE = 0.5  # adapters waiting in host memory (max_cpu_loras) take at most this share of the granted memory


def lora_slot_bytes(shape: Shape, rank: int, tp: int, fully_sharded: bool, dtype_bytes: int = 2) -> float:
    """GPU bytes of one LoRA slot on one tensor-parallel rank (all layers; divide by the pipeline stages)."""
    f = tp if fully_sharded else 1
    r = rank

    def column(inputs: int, outputs: list[int]) -> float:
        return len(outputs) * (r / f) * inputs + sum(out / tp for out in outputs) * r

    def row(inputs: int, output: int) -> float:
        return r * inputs / tp + output / f * r

    def replicated(inputs: int, output: int) -> float:
        return r * (inputs + output)

    def mlp(width: int) -> float:
        return column(shape.hidden, [width, width]) + row(width, shape.hidden)

    if shape.arch == Arch.deepseek_v3:
        qk_head = shape.qk_nope_head_dim + shape.qk_rope_head_dim
        # q_a_proj + kv_a_proj_with_mqa: one fused, unsharded layer of two slices (one A per slice)
        attention = (
            2 * r * shape.hidden
            + ((shape.q_lora_rank or 0) + shape.kv_lora_rank + shape.qk_rope_head_dim) * r
            + column(shape.q_lora_rank or shape.hidden, [shape.heads * qk_head])
            + column(shape.kv_lora_rank, [shape.heads * (shape.qk_nope_head_dim + shape.v_head_dim)])
            + row(shape.heads * shape.v_head_dim, shape.hidden)
        )
        embeddings = 0.0  # DeepSeek declares no embedding modules: no lm_head / embed_tokens LoRA
    else:
        kv_per_rank = max(shape.kv_heads // tp, 1) * shape.head_dim * tp  # vLLM replicates KV heads below tp
        attention = column(shape.hidden, [shape.heads * shape.head_dim, kv_per_rank, kv_per_rank])
        attention += row(shape.heads * shape.head_dim, shape.hidden)
        embeddings = 2 * (shape.vocab + shape.hidden) * r
    moe = 0.0
    if shape.experts:
        moe = shape.experts * r * (3 * shape.hidden / f + 3 * shape.moe_intermediate / tp)
        moe += replicated(shape.hidden, shape.experts)  # the router
        if shape.shared_experts:
            moe += mlp(shape.moe_intermediate * shape.shared_experts)
    dense = mlp(shape.intermediate)
    layers = shape.layers * attention + len(shape.dense_layers) * dense + shape.moe_layers * moe
    return (layers + embeddings) * dtype_bytes


def kv_bytes_per_token(shape: Shape, tp: int, dtype_bytes: int = 2) -> float:
    """KV cache per token on one rank: K and V per KV head (split over tp), or MLA's compressed latent (replicated)."""
    if shape.arch == Arch.deepseek_v3:
        return shape.layers * (shape.kv_lora_rank + shape.qk_rope_head_dim) * dtype_bytes
    return 2 * shape.layers * max(shape.kv_heads // tp, 1) * shape.head_dim * dtype_bytes


@dataclass(frozen=True)
class EnginePlan:
    gpu_gib: float  # memory of one GPU
    tp: int
    pp: int
    weights_gib: float  # per GPU
    slot_gib: float  # one LoRA slot, per GPU
    adapters: int  # adapters to serve as LoRA in this engine
    max_loras: int  # slots that fit (0 when none is needed or none fits)
    kv_gib: float  # left for the KV cache per GPU at max_loras slots
    min_kv_gib: float
    fits: bool

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def describe(self) -> str:
        where = f"{self.gpus} GPU(s) ({self.tp} tensor x {self.pp} pipeline)"
        if not self.fits:
            need = self.weights_gib + ENGINE_OVERHEAD_GIB + self.min_kv_gib + (self.slot_gib if self.adapters else 0)
            return (
                f"{where}: does not fit: {self.weights_gib:.1f} GiB of weights + {ENGINE_OVERHEAD_GIB:.0f} overhead + "
                f"{self.min_kv_gib:.1f} KV minimum"
                + (f" + one LoRA slot {self.slot_gib:.2f}" if self.adapters else "")
                + f" = {need:.1f} GiB per GPU, more than the engine's {self.gpu_gib:.0f} GiB budget"
            )
        slots = (
            f"; {self.max_loras} LoRA slot(s) of {self.slot_gib:.2f} GiB for {self.adapters} adapter(s)"
            + (f" (served in chunks of {self.max_loras})" if self.max_loras < self.adapters else "")
            if self.adapters
            else ""
        )
        return f"{where}: weights {self.weights_gib:.1f} GiB/GPU{slots}; KV cache {self.kv_gib:.1f} GiB/GPU"


def engine_plan(
    shape: Shape,
    weight_bytes: float,
    budget_gib: float,
    tp: int,
    pp: int,
    adapters: int,
    rank: int,
    max_model_len: int,
    fully_sharded: bool,
) -> EnginePlan:
    """Whether base + `adapters` LoRA fit `budget_gib` per GPU (vLLM's gpu_memory_utilization x the card), and how
    many slots: at most SLOT_SHARE of what weights and overhead leave, never below the KV cache's minimum
    (MIN_KV_SEQUENCES sequences of max_model_len). More adapters than slots are served in chunks."""
    weights = weight_bytes / (tp * pp) / GIB
    slot = lora_slot_bytes(shape, rank, tp, fully_sharded) / pp / GIB
    min_kv = MIN_KV_SEQUENCES * max_model_len * kv_bytes_per_token(shape, tp) / pp / GIB
    left = budget_gib - weights - ENGINE_OVERHEAD_GIB
    free = min(left - min_kv, SLOT_SHARE * left)  # slots never squeeze the KV cache below its minimum or its share
    slots = min(adapters, math.floor(free / slot)) if adapters and free > 0 else 0
    fits = left >= min_kv and (slots >= 1 or not adapters)
    kv = budget_gib - weights - ENGINE_OVERHEAD_GIB - slots * slot
    return EnginePlan(budget_gib, tp, pp, weights, slot, adapters, max(slots, 0), kv, min_kv, fits)


def smallest_engine(shape: Shape, weight_bytes: float, budget_gib: float, per_node: int, **kwargs) -> EnginePlan:
    """The fewest GPUs of one node that serve the engine (tensor parallel; engines never span nodes), or the whole
    node's plan, which says by how much it does not fit."""
    layouts = [(tp, 1) for tp in (1, 2, 4, 8) if tp <= per_node and shape.heads % tp == 0]
    plans = [engine_plan(shape, weight_bytes, budget_gib, tp, pp, **kwargs) for tp, pp in layouts]
    fitting = [p for p in plans if p.fits]
    return fitting[0] if fitting else plans[-1]


def cpu_lora_slots(adapters: int, max_loras: int, adapter_bytes: float, host_bytes: float) -> int:
    """vLLM's max_cpu_loras: every adapter when they fit in HOST_LORA_SHARE of the host memory, else as many as do, and
    never fewer than the GPU slots (vLLM requires max_cpu_loras >= max_loras). ~112 Qwen3-30B-A3B adapters and
    checkpoints of 1.3 GB each (eval.checkpoints=all) would otherwise ask for 146 GB."""
    fit = math.floor(HOST_LORA_SHARE * host_bytes / adapter_bytes) if adapter_bytes else adapters
    return max(max_loras, min(adapters, fit))


@dataclass(frozen=True)
class MergeCost:
    """Serving adapters merged into copies of the base: each copy is written to disk once (cached), and the merge
    holds the whole base in CPU RAM."""

    copies: int
    disk_bytes: float
    ram_bytes: float

    def describe(self) -> str:
        return (
            f"{self.copies} merged cop{'y' if self.copies == 1 else 'ies'} of the base: "
            f"{self.disk_bytes / 1e12:.2f} TB of disk, {self.ram_bytes / 1e9:.0f} GB of CPU RAM for each merge"
        )


def merge_cost(bf16_weight_bytes: float, copies: int) -> MergeCost:
    return MergeCost(copies, copies * bf16_weight_bytes, 1.1 * bf16_weight_bytes)
