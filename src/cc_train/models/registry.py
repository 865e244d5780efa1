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
    # Modules vLLM 0.32 cannot serve as LoRA for this family (it ignores or refuses them): presets leave them out
    # unless peft.unservable=train, and adapters that have them are evaluated merged.
    vllm_unservable: tuple[str, ...]
    chat_template: str
    special_tokens: dict
    thinking: str  # how thinking is kept off, for the manifest and the README
    # Expert LoRA layout vLLM can serve for this family ("per_expert_2d" or "fused_3d").
    served_expert_format: str


ARCHITECTURES: dict[Arch, Architecture] = {
    Arch.llama: Architecture(
        arch=Arch.llama,
        attention=("q_proj", "k_proj", "v_proj", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),
        experts=(),
        router=(),
        vllm_unservable=(),
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
        vllm_unservable=(),
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
        vllm_unservable=(),
        chat_template=templates.CHATML,
        special_tokens=templates.CHATML_SPECIAL_TOKENS,
        thinking="2507-Instruct has no thinking mode; template renders no <think> block",
        served_expert_format="per_expert_2d",
    ),
    Arch.deepseek_v3: Architecture(
        arch=Arch.deepseek_v3,
        attention=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
        mlp=("gate_proj", "up_proj", "down_proj"),  # dense first layers + shared experts
        experts=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
        router=("mlp.gate",),
        # kv_b_proj: vLLM's MLA absorbs it into its kernels and ignores LoRA on it (vllm/.../mla_attention.py);
        # lm_head: DeepseekV2/V3 declare no embedding_modules, so vLLM refuses an adapter that has it.
        vllm_unservable=("kv_b_proj", "lm_head"),
        chat_template=templates.DEEPSEEK_V31,
        special_tokens=templates.DEEPSEEK_SPECIAL_TOKENS,
        thinking="V3.1 non-thinking mode: '<｜Assistant｜></think>' opens every assistant turn",
        served_expert_format="per_expert_2d",
    ),
}


UNEMBEDDING = ("lm_head",)  # every family's output projection: an nn.Linear PEFT wraps like any other


def architecture(arch: Arch | str) -> Architecture:
    return ARCHITECTURES[Arch(arch)]


@dataclass(frozen=True)
class LoraTargets:
    modules: tuple[str, ...]  # leaf names of nn.Linear layers
    parameters: tuple[str, ...]  # suffixes of fused expert parameters


def preset_targets(arch: Arch | str, preset: Preset | str, unservable: str = "exclude") -> LoraTargets:
    """What a preset adapts on `arch`; `unservable="exclude"` drops the modules vLLM cannot serve as LoRA."""
    spec = architecture(arch)
    preset = Preset(preset)
    if preset == Preset.attn_experts and not spec.experts:
        raise ConfigError(
            f"peft.preset=attn_experts is invalid for model.arch={spec.arch.value}: it has no "
            "routed experts; expected attn, attn_mlp or paper"
        )
    modules = spec.attention
    if preset in (Preset.attn_mlp, Preset.paper):
        modules += spec.mlp
    if preset == Preset.paper:
        modules += UNEMBEDDING
    experts = spec.experts if preset in (Preset.attn_experts, Preset.paper) else ()
    if unservable == "exclude":
        modules = tuple(name for name in modules if name not in spec.vllm_unservable)
    return LoraTargets(modules, experts)


def unservable_targets(arch: Arch | str, target_modules: list[str] | tuple[str, ...]) -> list[str]:
    """The targets among `target_modules` that vLLM cannot serve as LoRA on `arch`."""
    return sorted(name for name in target_modules if name in architecture(arch).vllm_unservable)
