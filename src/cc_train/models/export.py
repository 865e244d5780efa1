"""Export a fused-expert PEFT adapter into the per-expert layout vLLM serves as LoRA (Qwen3-MoE, DeepSeek-V3).

PEFT trains LoRA on transformers 5's fused 3-D expert parameters (`target_parameters`) and saves, per MoE layer:
  mlp.experts.base_layer.lora_A / lora_B   gate_up_proj  A (E*r, hidden)            B (2*I, E*r)
  mlp.experts.lora_A / lora_B              down_proj     A (E*r, I)                 B (hidden, E*r)
(the first target is wrapped first, so it ends up as `base_layer`). A's rows are expert-major: expert e owns rows
e*r .. e*r+r-1; B's columns are expert-minor: expert e owns columns e, e+E, e+2E, ... And the fused gate_up
parameter is gate rows then up rows (transformers' `chunk(2)`), not interleaved. So, with scaling alpha/r as
before, expert e's deltas are
  gate: B_gu[:I, e::E] @ A_gu[e*r:(e+1)*r]   up: B_gu[I:, e::E] @ A_gu[e*r:(e+1)*r]   down: B_d[:, e::E] @ A_d[e*r:...]
vLLM 0.32 loads per-expert 2-D LoRA for these models (`mlp.experts.<e>.gate_proj|up_proj|down_proj`, A (r, in),
B (out, r); vllm/lora/lora_weights.py `pack_moe`), which needs every expert to have all three. Its own fallback for
fused PEFT files guesses interleaved gate/up rows; this export does not rely on it.

The export lives in `<adapter>/vllm/` (adapter_config.json + adapter_model.safetensors), written atomically.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cc_train.errors import UserError
from cc_train.files import write_canonical_adapter_config

EXPORT_DIR = "vllm"
EXPERT_KEY = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<base>base_layer\.)?lora_(?P<part>[AB])\.weight$")


class ExportError(UserError):
    """An adapter's expert tensors do not have the layout this export reads; the message says what was found."""


def fused_expert_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """prefix -> {"outer"|"inner": {"A": tensor, "B": tensor}} for every fused-expert LoRA in a PEFT state dict."""
    found: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        match = EXPERT_KEY.match(key)
        if match:
            slot = "inner" if match["base"] else "outer"
            found.setdefault(match["prefix"], {}).setdefault(slot, {})[match["part"]] = tensor
    return found


def split_experts(a: torch.Tensor, b: torch.Tensor, experts: int, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-expert (A_e (r, in), B_e (out, r)) from PEFT's fused A (E*r, in) and B (out, E*r)."""
    if a.shape[0] != experts * rank or b.shape[1] != experts * rank:
        raise ExportError(
            f"fused expert LoRA of shapes A {tuple(a.shape)}, B {tuple(b.shape)}: expected "
            f"{experts} experts x rank {rank} = {experts * rank} rows of A and columns of B"
        )
    return [(a[e * rank : (e + 1) * rank].contiguous(), b[:, e::experts].contiguous()) for e in range(experts)]


def per_expert_tensors(
    tensors: dict[str, torch.Tensor], rank: int, experts: int, hidden: int, intermediate: int
) -> dict[str, torch.Tensor]:
    """The adapter's tensors with each fused expert pair replaced by per-expert gate/up/down LoRA."""
    exported = {key: t for key, t in tensors.items() if not EXPERT_KEY.match(key)}
    for prefix, slots in fused_expert_pairs(tensors).items():
        pairs = list(slots.values())
        gate_up = [p for p in pairs if p["A"].shape[1] == hidden and p["B"].shape[0] == 2 * intermediate]
        down = [p for p in pairs if p["A"].shape[1] == intermediate and p["B"].shape[0] == hidden]
        if len(pairs) != 2 or len(gate_up) != 1 or len(down) != 1:
            shapes = {slot: (tuple(p["A"].shape), tuple(p["B"].shape)) for slot, p in slots.items()}
            raise ExportError(
                f"{prefix}: expected LoRA on both gate_up_proj (A (E*r, {hidden}), B ({2 * intermediate}, E*r)) and "
                f"down_proj (A (E*r, {intermediate}), B ({hidden}, E*r)), found {shapes}; vLLM needs all three "
                "projections of every expert"
            )
        gate_up_pairs = split_experts(gate_up[0]["A"], gate_up[0]["B"], experts, rank)
        down_pairs = split_experts(down[0]["A"], down[0]["B"], experts, rank)
        for e, ((a_gu, b_gu), (a_d, b_d)) in enumerate(zip(gate_up_pairs, down_pairs, strict=True)):
            for name, a, b in (
                ("gate_proj", a_gu, b_gu[:intermediate]),
                ("up_proj", a_gu.clone(), b_gu[intermediate:]),
                ("down_proj", a_d, b_d),
            ):
                exported[f"{prefix}.{e}.{name}.lora_A.weight"] = a.contiguous()
                exported[f"{prefix}.{e}.{name}.lora_B.weight"] = b.contiguous()
    return exported


def export_config(config: dict) -> dict:
    """PEFT's adapter_config for the per-expert copy: plain target_modules, no target_parameters."""
    exported = dict(config)
    exported.pop("target_parameters", None)
    modules = list(exported.get("target_modules") or [])
    exported["target_modules"] = modules + [
        name for name in ("gate_proj", "up_proj", "down_proj") if name not in modules
    ]
    for key in ("rank_pattern", "alpha_pattern"):  # PEFT keys them by the fused parameter names, which are gone
        exported[key] = {
            k: v for k, v in (exported.get(key) or {}).items() if "gate_up_proj" not in k and "down_proj" not in k
        }
    return exported


def expert_count(base_config: dict) -> int:
    """Routed experts per MoE layer, under the name each family's config.json uses."""
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):  # Hub Qwen3-MoE, transformers 5, DeepSeek
        if base_config.get(key):
            return int(base_config[key])
    raise ExportError(
        f"the base model's config has no routed-expert count (num_experts / n_routed_experts): {base_config}"
    )


def export_per_expert(adapter_dir: str | Path, base_config: dict) -> Path | None:
    """Write `<adapter_dir>/vllm/` for an adapter with fused-expert LoRA (None when it has none)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if not config.get("target_parameters"):
        return None
    patterns = {**(config.get("rank_pattern") or {}), **(config.get("alpha_pattern") or {})}
    if any(value not in (config["r"], config["lora_alpha"]) for value in patterns.values()):
        raise ExportError(f"{adapter_dir}: rank_pattern/alpha_pattern {patterns} differ from r / lora_alpha")
    experts = expert_count(base_config)
    tensors = per_expert_tensors(
        load_file(adapter_dir / "adapter_model.safetensors"),
        config["r"],
        experts,
        base_config["hidden_size"],
        base_config["moe_intermediate_size"],
    )
    out = adapter_dir / EXPORT_DIR
    staging = Path(tempfile.mkdtemp(dir=adapter_dir, prefix=f".{EXPORT_DIR}."))
    try:
        save_file(tensors, staging / "adapter_model.safetensors")
        (staging / "adapter_config.json").write_text(json.dumps(export_config(config), indent=2) + "\n")
        write_canonical_adapter_config(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def served_lora_dir(adapter_dir: str | Path, base_config: dict) -> Path:
    """The folder vLLM should load as this adapter's (or training checkpoint's) LoRA: the per-expert export for
    fused-expert LoRA, written now where it is missing (an older adapter, a checkpoint)."""
    adapter_dir = Path(adapter_dir)
    if not json.loads((adapter_dir / "adapter_config.json").read_text()).get("target_parameters"):
        return adapter_dir
    if (adapter_dir / EXPORT_DIR / "adapter_model.safetensors").exists():
        return adapter_dir / EXPORT_DIR
    return export_per_expert(adapter_dir, base_config)
