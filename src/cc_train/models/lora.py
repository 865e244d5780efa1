"""Wrap a base model with LoRA for a preset, and audit what PEFT actually adapted.

PEFT 0.21 on transformers 5 rewrites `gate_proj/up_proj/down_proj` targets of MoE families into the
fused routed-expert parameters and drops them from `target_modules`, which silently leaves
DeepSeek's dense MLPs and shared experts untrained. We switch that rewrite off (experts are
targeted explicitly through `target_parameters`) and audit the result against the preset anyway.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import peft.utils.transformers_weight_conversion as peft_conversion
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import LoraLayer, ParamWrapper
from torch import nn
from transformers import PreTrainedModel

from cc_train.config import Arch, PeftConfig, Preset
from cc_train.errors import UserError
from cc_train.models.expert_lora import use_grouped_expert_lora
from cc_train.models.registry import UNEMBEDDING, LoraTargets, architecture, preset_targets, unservable_targets

log = logging.getLogger(__name__)


class AuditError(UserError):
    """PEFT adapted something other than what the preset asked for."""


@contextmanager
def exact_targets() -> Iterator[None]:
    """Make PEFT adapt exactly the modules and parameters named in the config (no v4->v5 MoE rewrite)."""
    with mock.patch.object(peft_conversion, "convert_peft_config_for_transformers", lambda *args, **kwargs: None):
        yield


def lora_config(arch: Arch, peft_cfg: PeftConfig) -> LoraConfig:
    targets = preset_targets(arch, peft_cfg.preset, peft_cfg.unservable)
    return LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=list(targets.modules),
        target_parameters=list(targets.parameters) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap_with_lora(model: PreTrainedModel, arch: Arch, peft_cfg: PeftConfig) -> tuple[PeftModel, dict]:
    with exact_targets():
        wrapped = get_peft_model(model, lora_config(arch, peft_cfg))
    use_grouped_expert_lora(wrapped)  # expert LoRA as x@A@B per expert, not PEFT's folded W + B@A
    result = audit(wrapped, arch, peft_cfg.preset, peft_cfg.unservable)
    if result["excluded_unservable"] and peft_cfg.preset == Preset.paper:
        log.warning(
            "peft.unservable=exclude: %s left out of the paper's module set (vLLM cannot serve LoRA on them); "
            "this adapter differs from the paper's",
            ", ".join(result["excluded_unservable"]),
        )
    return wrapped, result


def load_adapter(
    model: PreTrainedModel, adapter_dir: str | Path, name: str = "default", trainable: bool = False
) -> PeftModel:
    with exact_targets():
        loaded = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name, is_trainable=trainable)
    use_grouped_expert_lora(loaded)
    return loaded


def load_adapters(model: PreTrainedModel, adapters: dict[str, str | Path]) -> PeftModel:
    """Several adapters on one base, each adapting exactly what it names (PEFT's rewrite would turn a second
    adapter's dense gate/up/down targets into fused-expert parameters, and refuse or mis-adapt it)."""
    names = iter(adapters.items())
    first_name, first_path = next(names)
    peft_model = load_adapter(model, first_path, name=first_name)
    with exact_targets():
        for name, path in names:
            peft_model.load_adapter(str(path), adapter_name=name)
    use_grouped_expert_lora(peft_model)  # the wrappers of every adapter
    return peft_model


def _category(name: str, arch: Arch) -> str:
    spec = architecture(arch)
    leaf = name.rsplit(".", 1)[-1]
    if any(name.endswith(suffix) for suffix in spec.experts):
        return "experts"
    if any(f".{router}" in name for router in spec.router) and leaf not in spec.mlp:
        return "router"
    if "shared_expert" in name:
        return "mlp_shared"
    if leaf in spec.mlp:
        return "mlp_dense"
    if leaf in spec.attention:
        return "attention"
    if leaf in UNEMBEDDING:
        return "unembedding"
    return "other"


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
        module = module.get_base_layer()
    return isinstance(module, nn.Linear)  # bitsandbytes' Linear4bit is an nn.Linear too


def _expected(model: nn.Module, targets: LoraTargets) -> tuple[set[str], set[str]]:
    """What the preset asks for, read off the (possibly already wrapped) model by name and type."""
    modules = {
        _strip(name)
        for name, module in model.named_modules()
        if ".base_layer" not in name and _is_linear(module) and name.rsplit(".", 1)[-1] in targets.modules
    }
    parameters = {
        _strip(name)
        for name, param in model.named_parameters()
        if param.dim() == 3 and any(_strip(name).endswith(suffix) for suffix in targets.parameters)
    }
    return modules, parameters


def _leaf(name: str) -> str:
    """`model.layers.1.mlp.shared_experts.up_proj` -> `shared_experts.up_proj`; `...mlp.experts.down_proj` ->
    `experts.down_proj`; `...self_attn.q_a_proj` -> `q_a_proj`."""
    parts = name.split(".")
    grouped = len(parts) > 1 and parts[-2] in ("shared_experts", "shared_expert", "experts")
    return ".".join(parts[-2:]) if grouped else parts[-1]


def _strip(name: str) -> str:
    """PEFT's wrapper names back to base-model names."""
    return re.sub(r"(\.base_layer)+", "", name.removeprefix("base_model.model."))


def audit(model: PeftModel, arch: Arch, preset: Preset, unservable: str = "exclude") -> dict:
    """Compare adapted modules/parameters with the preset; raise AuditError on any drop or extra."""
    targets = preset_targets(arch, preset, unservable)
    full = preset_targets(arch, preset, "train")
    adapted_modules, adapted_params = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, ParamWrapper):
            owner = _strip(name)
            adapted_params.add(f"{owner}.{module.parameter_name}")
        elif isinstance(module, LoraLayer):
            adapted_modules.add(_strip(name))
    base = model.get_base_model()
    expected_modules, expected_params = _expected(base, targets)
    missing = sorted((expected_modules - adapted_modules) | (expected_params - adapted_params))
    extra = sorted((adapted_modules - expected_modules) | (adapted_params - expected_params))
    routers = sorted(name for name in adapted_modules | adapted_params if _category(name, arch) == "router")
    modules_to_save = [name for name, cfg in model.peft_config.items() if getattr(cfg, "modules_to_save", None)]
    counts = Counter(_category(name, arch) for name in adapted_modules | adapted_params)
    result = {
        "preset": Preset(preset).value,
        "requested_modules": list(targets.modules),
        "requested_parameters": list(targets.parameters),
        "unservable": unservable,
        # vLLM cannot serve LoRA on these: the adapter is evaluated merged (or they were left out, below)
        "vllm_unservable_adapted": unservable_targets(arch, targets.modules),
        "excluded_unservable": sorted(set(full.modules) - set(targets.modules)),
        "adapted_counts": dict(sorted(counts.items())),
        "adapted_leaves": dict(sorted(Counter(_leaf(name) for name in adapted_modules | adapted_params).items())),
        "adapted": sorted(adapted_modules | adapted_params),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "expert_format": "fused_3d" if adapted_params else "none",
    }
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} targets requested by preset {result['preset']} were NOT adapted (e.g. {missing[:4]})"
        )
    if extra:
        problems.append(f"{len(extra)} unexpected targets were adapted (e.g. {extra[:4]})")
    if routers:
        problems.append(f"the router was wrapped: {routers[:4]}")
    if modules_to_save:
        problems.append("modules_to_save is set: vLLM cannot serve such adapters")
    if targets.parameters and not adapted_params:
        problems.append("no routed-expert parameter was adapted")
    if problems:
        raise AuditError(f"LoRA audit failed for arch={Arch(arch).value}: " + "; ".join(problems))
    return result
