"""DeepSeek-V3.1's FP8 release as the frozen base of a LoRA: one byte per weight, exact, with a backward.

The release stores every projection (attention, dense and shared MLPs, routed experts) as float8_e4m3fn with one
float32 inverse scale per 128 x 128 block (`weight_scale_inv`); embeddings, norms, the router and lm_head are BF16.
transformers 5.19 loads that layout (its FP8Linear, FP8Experts) but computes with kernels fetched at run time and
defines no backward, and it dequantizes the whole model to BF16 on a machine without a GPU.

Here the loader keeps the release as it is on any device, and each FP8 module is replaced by one of ours:
- the weight is held as its raw bytes (uint8): no optimizer, dtype cast or gradient can touch it;
- every use dequantizes it exactly as DeepSeek's own BF16 conversion does (each block x its scale in fp32, rounded
  to BF16; `cc-train prepare-model` writes the same values), then multiplies in the input's dtype. The model over the
  FP8 release therefore computes what the model over its BF16 copy computes (tests/test_fp8.py: loss and every LoRA
  gradient within 1e-5);
- an autograd function gives the input's gradient (what LoRA on this and earlier layers needs) by dequantizing the
  weight again in the backward, so nothing of the weight's size is kept from the forward to the backward: one
  dequantized weight exists at a time, and for the routed experts a bounded number of experts
  (`model.fp8_experts_per_chunk`) at a time.
LoRA wraps these modules as it wraps nn.Linear and the fused experts (PEFT's lora.Linear, and cc-train's grouped
expert LoRA, models/expert_lora.py); the LoRA weights take the model's dtype (`compute_dtype`), never FP8.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
from torch import nn
from torch.nn import functional
from transformers.integrations.moe import _grouped_mm

FP8 = torch.float8_e4m3fn
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_MAX = 448.0  # the largest float8_e4m3fn
SCALE_SUFFIX = "_scale_inv"


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """BF16 from block-scaled FP8, as DeepSeek's conversion computes it: each (block x block) tile of the weight
    (raw bytes or float8; leading dimensions, e.g. experts, allowed) times its scale in fp32, rounded to BF16.
    Transient memory: one fp32 copy (scaled in place) and the BF16 result, 6 bytes per weight."""
    values = (weight.view(FP8) if weight.dtype == torch.uint8 else weight).to(torch.float32, copy=True)
    rows, cols = values.shape[-2:]
    tiles = scale_inv.float()
    if rows % block[0] == 0 and cols % block[1] == 0:  # whole tiles: broadcast the scales, no expanded copy
        lead = values.shape[:-2]
        values.view(*lead, rows // block[0], block[0], cols // block[1], block[1]).mul_(tiles[..., :, None, :, None])
    else:
        values.mul_(tiles.repeat_interleave(block[0], -2)[..., :rows, :].repeat_interleave(block[1], -1)[..., :cols])
    return values.to(torch.bfloat16)


def quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled FP8 of a weight as DeepSeek quantizes its release: per (block x block) tile, scale = max |w| / 448
    (float32 `weight_scale_inv`), the tile divided by it and rounded to float8_e4m3fn. Leading dimensions allowed."""
    rows, cols = weight.shape[-2:]
    tiles_r, tiles_c = -(-rows // block[0]), -(-cols // block[1])
    padded = functional.pad(weight.float(), (0, tiles_c * block[1] - cols, 0, tiles_r * block[0] - rows))
    tiled = padded.view(*weight.shape[:-2], tiles_r, block[0], tiles_c, block[1])
    scale = (tiled.abs().amax(dim=(-3, -1)) / FP8_MAX).clamp(min=1e-12 / FP8_MAX)
    quantized = (tiled / scale[..., :, None, :, None]).to(FP8).view(padded.shape)[..., :rows, :cols]
    return quantized.contiguous(), scale


def dequantize_fused(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], parts: int) -> torch.Tensor:
    """`dequantize` of a weight made of `parts` matrices stacked along its rows, each quantized with blocks of its own
    (the fused gate_up_proj of routed experts: the release's gate_proj and up_proj). Where a part's rows are not a
    multiple of the block, its last block row is partial and the parts' scales cannot be read as one grid."""
    if parts == 1:
        return dequantize(weight, scale_inv, block)
    rows, scale_rows = weight.shape[-2] // parts, scale_inv.shape[-2] // parts
    return torch.cat(
        [
            dequantize(
                weight[..., part * rows : (part + 1) * rows, :],
                scale_inv[..., part * scale_rows : (part + 1) * scale_rows, :],
                block,
            )
            for part in range(parts)
        ],
        dim=-2,
    )


class _DequantizedLinear(torch.autograd.Function):
    """x @ W^T with W dequantized on use, in the forward and again in the backward (W never gets a gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]):
        ctx.save_for_backward(weight, scale_inv)  # the module's own FP8 bytes: saving them copies nothing
        ctx.block = block
        return functional.linear(x, dequantize(weight, scale_inv, block).to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weight, scale_inv = ctx.saved_tensors
        return grad_output @ dequantize(weight, scale_inv, ctx.block).to(grad_output.dtype), None, None, None


def _hit_chunks(offsets: torch.Tensor, per_chunk: int) -> Iterator[tuple[list[int], int, int]]:
    """Groups of at most `per_chunk` experts that received rows, with the rows they own ([first, end) of the rows
    sorted by expert)."""
    ends = offsets.tolist()
    starts = [0, *ends[:-1]]
    hit = [expert for expert, (start, end) in enumerate(zip(starts, ends, strict=True)) if end > start]
    for first in range(0, len(hit), per_chunk):
        experts = hit[first : first + per_chunk]
        yield experts, starts[experts[0]], ends[experts[-1]]


def _grouped(
    rows: torch.Tensor, offsets: torch.Tensor, weight, scale_inv, block, parts: int, per_chunk: int, transpose: bool
) -> torch.Tensor:
    """Each row times its expert's dequantized weight (W_e^T in the forward, W_e in the backward), a chunk of
    experts at a time; rows are sorted by expert and `offsets` are the cumulative row counts per expert."""
    width = weight.shape[-2] if transpose else weight.shape[-1]
    out = rows.new_zeros(rows.shape[0], width)
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    for experts, start, end in _hit_chunks(offsets, per_chunk):
        index = torch.tensor(experts, device=weight.device)
        chosen, scales = weight.index_select(0, index), scale_inv.index_select(0, index)
        dense = dequantize_fused(chosen, scales, block, parts).to(rows.dtype)
        ends = torch.cumsum(counts[index.to(counts.device)], 0, dtype=torch.int32).to(rows.device)
        out[start:end] = _grouped_mm(rows[start:end], dense.transpose(-2, -1) if transpose else dense, offs=ends)
    return out


class _DequantizedGroupedLinear(torch.autograd.Function):
    """The routed experts' projection over FP8 stacks (E, out, in), experts dequantized a chunk at a time."""

    @staticmethod
    def forward(ctx, rows, offsets, weight, scale_inv, block, parts, per_chunk):
        ctx.save_for_backward(offsets, weight, scale_inv)
        ctx.block, ctx.parts, ctx.per_chunk = block, parts, per_chunk
        return _grouped(rows, offsets, weight, scale_inv, block, parts, per_chunk, transpose=True)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        offsets, weight, scale_inv = ctx.saved_tensors
        grad = _grouped(grad_output, offsets, weight, scale_inv, ctx.block, ctx.parts, ctx.per_chunk, transpose=False)
        return grad, None, None, None, None, None, None


def _frozen_bytes(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().view(torch.uint8), requires_grad=False)


class FrozenFP8Linear(nn.Linear):
    """A Linear layer over a block-scaled FP8 weight, frozen; an nn.Linear so that PEFT's LoRA wraps it as one."""

    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], compute_dtype) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a full-precision weight
        self.out_features, self.in_features = weight.shape
        self.weight = _frozen_bytes(weight)
        self.weight_scale_inv = nn.Parameter(scale_inv.detach().float(), requires_grad=False)
        self.register_parameter("bias", None)
        self.block = tuple(block)
        self.compute_dtype = compute_dtype  # PEFT gives the LoRA weights this dtype (not the weight's uint8)

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale_inv, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DequantizedLinear.apply(x, self.weight, self.weight_scale_inv, self.block)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 blocks={self.block}"


class FrozenFP8Experts(nn.Module):
    """DeepSeek-V3's routed experts over FP8 stacks: gate_up_proj (E, 2I, H) and down_proj (E, H, I), as raw bytes
    with their block scales. The forward is cc-train's grouped-by-expert one (models/expert_lora.py), which adds the
    experts' LoRA when PEFT wraps `gate_up_proj` / `down_proj`; the base projections dequantize `per_chunk`
    experts at a time."""

    is_transposed = False
    has_gate = True
    has_bias = False

    def __init__(self, source: nn.Module, block: tuple[int, int], compute_dtype, per_chunk: int) -> None:
        super().__init__()
        self.num_experts = source.num_experts
        self.hidden_dim, self.intermediate_dim = source.hidden_dim, source.intermediate_dim
        self.act_fn = source.act_fn
        self.gate_up_proj = _frozen_bytes(source.gate_up_proj)
        self.gate_up_proj_scale_inv = nn.Parameter(source.gate_up_proj_scale_inv.detach().float(), requires_grad=False)
        self.down_proj = _frozen_bytes(source.down_proj)
        self.down_proj_scale_inv = nn.Parameter(source.down_proj_scale_inv.detach().float(), requires_grad=False)
        self.block = tuple(block)
        self.compute_dtype = compute_dtype
        self.per_chunk = per_chunk

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    @staticmethod
    def parts(name: str) -> int:
        """gate_up_proj stacks the release's gate_proj and up_proj, each quantized with its own blocks."""
        return 2 if name == "gate_up_proj" else 1

    def base_projection(self, name: str, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """rows @ W_e^T for each row's expert e (rows sorted by expert, `offsets` their cumulative counts)."""
        weight, scale_inv = getattr(self, name), getattr(self, name + SCALE_SUFFIX)
        parts = self.parts(name)
        return _DequantizedGroupedLinear.apply(rows, offsets, weight, scale_inv, self.block, parts, self.per_chunk)

    def dequantized(self, name: str) -> torch.Tensor:
        weight, scale_inv = getattr(self, name), getattr(self, name + SCALE_SUFFIX)
        return dequantize_fused(weight, scale_inv, self.block, self.parts(name))

    def forward(self, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
        from cc_train.models.expert_lora import grouped_lora_experts_forward

        return grouped_lora_experts_forward(self, hidden_states, top_k_index, top_k_weights)


def is_fp8_release(config: dict) -> bool:
    """A checkpoint config.json of a block-scaled FP8 release (DeepSeek-V3/V3.1's `quantization_config`)."""
    quant = config.get("quantization_config") or {}
    return quant.get("quant_method") == "fp8" and bool(quant.get("weight_block_size"))


@contextmanager
def fp8_kept() -> Iterator[None]:
    """Make transformers load an FP8 release as FP8 on every device: its quantizer turns a GPU-less load into a
    BF16 dequantization (the whole model in BF16), which is exactly what this module avoids."""
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

    class KeptFP8Quantizer(FineGrainedFP8HfQuantizer):
        def validate_environment(self, *args, **kwargs) -> None:
            self.quantization_config.dequantize = False  # our modules compute on any device

        @property
        def is_trainable(self) -> bool:  # LoRA over our frozen modules has a backward
            return True

    with mock.patch.dict(AUTO_QUANTIZER_MAPPING, {"fp8": KeptFP8Quantizer}):
        yield


def freeze_fp8_modules(model: nn.Module, compute_dtype: torch.dtype, experts_per_chunk: int) -> int:
    """Replace transformers' FP8Linear / FP8Experts of a loaded release by FrozenFP8Linear / FrozenFP8Experts (the
    same tensors, no copy); returns how many modules were replaced."""
    from transformers.integrations.finegrained_fp8 import FP8Experts, FP8Linear

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, FP8Linear):
            if module.bias is not None or module.block_size is None:
                raise ValueError(f"{name}: expected a block-scaled FP8 weight without bias (DeepSeek's release)")
            frozen = FrozenFP8Linear(module.weight, module.weight_scale_inv, module.block_size, compute_dtype)
        elif isinstance(module, FP8Experts):
            frozen = FrozenFP8Experts(module, module.block_size, compute_dtype, experts_per_chunk)
        else:
            continue
        model.set_submodule(name, frozen)
        replaced += 1
    return replaced


def load_fp8_release(path: str, dtype: torch.dtype, experts_per_chunk: int, **kwargs) -> nn.Module:
    """The FP8 release at `path` (a folder or Hub id) as a causal LM whose projections stay FP8 and frozen; the rest
    (embeddings, norms, router, lm_head) in `dtype`. `kwargs` go to from_pretrained (revision, device_map)."""
    from transformers import AutoModelForCausalLM

    with fp8_kept():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    freeze_fp8_modules(model, dtype, experts_per_chunk)
    return model
