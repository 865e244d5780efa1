"""Fused-expert adapters exported per expert for vLLM: every expert's delta equals PEFT's, vLLM's own loader and
packer accept the export, and a wrong layout (gate/up swapped, a transposed factor) is caught by the same check."""

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from peft.tuners.lora.layer import ParamWrapper
from safetensors.torch import load_file, save_file

from cc_train.models.export import expert_count, export_per_expert
from cc_train.models.loading import ensure_checkpoint, load_model
from cc_train.models.lora import wrap_with_lora

ARCHS = ["qwen3_moe", "deepseek_v3"]


def trained_adapter(arch: str, tmp_path: Path) -> tuple[object, Path, dict]:
    """A tiny attn_experts adapter with random (non-zero) LoRA factors, saved in PEFT's format."""
    run, _ = compose_run(f"model=tiny_{arch}", "peft=attn_experts", "peft.r=4")
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data.normal_(std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((Path(ensure_checkpoint(run.model)) / "config.json").read_text())
    return model, tmp_path / "adapter", config


def rebuilt_deltas(exported: dict, prefix: str, experts: int, scaling: float, part: str) -> torch.Tensor:
    """(E, out, in) from the per-expert tensors, as vLLM applies them: gate and up stacked for gate_up_proj."""
    names = ("gate_proj", "up_proj") if part == "gate_up_proj" else ("down_proj",)
    return torch.stack(
        [
            torch.cat(
                [
                    exported[f"{prefix}.{e}.{n}.lora_B.weight"] @ exported[f"{prefix}.{e}.{n}.lora_A.weight"]
                    for n in names
                ]
            )
            * scaling
            for e in range(experts)
        ]
    )


def max_delta_error(model, exported: dict, experts: int) -> dict[str, float]:
    errors = {}
    for name, module in model.named_modules():
        if isinstance(module, ParamWrapper):
            prefix = name.removesuffix(".base_layer") if name.endswith(".base_layer") else name
            peft_delta = module.get_delta_weight("default")
            ours = rebuilt_deltas(exported, prefix, experts, module.scaling["default"], module.parameter_name)
            assert peft_delta.shape == module.get_param().shape
            errors[f"{prefix}.{module.parameter_name}"] = (
                (peft_delta - ours.reshape(peft_delta.shape)).abs().max().item()
            )
    return errors


@pytest.mark.parametrize("arch", ARCHS)
def test_every_experts_exported_delta_equals_pefts(arch, tiny_checkpoints, tmp_path):
    model, adapter, config = trained_adapter(arch, tmp_path)
    export = export_per_expert(adapter, config)
    assert (
        export == adapter / "vllm"
        and json.loads((export / "adapter_config.json").read_text()).get("target_parameters") is None
    )
    exported = load_file(export / "adapter_model.safetensors")
    experts = expert_count(config)
    errors = max_delta_error(model, exported, experts)
    assert len(errors) == 2 * 1  # gate_up and down of the one MoE layer
    print(f"{arch}: exported vs PEFT per-expert delta, max |difference| {max(errors.values()):.2e} ({errors})")
    assert max(errors.values()) < 1e-6, errors
    assert not any(".mlp.experts.base_layer" in key or key.endswith("experts.lora_A.weight") for key in exported)
    # non-expert LoRA (attention) is copied as is
    original = load_file(adapter / "adapter_model.safetensors")
    attention = [key for key in original if "self_attn" in key]
    assert attention and all(torch.equal(original[key], exported[key]) for key in attention)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mistake", ["gate_up_swapped", "transposed"])
def test_a_wrong_layout_fails_the_delta_check(arch, mistake, tiny_checkpoints, tmp_path):
    model, adapter, config = trained_adapter(arch, tmp_path)
    exported = load_file(export_per_expert(adapter, config) / "adapter_model.safetensors")
    experts = expert_count(config)
    wrong = dict(exported)
    for key in exported:
        if ".experts.0.gate_proj." in key and mistake == "gate_up_swapped":
            other = key.replace("gate_proj", "up_proj")
            wrong[key], wrong[other] = exported[other], exported[key]
        if ".experts.1.down_proj.lora_A" in key and mistake == "transposed":
            # B_e as if read as contiguous column blocks instead of expert-minor columns
            b_key = key.replace("lora_A", "lora_B")
            blocks = [exported[b_key.replace(".experts.1.", f".experts.{e}.")] for e in range(experts)]
            fused_b = torch.cat(blocks, dim=1)
            rank = exported[key].shape[0]
            wrong[b_key] = (
                fused_b.reshape(fused_b.shape[0], rank, experts)
                .permute(0, 2, 1)
                .reshape(fused_b.shape)[:, rank : 2 * rank]
            )
    assert max(max_delta_error(model, wrong, experts).values()) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_vllms_own_loader_accepts_the_export_and_packs_the_same_matrices(arch, tiny_checkpoints, tmp_path):
    """vLLM 0.32's checkpoint loader (unexpected-module check included) and its MoE packer, as the engine calls
    them; the GPU kernels that then apply the packed tensors are not run here."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.lora_weights import PackedLoRALayerWeights
    from vllm.lora.peft_helper import PEFTHelper

    _, adapter, config = trained_adapter(arch, tmp_path)
    export = export_per_expert(adapter, config)
    experts = expert_count(config)
    # the names vLLM expects for these models (worker_manager: every Linear's name, packed parts, experts.<e>.*)
    attention = (
        ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
        if arch == "deepseek_v3"
        else ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    per_expert = [f"experts.{e}.{p}" for e in range(experts) for p in ("gate_proj", "down_proj", "up_proj")]
    expected = {*attention, "gate_proj", "up_proj", "down_proj", "gate", "experts", *per_expert}
    helper = PEFTHelper.from_local_dir(str(export), max_position_embeddings=4096)
    lora = LoRAModel.from_local_checkpoint(
        str(export), expected, helper, lora_model_id=1, device="cpu", dtype=torch.float32
    )
    exported = load_file(export / "adapter_model.safetensors")
    layer = next(name for name in lora.loras if name.endswith("mlp.experts.0.gate_proj")).removesuffix(".0.gate_proj")
    order = [lora.loras[f"{layer}.{e}.{p}"] for e in range(experts) for p in ("gate_proj", "down_proj", "up_proj")]
    packed = PackedLoRALayerWeights.pack_moe(order, layer)
    key = f"base_model.model.{layer}"
    for slot, projection in enumerate(("gate_proj", "down_proj", "up_proj")):
        expected_a = torch.stack([exported[f"{key}.{e}.{projection}.lora_A.weight"] for e in range(experts)])
        expected_b = torch.stack([exported[f"{key}.{e}.{projection}.lora_B.weight"] for e in range(experts)])
        assert torch.equal(packed.lora_a[slot], expected_a) and torch.equal(packed.lora_b[slot], expected_b)
    assert helper.vllm_lora_scaling_factor == helper.lora_alpha / helper.r  # PEFT's scaling, applied at run time
    # and vLLM refuses what it cannot place: a tensor for a module the model does not have
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((export / "adapter_config.json").read_text())
    save_file(
        {**exported, "base_model.model.model.layers.0.mlp.nonsense.lora_A.weight": torch.zeros(4, 8)},
        broken / "adapter_model.safetensors",
    )
    with pytest.raises(ValueError, match="nonsense"):
        LoRAModel.from_local_checkpoint(str(broken), expected, helper, lora_model_id=2, device="cpu")
