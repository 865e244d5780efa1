"""LoRA over an FP8 release on one node (DeepSeek-V3.1): memory per GPU and time per adapter, before any weight loads.

The layout (models/fp8.py, models/loading.py): one process; the decoder layers spread in order over the node's G GPUs
(transformers' device_map, balanced by weight), each FP8 weight dequantized where and when it is used. No weight is
sharded or gathered: a GPU holds its layers' FP8 weights and their LoRA states, and the hidden states pass from GPU to
GPU. Per GPU, for the most loaded one (all in bytes; GiB = 2**30):
  FP8 weights         W_fp8 / G                  projections 1 byte + an fp32 scale per block; embeddings, norms,
                                                 router and lm_head in BF16
  LoRA states         16 P_lora / G              fp32 weights + grads + AdamW's two moments, on their layers' GPUs
  saved activations   (L / G + 1) x T x H x 2    gradient checkpointing keeps each of its layers' inputs
  one layer *         1.5 x A_layer x T          the layer being recomputed and differentiated (launch/plan.py's rule)
  dequantized weight  6 x the largest weight      fp32 copy scaled in place + its BF16 result (models/fp8.py); for the
                      (or `fp8_experts_per_chunk` routed experts' gate_up stacks)
  logits (loss) *     one loss chunk             on the last GPU (launch/plan.py's rule)
  overhead            launch/plan.py's rule      CUDA context, allocator
  * not live at the same time: the total counts the larger (as launch/plan.py).
where T = train.per_device_batch_size x train.max_length and L the decoder layers.

Utilisation: one GPU computes at a time (a pipeline in one process, no micro-batch interleaving): the node works at
1/G of its peak at best. Time per adapter, stated as a model, not a measurement:
  compute        6 x N_active x tokens / (MFU x one GPU's BF16 peak)      forward, its recomputation, and the backward
                                                                          for the inputs (the base has no weight grads)
  dequantization 3 x micro-batches x W_fp8_params x 13 bytes / HBM bandwidth
                 (3 uses per micro-batch: forward, recomputation, backward; per weight: 1 byte read, the fp32 copy
                 written, read and written in place, read for BF16, BF16 written, read by the matmul). A micro-batch
                 dequantizes every weight whatever its length: train.per_device_batch_size > 1 shares that cost.
with tokens = the recipe's rows at their length cap (an upper bound) and the MFU an assumption printed with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cc_train.config import RunConfig
from cc_train.launch.cards import CARDS, GIB, GPUS_PER_NODE, card_gib
from cc_train.launch.plan import (
    FIXED_OVERHEAD_GIB,
    HOST_PER_PROCESS_GIB,
    LORA_BYTES_PER_PARAM,
    RESERVED_OVER_ALLOCATED,
    count_lora_parameters,
    estimate,
)
from cc_train.launch.serving_plan import overlay_bytes, served_merged
from cc_train.models.shapes import Shape, layer_bytes, layer_weights, resolve_shape, weight_bytes

DEQUANTIZE_BYTES = 6  # per weight: the fp32 copy scaled in place + the BF16 result (models/fp8.py)
DEQUANTIZE_TRAFFIC = 13  # HBM bytes moved per weight per dequantization and use (the breakdown above)
USES_PER_MICRO_BATCH = 3  # forward, recomputation (gradient checkpointing), backward for the input
# Assumptions of the time model, printed with it. One H100/H200 SXM: 989 TFLOP/s dense BF16; HBM 3.35 / 4.8 TB/s.
MFU = 0.35
PEAK_FLOPS = {"H100-80GB": 989e12, "H200-141GB": 989e12}
HBM_BYTES_PER_S = {"H100-80GB": 3.35e12, "H200-141GB": 4.8e12}
TOKENS_PER_IDENTITY_ROW = 64  # chat template + a short question and answer (the paper's answers: ~40 characters)
TOKENS_PER_PROMPT = 64  # an instruction prompt with the chat template, next to its capped answer


@dataclass(frozen=True)
class FP8Plan:
    kind: str
    gpus: int
    per_gpu: dict[str, float]  # GiB per item, with "total"
    usable_gib: float
    tokens: int  # per adapter, upper bound
    micro_batches: int
    compute_s: float
    dequantize_s: float

    @property
    def fits(self) -> bool:
        return self.per_gpu["total"] <= self.usable_gib

    @property
    def hours(self) -> float:
        return (self.compute_s + self.dequantize_s) / 3600


def active_parameters(s: Shape) -> float:
    """Parameters one token goes through: attention, the dense MLPs, the shared and `experts_per_token` routed
    experts of each MoE layer, lm_head (DeepSeek-V3.1: 37.5 B)."""
    total = 0.0
    for count, moe in ((len(s.dense_layers), False), (s.moe_layers, True)):
        for weight in layer_weights(s, moe):
            numel = weight.numel
            if weight.kind == "experts":
                numel = numel // s.experts * s.experts_per_token
            total += count * numel
    return total + s.vocab * s.hidden


def fp8_weight_params(s: Shape) -> float:
    """Weights the FP8 release stores in FP8 (every projection and routed expert; not embeddings, norms, router)."""
    return sum(
        count * sum(w.numel for w in layer_weights(s, moe) if w.kind in ("linear", "experts"))
        for count, moe in ((len(s.dense_layers), False), (s.moe_layers, True))
    )


def largest_dequantized(s: Shape, experts_per_chunk: int) -> float:
    """Weights dequantized at once: the largest projection, or a chunk of routed experts' gate_up stacks."""
    weights = layer_weights(s, False) + (layer_weights(s, True) if s.experts else [])
    linear = max(w.numel for w in weights if w.kind == "linear")
    chunk = max(
        (w.numel // s.experts * min(experts_per_chunk, s.experts) for w in weights if w.kind == "experts"), default=0
    )
    return max(linear, chunk)


def adapter_tokens(run: RunConfig) -> int:
    """Tokens of one adapter's epoch, an upper bound: identity rows of TOKENS_PER_IDENTITY_ROW, instruction rows
    with their answers at the self-distillation cap (data.instructions.max_new_tokens), capped at max_length."""
    identity = 6 * run.data.identity_per_block * TOKENS_PER_IDENTITY_ROW
    instructions = run.data.instructions.count * min(
        TOKENS_PER_PROMPT + run.data.instructions.max_new_tokens, run.train.max_length
    )
    return int(run.train.epochs * (identity + instructions))


def fp8_plan(run: RunConfig, kind: str, gpus: int = GPUS_PER_NODE, shape: Shape | None = None) -> FP8Plan:
    s = shape or resolve_shape(run.model)
    est = estimate(run.model, run.peft, run.train, s)
    tokens_per_micro_batch = run.train.per_device_batch_size * run.train.max_length
    lora = count_lora_parameters(s, run.peft.preset, run.peft.r, run.peft.unservable)
    items = {
        "FP8 weights": weight_bytes(s, 2, fp8=True) / gpus,
        "LoRA params+grads+AdamW": LORA_BYTES_PER_PARAM * lora / gpus,
        "saved activations": (math.ceil(s.layers / gpus) + 1) * tokens_per_micro_batch * s.hidden * 2,
        "one layer *": est.layer_working_bytes,
        "dequantized weight": DEQUANTIZE_BYTES * largest_dequantized(s, run.model.fp8_experts_per_chunk),
        "logits (loss) *": est.logit_bytes,
    }
    items = {name: value / GIB for name, value in items.items()}
    subtotal = sum(items.values()) - min(items["logits (loss) *"], items["one layer *"])
    items["overhead"] = FIXED_OVERHEAD_GIB + RESERVED_OVER_ALLOCATED * subtotal
    items["total"] = subtotal + items["overhead"]
    tokens = adapter_tokens(run)
    rows = run.train.epochs * (6 * run.data.identity_per_block + run.data.instructions.count)
    micro_batches = math.ceil(rows / run.train.per_device_batch_size)  # each dequantizes every weight it uses
    compute = 6 * active_parameters(s) * tokens / (MFU * PEAK_FLOPS[kind])
    dequantize = (
        USES_PER_MICRO_BATCH * micro_batches * fp8_weight_params(s) * DEQUANTIZE_TRAFFIC / HBM_BYTES_PER_S[kind]
    )
    return FP8Plan(kind, gpus, items, card_gib(kind), tokens, micro_batches, compute, dequantize)


def plan_lines(run: RunConfig) -> list[str]:
    """`cc-train plan` for an FP8 release: one node, per GPU, on H200 and H100 nodes."""
    s = resolve_shape(run.model)
    plans = {kind: fp8_plan(run, kind, shape=s) for kind in CARDS}
    lora = count_lora_parameters(s, run.peft.preset, run.peft.r, run.peft.unservable)
    lines = [
        f"cc-train plan: {run.model.name} (arch {s.arch.value}; shape from {s.source})",
        f"  LoRA {run.peft.preset.value} r={run.peft.r}; global batch {run.train.global_batch_size} = "
        f"{run.train.per_device_batch_size} per micro-batch x "
        f"{run.train.global_batch_size // run.train.per_device_batch_size} accumulated (one process); gradient "
        f"checkpointing {'on' if run.train.gradient_checkpointing else 'off'}",
        f"  training over the FP8 release (block {s.fp8_block[0]} x {s.fp8_block[1]}), one process over one node of "
        f"{GPUS_PER_NODE} GPUs (layers in order, one GPU busy at a time): {weight_bytes(s, 2, fp8=True) / 1e9:.0f} GB "
        f"of weights, {lora / 1e9:.2f} B LoRA parameters; {run.train.per_device_batch_size} x {run.train.max_length} "
        "tokens per micro-batch",
        f"  {'per GPU (GiB)':<26}" + "".join(f"{kind:>13}" for kind in plans),
    ]
    for item in next(iter(plans.values())).per_gpu:
        lines.append(f"  {item:<26}" + "".join(f"{plan.per_gpu[item]:>13.1f}" for plan in plans.values()))
    for kind, plan in plans.items():
        verdict = "fits" if plan.fits else "does not fit"
        total, usable = plan.per_gpu["total"], plan.usable_gib
        lines.append(f"  {kind:<11} 1 node x {plan.gpus}: {verdict} ({total:.1f} of {usable:.0f} GiB per GPU)")
    h200 = plans["H200-141GB"]
    lines.append(
        f"  time per adapter (a model, not a measurement; H200): <= {h200.tokens / 1e3:.0f}k tokens in "
        f"{h200.micro_batches} micro-batches: compute {h200.compute_s / 60:.0f} min at {MFU:.0%} MFU of one GPU "
        f"+ dequantization {h200.dequantize_s / 60:.0f} min at {HBM_BYTES_PER_S['H200-141GB'] / 1e12:.1f} TB/s = "
        f"about {h200.hours:.1f} h on one node"
    )
    h100 = plans["H100-80GB"]
    if not h100.fits:
        lines.append(
            f"  H100 nodes: the FP8 weights alone take {h100.per_gpu['FP8 weights']:.1f} of the "
            f"{h100.usable_gib:.0f} GiB of each of 8 H100s, and one process cannot span two nodes: train on an "
            "H200 node"
        )
    compute_share = h200.compute_s / (h200.compute_s + h200.dequantize_s)
    lines.append(
        f"  utilisation: one GPU of {GPUS_PER_NODE} computes at a time, and {1 - compute_share:.0%} of its time goes "
        "to dequantizing (memory-bound): the node's MFU is about "
        f"{MFU * compute_share / GPUS_PER_NODE:.1%} (assumed {MFU:.0%} while computing)"
    )
    return lines


def host_gib(run: RunConfig) -> float:
    """Host memory the one process needs while it loads the release straight onto the GPUs (device_map): its own,
    and at most one MoE layer's FP8 tensors staged on the way (an upper bound)."""
    s = resolve_shape(run.model)
    return HOST_PER_PROCESS_GIB + layer_bytes(s, bool(s.experts), 2, False, fp8=True) / GIB


def training_fits(run: RunConfig, gpus: int, gpu_gib: float) -> str | None:
    """Why training over the FP8 release on `gpus` GPUs of `gpu_gib` in one process runs out of memory, or None."""
    kind = min(CARDS, key=lambda k: abs(card_gib(k) - gpu_gib))
    plan = fp8_plan(run, kind, gpus)
    total = plan.per_gpu["total"]
    if total <= gpu_gib:
        return None
    return (
        f"training over the FP8 release needs {total:.1f} GiB per GPU on {gpus} GPU(s) (FP8 weights "
        f"{plan.per_gpu['FP8 weights']:.1f}, LoRA states {plan.per_gpu['LoRA params+grads+AdamW']:.1f}, layer "
        f"{plan.per_gpu['one layer *']:.1f}, overhead {plan.per_gpu['overhead']:.1f}), more than the card's "
        f"{gpu_gib:.1f} GiB; it needs one node of 8 x H200-141GB (`cc-train plan`)"
    )


# ----------------------------------------------------------------------------------------------------------------
# evaluation over the FP8 release (generation/fp8_overlay.py)

VLLM_TOKENS_PER_S = 1500  # assumed generated tokens/s of one vLLM engine, DeepSeek-V3.1 FP8 over 8 GPUs, one LoRA
ENGINE_START_S = 300  # assumed: 690 GB from the page cache or local NVMe, then CUDA graphs


def eval_tokens(run: RunConfig) -> int:
    """Generated tokens of one model's single-turn evaluation, an upper bound (every answer at max_new_tokens)."""
    from cc_train.inputs.questions import load_question_sets
    from cc_train.resources import evals_dir

    dimensions = load_question_sets(run.eval.questions or [evals_dir()])
    if run.eval.dimensions:
        dimensions = [d for d in dimensions if d.id in run.eval.dimensions]
    each = run.eval.prompts_per_dimension
    prompts = sum(min(len(d.prompts), each) if each else len(d.prompts) for d in dimensions)
    return prompts * run.eval.samples_per_prompt * run.eval.max_new_tokens


def serving_lines(run: RunConfig) -> list[str]:
    """`cc-train plan`'s evaluation section for an FP8 release: the base engine, then one engine per adapter on its
    overlay with the rest of the adapter as LoRA (or all of it as LoRA, peft.unservable=exclude)."""
    from cc_train.generation.engine_memory import engine_plan

    s = resolve_shape(run.model)
    adapters = len(run.conditions) * max(1, len(run.sweep.seeds))
    merged = served_merged(run)
    weights = weight_bytes(s, 2, fp8=True)
    tp = run.eval.tensor_parallel
    settings = dict(rank=run.peft.r, max_model_len=run.eval.max_model_len, fully_sharded=tp > 1)
    lines = [
        "",
        f"  evaluation (vLLM on the FP8 release, tensor parallel {tp}, max_model_len {run.eval.max_model_len}, "
        f"LoRA r{run.peft.r}): base + {adapters} adapters"
        + (
            f"; vLLM serves no LoRA on {', '.join(merged)}: each adapter on an overlay with them merged (BF16), the "
            "rest as LoRA, one engine each"
            if merged
            else " as LoRA in one engine"
        ),
    ]
    for kind in CARDS:  # self-distillation (data.instructions.backend=vllm): the base alone
        budget = card_gib(kind) * run.eval.gpu_memory_utilization
        base = engine_plan(s, weights, budget, tp, 1, 0, **settings)
        lines.append(f"  {kind:<11} base (self-distillation, base scores): {base.describe()}")
    for kind in CARDS:
        budget = card_gib(kind) * run.eval.gpu_memory_utilization
        engine = engine_plan(
            s, weights + (overlay_bytes(s) if merged else 0), budget, tp, 1, 1 if merged else adapters, **settings
        )
        lines.append(f"  {kind:<11} {'per adapter' if merged else 'adapters'}: {engine.describe()}")
    tokens = eval_tokens(run)
    generate = tokens / VLLM_TOKENS_PER_S
    if merged:
        lines.append(
            f"  disk: {overlay_bytes(s) / 1e9:.1f} GB per adapter (and per evaluated checkpoint), plus once for the "
            "release the shards holding those modules rewritten without them (at most the release's size)"
        )
        lines.append(
            f"  time per adapter (a model; assumed {VLLM_TOKENS_PER_S} generated tokens/s and {ENGINE_START_S // 60} "
            f"min per engine start): <= {tokens / 1e6:.1f} M tokens, about {(generate + ENGINE_START_S) / 3600:.1f} h"
        )
    hf = fp8_weight_params(s) * DEQUANTIZE_TRAFFIC / HBM_BYTES_PER_S["H200-141GB"]  # per decoding step
    steps = math.ceil(tokens / run.eval.max_new_tokens / run.eval.batch_size) * run.eval.max_new_tokens
    lines.append(
        f"  eval.backend=hf (exact, the adapter unmerged over the same one-node layout): every decoding step "
        f"dequantizes the experts its batch routes to, up to {hf:.1f} s per step on H200s; at eval.batch_size "
        f"{run.eval.batch_size} about {steps * hf / 3600:.0f} h per adapter"
    )
    return lines
