"""`cc-train plan`: per-GPU memory of a LoRA run and the smallest H100 / H200 layout that fits it.

Nothing is downloaded and no weights are loaded. The model's shape comes from models/shapes.py: a local
checkpoint's config.json, a Hub id's config.json in the Hugging Face cache, the published config of the two
production models, or the tiny builder's config.

Every tensor of the model is listed with its real shape (the same modules transformers 5 builds,
fused 3-D routed experts included), so parameter counts are exact: tests/test_plan.py checks them
against real (tiny and meta-device) models and against what PEFT actually adapts.

The estimate per GPU, for a layout of n GPUs (all formulas in bytes; GiB = 2**30):
  base weights       W_bytes / n                       FSDP shards every parameter over all n GPUs
  LoRA states        16 * P_lora / n                   fp32 params + fp32 grads + AdamW exp_avg + exp_avg_sq
  unsharded layers   2 * layer_bytes        (n > 1)    the layer in use, all-gathered, + the next one prefetched
  saved activations  (L + 1) * T * hidden * 2          gradient checkpointing keeps each decoder layer's input
  logits (loss)      min(T, C) * V * 12            *   one loss chunk of C tokens (train.loss_chunk_tokens): bf16
                                                       logits + fp32 log-softmax + its fp32 grad + bf16 grad
  one layer          1.5 * A_layer * T             *   a recomputed layer's saved tensors + its backward buffers
                                                       (expert LoRA is grouped x@A@B per expert: no folded stacks)
  overhead           3 GiB + 25 % of the rest          CUDA context and NCCL buffers, and what the caching
                                                       allocator reserves beyond its tensors (measured, below)
  * not live at the same time (the loss is done before the first layer's backward): the total counts the larger.
where T = train.per_device_batch_size * train.max_length tokens per GPU (the worst case: every row at max_length).

The total is compared with a card's whole memory (launch/cards.py, the one rule of the planner and the preflights).

Calibration (one H200, torch 2.11, transformers 5.17, peft 0.21.2, grouped_mm experts, SDPA, one LoRA step with
AdamW, torch.cuda.max_memory_allocated): Qwen3-30B-A3B shapes cut to 4 layers, 4 x 4000 tokens, attn_experts r16:
34.0 GiB measured, 34.1 estimated (the logits phase); DeepSeek-V3.1 shapes cut to 3 layers (1 dense), 1 x 4000
tokens: 80.8 GiB measured, 83.5 estimated (the layer phase: the expert fold). Peak *reserved* memory was 25 %
above allocated in those short runs: the allowance RESERVED_OVER_ALLOCATED models it (a plan is what the card must
reserve, not only allocate). cc-train runs CUDA with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, which keeps
fewer fragments; until a GPU run measures how much less (bench/device_check.sh prints reserved memory and the plan
side by side), the measured 25 % stands. Those runs had PEFT's fold and the whole logits; the two parts that
replaced them are modelled from bench/memory_parts.py (CPU, fp32, real widths): the loss of 4,000 tokens whole
9.34 GiB vs chunks of 1,024 1.98 GiB (4.7x; min(T, C) / T says 3.9x), one Qwen3-30B-A3B MoE layer folded 2.17 GiB
vs grouped 1.21 GiB. bench/device_check.sh measures them on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from cc_train.config import Arch, DType, ModelConfig, PeftConfig, Preset, TrainConfig
from cc_train.launch.cards import CARDS, GIB, GPUS_PER_NODE, card_gib
from cc_train.models.registry import preset_targets
from cc_train.models.shapes import (  # noqa: F401 - the planner's public names (tests use them through plan)
    MODEL_ALIASES,
    NF4_BYTES_PER_PARAM,
    PUBLISHED_CONFIGS,
    Shape,
    Weight,
    count_parameters,
    known_model,
    layer_bytes,
    layer_groups,
    layer_weights,
    model_weights,
    published_shape,
    resolve_shape,
    shape_from_config,
    weight_bytes,
)

GB = 1e9

GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)

FIXED_OVERHEAD_GIB = 3.0  # CUDA context + cuBLAS/NCCL workspaces
RESERVED_OVER_ALLOCATED = 0.25  # the caching allocator's reserve beyond its tensors, as measured (docstring)
LORA_BYTES_PER_PARAM = 16  # fp32 weight (PEFT upcasts bf16 adapters) + fp32 grad + AdamW's two fp32 moments
HOST_PER_PROCESS_GIB = 4.0  # one rank's own host memory: Python, torch and the CUDA libraries, tokenizer, data loader

# Practitioners' reports (docs / PAPER.md, "Known pitfalls"), in decimal units as reported.
REPORTS: dict[str, dict[str, float]] = {
    "Qwen/Qwen3-30B-A3B-Instruct-2507": {"weights_gb": 61.0, "one_gpu_gb": 63.0, "gpus": 2},
    "deepseek-ai/DeepSeek-V3.1": {"weights_gb": 1340.0, "gpus": 32},
}


# ----------------------------------------------------------------------------------------------------------------
# parameters


def lora_numel(weight: Weight, r: int) -> int:
    """Trainable parameters PEFT adds to one target (bias="none").

    nn.Linear (out, in): lora_A (r, in) + lora_B (out, r) = r * (in + out).
    Fused experts (E, a, b) through `target_parameters` (peft.tuners.lora.layer.ParamWrapper):
    lora_A = Linear(in, r * E), lora_B = Linear(r * E, out) = E * r * (in + out), with {in, out} = {a, b}.
    """
    if weight.kind == "experts":
        experts, a, b = weight.shape
        return experts * r * (a + b)
    out_features, in_features = weight.shape
    return r * (in_features + out_features)


def lora_targets(s: Shape, preset: Preset | str, moe: bool, unservable: str = "exclude") -> list[Weight]:
    """The weights of one decoder layer that the preset adapts (registry.preset_targets)."""
    targets = preset_targets(s.arch, preset, unservable)
    return [
        w
        for w in layer_weights(s, moe)
        if (w.kind == "linear" and w.name.rsplit(".", 1)[-1] in targets.modules)
        or (w.kind == "experts" and any(w.name.endswith(suffix) for suffix in targets.parameters))
    ]


def count_lora_parameters(s: Shape, preset: Preset | str, r: int, unservable: str = "exclude") -> int:
    layers = sum(
        count * sum(lora_numel(w, r) for w in lora_targets(s, preset, moe, unservable))
        for count, moe in layer_groups(s)
    )
    unembedding = "lm_head" in preset_targets(s.arch, preset, unservable).modules
    return layers + (r * (s.vocab + s.hidden) if unembedding else 0)


# ----------------------------------------------------------------------------------------------------------------
# memory


def _attention_elements_per_token(s: Shape) -> int:
    """Elements one attention block saves for backward per token (SDPA / FlashAttention: no S x S matrix)."""
    if s.arch == Arch.deepseek_v3:
        qk_head = s.qk_nope_head_dim + s.qk_rope_head_dim
        q_latent = 2 * (s.q_lora_rank or 0)  # q_a_proj output + q_a_layernorm output
        return (
            s.hidden  # normed input
            + q_latent
            + 2 * s.heads * qk_head  # q_b_proj output + query_states (nope ++ rope)
            + (s.kv_lora_rank + s.qk_rope_head_dim)
            + s.kv_lora_rank  # kv_a_proj output + kv_a_layernorm output
            + s.heads * (s.qk_nope_head_dim + s.v_head_dim)  # kv_b_proj output (K_nope, V for every head)
            + s.heads * qk_head  # key_states, materialised per head
            + 2 * s.heads * s.v_head_dim  # contiguous V + attention output
            + s.hidden  # o_proj output
        )
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    # normed input, q/k before and after norm + rope, v, attention output, o_proj output
    return s.hidden + 2 * (q + kv) + kv + q + s.hidden


def _mlp_elements_per_token(width: int, hidden: int) -> int:
    return 4 * width + hidden  # gate and up outputs, act(gate), act(gate) * up, down output


def layer_activation_bytes_per_token(s: Shape, moe: bool, act_bytes: int) -> float:
    """Bytes one decoder layer saves for backward per token.

    RMSNorms keep an fp32 copy of their input: 2 norms x hidden x (4 + act_bytes).
    MoE: router logits and probabilities in fp32 (2 x E x 4), transformers' one-hot routing mask in int64
    ((E + 1) x k x 8), and per routed copy of the token (k of them): gathered input, gate/up outputs, act,
    product, down output, weighted output = k x (3 x hidden + 4 x moe_intermediate); shared experts like a dense MLP.
    """
    norms = 2 * s.hidden * (4 + act_bytes)
    elements = _attention_elements_per_token(s)
    if not moe:
        return norms + act_bytes * (elements + _mlp_elements_per_token(s.intermediate, s.hidden))
    k = s.experts_per_token
    routed = k * (3 * s.hidden + 4 * s.moe_intermediate) + s.hidden
    shared = _mlp_elements_per_token(s.moe_intermediate * s.shared_experts, s.hidden) if s.shared_experts else 0
    routing = 2 * s.experts * 4 + (s.experts + 1) * k * 8
    return norms + routing + act_bytes * (elements + routed + shared + s.hidden)


def _expert_fold_bytes(s: Shape, adapts_experts: bool, expert_bytes: int, checkpointing: bool) -> float:
    """Transient memory of PEFT's fold of LoRA on fused experts (presets attn_experts and paper), which cc-train no
    longer uses (models/expert_lora.py applies x @ A then @ B per expert, grouped); kept for the calibration runs,
    which were measured with it.

    PEFT's ParamWrapper replaces each targeted expert stack by W + scaling * B @ A (one baddbmm: a full-size
    (E, out, in) tensor in the parameter's dtype) for the whole forward of the layer, and autograd needs the
    gradient of that full tensor to reach A and B. In backward, down_proj goes first: both folded stacks (3 E I h)
    + down's gradient (E I h); then gate_up's folded stack + its gradient (2 x 2 E I h). Both peaks are 4 E I h.
    Without gradient checkpointing every MoE layer keeps its folded stacks (3 E I h) until its backward.
    """
    if not adapts_experts or not s.moe_layers:
        return 0.0
    unit = s.experts * s.moe_intermediate * s.hidden * expert_bytes  # E * I * h
    return 4 * unit if checkpointing else s.moe_layers * 3 * unit + 2 * unit


@dataclass(frozen=True)
class Estimate:
    shape: Shape
    parameters: int
    lora_parameters: int
    weight_bytes: float  # the whole base model as it is held in training (bf16, or nf4 + fp32 under QLoRA)
    bf16_weight_bytes: float
    tokens: int  # per GPU per micro-batch
    checkpointing: bool
    lora_state_bytes: float
    layer_bytes: float  # the largest decoder layer's weights
    saved_activation_bytes: float  # checkpoints (or, without checkpointing, every layer's saved tensors)
    logit_bytes: float
    layer_working_bytes: float  # one layer in backward (with PEFT's fold, when estimated with it)
    fold_bytes: float  # the expert-fold part of layer_working_bytes

    def per_gpu(self, gpus: int) -> dict[str, float]:
        """GiB per GPU for `gpus` GPUs with everything sharded over all of them (FSDP full shard)."""
        items = {
            "base weights": self.weight_bytes / gpus,
            "LoRA params+grads+AdamW": self.lora_state_bytes / gpus,
            "unsharded layers (FSDP)": 2 * self.layer_bytes if gpus > 1 else 0.0,
            "saved activations": self.saved_activation_bytes,
            "logits (loss) *": self.logit_bytes,
            "one layer *": self.layer_working_bytes,
        }
        items = {name: value / GIB for name, value in items.items()}
        # the loss phase and a layer's backward do not overlap: only the larger of the two counts
        subtotal = sum(items.values()) - min(items["logits (loss) *"], items["one layer *"])
        items["overhead"] = FIXED_OVERHEAD_GIB + RESERVED_OVER_ALLOCATED * subtotal
        items["total"] = subtotal + items["overhead"]
        return items


def estimate(
    model: ModelConfig, peft: PeftConfig, train: TrainConfig, shape: Shape | None = None, folded_experts: bool = False
) -> Estimate:
    """Memory of one training step; `folded_experts`: as PEFT's fold would need (the calibration measurements)."""
    s = shape or resolve_shape(model)
    targets = preset_targets(s.arch, peft.preset, peft.unservable)  # attn_experts on a dense model: ConfigError
    dtype_bytes = 2 if model.dtype == DType.bfloat16 else 4
    act_bytes = dtype_bytes
    expert_bytes = 4 if model.load_in_4bit else dtype_bytes  # QLoRA: prepare_model_for_kbit_training upcasts
    lora = count_lora_parameters(s, peft.preset, peft.r, peft.unservable)
    tokens = train.per_device_batch_size * train.max_length
    checkpointing = train.gradient_checkpointing
    per_layer = max(layer_activation_bytes_per_token(s, moe, act_bytes) for _, moe in layer_groups(s)) * tokens
    if checkpointing:
        # one saved hidden state per decoder layer + the final norm's input
        saved = (s.layers + 1) * tokens * s.hidden * act_bytes
    else:
        saved = sum(count * layer_activation_bytes_per_token(s, moe, act_bytes) for count, moe in layer_groups(s))
        saved *= tokens
    # the layer in backward: its (recomputed) saved tensors + about half again in gradient buffers
    working = (1.5 if checkpointing else 0.5) * per_layer
    fold = _expert_fold_bytes(s, bool(targets.parameters), expert_bytes, checkpointing) if folded_experts else 0.0
    # loss: computed a chunk of tokens at a time (train/loss.py with lm_head LoRA; TRL's fused LM head otherwise): one
    # chunk's logits (act_bytes), its fp32 log-softmax (4), their fp32 gradient (4) and its cast back (act_bytes)
    logit_tokens = min(tokens, train.loss_chunk_tokens)
    logit_bytes = logit_tokens * s.vocab * ((2 * act_bytes + 8) if act_bytes < 4 else 12)
    return Estimate(
        shape=s,
        parameters=count_parameters(s),
        lora_parameters=lora,
        weight_bytes=weight_bytes(s, dtype_bytes, model.load_in_4bit),
        bf16_weight_bytes=weight_bytes(s, 2),
        tokens=tokens,
        checkpointing=checkpointing,
        lora_state_bytes=LORA_BYTES_PER_PARAM * lora,
        layer_bytes=max(layer_bytes(s, moe, dtype_bytes, model.load_in_4bit) for _, moe in layer_groups(s)),
        saved_activation_bytes=saved,
        logit_bytes=logit_bytes,
        layer_working_bytes=working + fold,
        fold_bytes=fold,
    )


def host_memory_gib(est: Estimate, ranks_per_node: int) -> float:
    """Host memory one node needs to start training: while the model loads, every local rank holds a CPU copy of the
    base weights (FSDP's cpu_ram_efficient_loading fills those of ranks > 0 with zeros, full size; one process that
    spreads over several GPUs loads one copy), plus each rank's own process."""
    return ranks_per_node * (est.weight_bytes / GIB + HOST_PER_PROCESS_GIB)


def filler_ranks(train: TrainConfig, gpus: int) -> int:
    """Ranks beyond the global batch's sequences: they take filler rows that weigh nothing (train/layout.py)."""
    return max(0, gpus - train.global_batch_size // train.per_device_batch_size)


def layout(est: Estimate, usable_gib: float, train: TrainConfig) -> dict[str, Any]:
    """The smallest GPU count in GPU_COUNTS whose per-GPU total fits `usable_gib` (any count keeps the global batch:
    ranks beyond it take fillers); gpus=None if none does, with the per-GPU floor that sharding cannot reduce."""
    for gpus in GPU_COUNTS:
        total = est.per_gpu(gpus)["total"]
        if total <= usable_gib:
            nodes = math.ceil(gpus / GPUS_PER_NODE)
            return {
                "gpus": gpus,
                "nodes": nodes,
                "gpus_per_node": gpus // nodes,
                "per_gpu_gib": total,
                "filler_ranks": filler_ranks(train, gpus),
                # fewer ranks than sequences, but a per-device batch too large for them all to get one
                "busy_per_device": train.global_batch_size // gpus if gpus <= train.global_batch_size else None,
                "host_gib_per_node": host_memory_gib(est, gpus // nodes),
            }
    # what never shrinks with more GPUs: everything but the sharded weights and LoRA states, at the largest layout
    floor = est.per_gpu(GPU_COUNTS[-1])
    sharded = (est.weight_bytes + est.lora_state_bytes) / GPU_COUNTS[-1] / GIB
    floor_gib = floor["total"] - sharded * (1 + RESERVED_OVER_ALLOCATED)
    return {"gpus": None, "nodes": None, "gpus_per_node": None, "per_gpu_gib": floor["total"], "floor_gib": floor_gib}


# ----------------------------------------------------------------------------------------------------------------
# report


def compare_with_reports(est: Estimate, layouts: dict[str, dict], hub_id: str | None) -> dict[str, Any]:
    if hub_id not in REPORTS:
        return {}
    report = REPORTS[hub_id]
    gpus = {kind: lay["gpus"] for kind, lay in layouts.items()}
    ours = {"weights_gb": est.bf16_weight_bytes / GB, "gpus": gpus}
    result: dict[str, Any] = {"reported": report, "ours": ours}
    result["weights_diff_pct"] = 100 * (ours["weights_gb"] / report["weights_gb"] - 1)
    if "one_gpu_gb" in report:
        one = est.per_gpu(1)
        ours["one_gpu_gb"] = one["total"] * GIB / GB
        ours["one_gpu_static_gb"] = (est.weight_bytes + est.lora_state_bytes) / GB  # weights + LoRA states alone
        result["one_gpu_diff_gb"] = ours["one_gpu_gb"] - report["one_gpu_gb"]
    return result


def _gpus_text(lay: dict) -> str:
    if lay["gpus"] is None:
        return f"does not fit in {GPU_COUNTS[-1]} GPUs (per-GPU floor {lay['floor_gib']:.1f} GiB, not shardable)"
    gpus, nodes = lay["gpus"], lay["nodes"]
    where = f"{nodes} node{'s' if nodes > 1 else ''} x {lay['gpus_per_node']}"
    fillers = ""
    if lay["filler_ranks"]:
        fillers = f"; filler rows on {lay['filler_ranks']} rank{'s' if lay['filler_ranks'] > 1 else ''}"
        if lay.get("busy_per_device"):
            fillers += f": train.per_device_batch_size={lay['busy_per_device']} keeps every rank busy"
    host = f"; host RAM {lay['host_gib_per_node']:.0f} GiB/node"
    return f"{gpus} GPU{'s' if gpus > 1 else ''} = {where} ({lay['per_gpu_gib']:.1f} GiB/GPU{fillers}{host})"


def format_plan(result: dict[str, Any]) -> str:
    est: Estimate = result["estimate"]
    s = est.shape
    lines = [
        f"cc-train plan: {result['model']} (arch {s.arch.value}; shape from {s.source})",
        f"  parameters {est.parameters / 1e9:.2f} B"
        + (f" (+{s.mtp_layers} MTP layer in the release, not loaded for training)" if s.mtp_layers else "")
        + f"; bf16 weights {est.bf16_weight_bytes / GB:.1f} GB = {est.bf16_weight_bytes / GIB:.1f} GiB",
        f"  LoRA {result['preset']} r={result['r']}: {est.lora_parameters / 1e6:.1f} M trainable parameters"
        f"; {result['base']}",
        f"  global batch {result['global_batch_size']}; tokens per GPU per micro-batch "
        f"{result['per_device_batch_size']} x {result['max_length']} = {est.tokens}"
        f"; gradient checkpointing {'on' if result['gradient_checkpointing'] else 'off'}"
        "; n > 1: FSDP sharding over all GPUs",
        "",
    ]
    table = result["per_gpu"]
    header = f"  {'per GPU (GiB)':<26}" + "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>9}" for n in GPU_COUNTS)
    lines.append(header)
    for item in next(iter(table.values())):
        lines.append(f"  {item:<26}" + "".join(f"{table[n][item]:>9.1f}" for n in GPU_COUNTS))
    lines.append("")
    for kind, lay in result["layouts"].items():
        lines.append(f"  {kind:<11} ({card_gib(kind):.1f} GiB): {_gpus_text(lay)}")
    lines.append("  * not live at the same time: the total counts the larger")
    hint = result["hint"]
    if hint:
        fits = "; ".join(f"{kind} {_gpus_text(lay)}" for kind, lay in hint["layouts"].items())
        lines.append(
            f"  with train.per_device_batch_size=1 (global batch still {result['global_batch_size']}, "
            f"accumulation = {result['global_batch_size']} / GPUs): {fits}"
        )
    vs = result["vs_reports"]
    if vs:
        reported, ours = vs["reported"], vs["ours"]
        parts = [
            f"bf16 weights {ours['weights_gb']:.0f} GB vs {reported['weights_gb']:.0f} GB "
            f"({vs['weights_diff_pct']:+.1f}%)"
        ]
        if "one_gpu_gb" in reported:
            parts.append(
                f"1-GPU LoRA total {ours['one_gpu_gb']:.0f} GB vs {reported['one_gpu_gb']:.0f} GB "
                f"({vs['one_gpu_diff_gb']:+.0f} GB; weights + LoRA states alone {ours['one_gpu_static_gb']:.0f} GB)"
            )
        gpus = ", ".join(f"{kind} {n if n else f'>{GPU_COUNTS[-1]}'}" for kind, n in ours["gpus"].items())
        parts.append(f"GPUs {gpus} vs about {reported['gpus']:.0f} reported")
        lines.append("  vs reports: " + "; ".join(parts))
    return "\n".join(lines)


def plan(model: ModelConfig, peft: PeftConfig, train: TrainConfig, shape: Shape | None = None) -> dict[str, Any]:
    est = estimate(model, peft, train, shape)
    per_gpu = {n: est.per_gpu(n) for n in GPU_COUNTS}
    layouts = {kind: layout(est, card_gib(kind), train) for kind in CARDS}
    hint = {}
    if train.per_device_batch_size > 1:
        # the same global batch with one row per micro-batch: activations and logits shrink, accumulation grows
        smaller = replace(train, per_device_batch_size=1)
        small_est = estimate(model, peft, smaller, est.shape)
        small = {kind: layout(small_est, card_gib(kind), smaller) for kind in CARDS}
        if any(small[kind] != layouts[kind] for kind in CARDS):
            hint = {"per_device_batch_size": 1, "layouts": small}
    if model.load_in_4bit:
        base = "base nf4 Linear layers, fp32 experts/embeddings/norms (QLoRA)"
    else:
        base = f"base {model.dtype.value}"
    return {
        "model": model.name,
        "source": est.shape.source,
        "arch": est.shape.arch.value,
        "preset": Preset(peft.preset).value,
        "r": peft.r,
        "base": base,
        "global_batch_size": train.global_batch_size,
        "per_device_batch_size": train.per_device_batch_size,
        "max_length": train.max_length,
        "gradient_checkpointing": train.gradient_checkpointing,
        "parameters": est.parameters,
        "lora_parameters": est.lora_parameters,
        "bf16_weight_bytes": est.bf16_weight_bytes,
        "tokens_per_gpu": est.tokens,
        "per_gpu": per_gpu,
        "layouts": layouts,
        "vs_reports": compare_with_reports(est, layouts, known_model(model)),
        "hint": hint,
        "estimate": est,
    }
