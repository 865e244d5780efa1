"""LoRA on fused routed experts without folding: each token's expert applies x @ A_e then @ B_e, grouped by expert.

PEFT 0.21 adapts the fused 3-D expert parameters of transformers 5 (`target_parameters`) through a parametrization:
every forward builds W + scale * B @ A for all experts of a layer (one baddbmm over E x out x in), and the backward
keeps that folded copy and its gradient, two full expert stacks per layer. Here PEFT's wrapper around an experts
module hands its LoRA factors to the experts' own forward instead, which computes the frozen base projection as
transformers' grouped kernel does and adds scale * (x @ A_e^T) @ B_e^T for the tokens routed to expert e, grouped by
expert: the extra memory is the (tokens x r) intermediate. The LoRA weights are PEFT's own modules, so adapters
save, load, merge and export exactly as before; equality with PEFT's outputs and gradients is tested.

Only the layout transformers 5 uses for Qwen3-MoE and DeepSeek-V3 experts, (E, out, in), with one active adapter in
full or half precision, takes this path; anything else falls back to PEFT's fold. Experts over a frozen FP8 release
(models/fp8.py) compute their own base projection (`base_projection`) and can only take this path: PEFT's fold would
add B @ A to raw FP8 bytes.
"""

from __future__ import annotations

import types

import torch
from peft.tuners.lora.layer import ParamWrapper
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, _grouped_linear

IMPLEMENTATION = "cc_train_grouped_lora"
FACTORS = "_cc_train_lora_factors"  # on the experts module while its wrappers run: name -> (A, B, scale)


def _factors(wrapper: ParamWrapper, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PEFT's factors of one fused-expert parameter (E, out, in) as grouped stacks A (E, r, in) and B (E, out, r)."""
    experts = wrapper.num_experts
    weight_a, weight_b = wrapper.lora_A[adapter].weight, wrapper.lora_B[adapter].weight
    a = weight_a.reshape(experts, -1, weight_a.shape[-1]).contiguous()  # PEFT: rows expert-major
    b = weight_b.reshape(weight_b.shape[0], -1, experts).permute(2, 0, 1).contiguous()  # columns expert-minor
    return a, b, wrapper.scaling[adapter]


def _grouped_path(wrapper: ParamWrapper) -> str | None:
    """The single active adapter when this wrapper can hand its factors over, else None (PEFT folds)."""
    adapters = [name for name in wrapper.active_adapters if name in wrapper.lora_A]
    if wrapper.disable_adapters or wrapper.merged or len(adapters) != 1 or wrapper.num_experts < 2:
        return None
    own_projection = hasattr(wrapper.get_base_layer(), "base_projection")  # FP8 experts
    if not wrapper._did_swap_in_out_features or (
        wrapper.get_param().dtype not in (torch.float32, torch.bfloat16) and not own_projection
    ):
        return None
    return adapters[0]


def _wrapper_forward(self: ParamWrapper, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = _grouped_path(self)
    if adapter is None or kwargs.get("adapter_names") is not None:
        if hasattr(self.get_base_layer(), "base_projection") and not self.disable_adapters:
            raise NotImplementedError(
                f"LoRA on FP8 experts ({self.parameter_name}) runs with one active, unmerged adapter per forward "
                "(no mixed-adapter batches, no merge into the FP8 weights)"
            )
        return ParamWrapper.forward(self, x, *args, **kwargs)
    experts = self.get_base_layer()
    factors = experts.__dict__.setdefault(FACTORS, {})
    factors[self.parameter_name] = _factors(self, adapter)
    try:
        return self.base_layer(x, *args, **kwargs)
    finally:
        factors.pop(self.parameter_name, None)


def _projection(module, name: str, inputs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """inputs @ W_e^T for each row's expert e, plus its LoRA when the wrapper handed factors over."""
    own_projection = getattr(module, "base_projection", None)  # FP8 experts dequantize their own weights
    if own_projection is not None:
        out = own_projection(name, inputs, offsets)
    else:
        out = _grouped_linear(inputs, getattr(module, name), offsets, is_transposed=module.is_transposed)
    factors = module.__dict__.get(FACTORS, {}).get(name)
    if factors is not None:
        a, b, scale = factors
        low_rank = _grouped_linear(inputs, a.to(inputs.dtype), offsets)  # (S, r)
        out = out + scale * _grouped_linear(low_rank, b.to(inputs.dtype), offsets)
    return out


def grouped_lora_experts_forward(self, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
    """transformers' grouped-by-expert forward (integrations/moe.py) with each projection's LoRA added low rank."""
    num_top_k, num_tokens, hidden_dim = top_k_index.size(-1), hidden_states.size(0), hidden_states.size(-1)
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    inputs = hidden_states[order // num_top_k]
    weights = top_k_weights.reshape(-1)[order]
    counts = torch.bincount(expert_ids, minlength=self.num_experts)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    gated = self._apply_gate(_projection(self, "gate_up_proj", inputs, offsets))
    out = _projection(self, "down_proj", gated, offsets) * weights.unsqueeze(-1)
    restored = torch.empty_like(out)
    restored[order] = out
    return restored.view(num_tokens, num_top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, grouped_lora_experts_forward)


def use_grouped_expert_lora(model) -> int:
    """Route `model`'s fused-expert LoRA through the grouped path; returns how many expert wrappers it took."""
    wrappers = [m for m in model.modules() if isinstance(m, ParamWrapper) and m.num_experts > 1]
    for wrapper in wrappers:
        wrapper.forward = types.MethodType(_wrapper_forward, wrapper)
    if wrappers:
        config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        config._experts_implementation = IMPLEMENTATION
    return len(wrappers)
