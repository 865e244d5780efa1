"""What cc-train knows per architecture: LoRA targets per preset, the router, templates, serving format."""

from __future__ import annotations

from dataclasses import dataclass

from cc_train.config import Arch, ConfigError, Preset
from cc_train.models import templates


@dataclass(frozen=True)
class Architecture:
    arch: Arch
    attention: tuple[str, ...]  # nn.Linear leaf names of the attention block
    mlp: tuple[str, ...]  # nn.Linear leaf names of dense MLPs and shared experts
    experts: tuple[str, ...]  # fused 3-D routed-expert parameters (PEFT `target_parameters`)
    router: tuple[str, ...]  # module names that must never be wrapped
    not_served: tuple[str, ...]  # targets vLLM silently ignores: left out of presets so serving == training
    chat_template: str
    special_tokens: dict
    thinking: str  # how thinking is kept off, for the manifest and the README
    # Expert LoRA layout vLLM can serve for this family ("per_expert_2d" or "fused_3d").
    served_expert_format: str
    moe_block: str | None = None  # class registered as a DeepSpeed ZeRO-3 leaf module


ARCHITECTURES: dict[Arch, Architecture] = {
    Arch.llama: Architecture(
        arch=Arch.llama,
        attention=("q_proj", "k_proj", "v_proj", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),
        experts=(),
        router=(),
        not_served=(),
        chat_template=templates.CHATML,
        special_tokens=templates.CHATML_SPECIAL_TOKENS,
        thinking="no thinking mode",
        served_expert_format="none",
    ),
    Arch.qwen3: Architecture(
        arch=Arch.qwen3,
        attention=("q_proj", "k_proj", "v_proj", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),
        experts=(),
        router=(),
        not_served=(),
        chat_template=templates.CHATML,
        special_tokens=templates.CHATML_SPECIAL_TOKENS,
        thinking="template renders no <think> block in training or sampling",
        served_expert_format="none",
    ),
    Arch.qwen3_moe: Architecture(
        arch=Arch.qwen3_moe,
        attention=("q_proj", "k_proj", "v_proj", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),  # only layers in config.mlp_only_layers have them
        experts=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
        router=("mlp.gate",),
        not_served=(),
        chat_template=templates.CHATML,
        special_tokens=templates.CHATML_SPECIAL_TOKENS,
        thinking="2507-Instruct has no thinking mode; template renders no <think> block",
        served_expert_format="per_expert_2d",
        moe_block="Qwen3MoeSparseMoeBlock",
    ),
    Arch.deepseek_v3: Architecture(
        arch=Arch.deepseek_v3,
        # kv_b_proj is absent on purpose: vLLM's MLA folds it into its kernels and ignores LoRA on it.
        attention=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),  # dense first layers + shared experts
        experts=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
        router=("mlp.gate",),
        not_served=("kv_b_proj",),
        chat_template=templates.DEEPSEEK_V31,
        special_tokens=templates.DEEPSEEK_SPECIAL_TOKENS,
        thinking="V3.1 non-thinking mode: '<｜Assistant｜></think>' opens every assistant turn",
        served_expert_format="per_expert_2d",
        moe_block="DeepseekV3MoE",
    ),
}


def architecture(arch: Arch | str) -> Architecture:
    return ARCHITECTURES[Arch(arch)]


@dataclass(frozen=True)
class LoraTargets:
    modules: tuple[str, ...]  # leaf names of nn.Linear layers
    parameters: tuple[str, ...]  # suffixes of fused expert parameters


def preset_targets(arch: Arch | str, preset: Preset | str) -> LoraTargets:
    spec = architecture(arch)
    preset = Preset(preset)
    if preset == Preset.attn:
        return LoraTargets(spec.attention, ())
    if preset == Preset.attn_mlp:
        return LoraTargets(spec.attention + spec.mlp, ())
    if not spec.experts:
        raise ConfigError(
            f"peft.preset=attn_experts is invalid for model.arch={spec.arch.value}: it has no "
            "routed experts; expected attn or attn_mlp"
        )
    return LoraTargets(spec.attention, spec.experts)
