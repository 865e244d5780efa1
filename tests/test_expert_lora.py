"""Fused-expert LoRA without folding (models/expert_lora.py): the same outputs and the same gradients as PEFT's folded
W + B@A, on the tiny Qwen3-MoE and DeepSeek-V3 with the paper's module set; PEFT's saved format unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_run
from peft import get_peft_model

from cc_train.models.expert_lora import IMPLEMENTATION, use_grouped_expert_lora
from cc_train.models.loading import load_model
from cc_train.models.lora import exact_targets, lora_config


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_grouped_expert_lora_equals_pefts_fold(tiny_checkpoints, arch, tmp_path):
    run, _ = compose_run(f"model=tiny_{arch}", "peft=paper")
    torch.manual_seed(0)
    with exact_targets():  # PEFT as it is: its parametrization folds W + B@A
        folded = get_peft_model(load_model(run.model, "cpu"), lora_config(run.model.arch, run.peft))
    assert folded.get_base_model().config._experts_implementation != IMPLEMENTATION
    for name, param in folded.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    folded.train()
    grouped = copy.deepcopy(folded)
    assert use_grouped_expert_lora(grouped) == 2  # gate_up_proj and down_proj of the one MoE layer
    assert grouped.get_base_model().config._experts_implementation == IMPLEMENTATION

    torch.manual_seed(1)
    ids = torch.randint(3, grouped.get_base_model().config.vocab_size, (2, 19))
    results = []
    for model in (folded, grouped):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.logits.detach(), grads))
    (folded_logits, folded_grads), (grouped_logits, grouped_grads) = results
    assert (grouped_logits - folded_logits).abs().max().item() <= 1e-5 * folded_logits.abs().max().item()
    experts = [n for n in folded_grads if ".mlp.experts." in n]  # routed, not shared_experts
    assert len(experts) == 4  # lora_A and lora_B of gate_up_proj and down_proj
    for name, grad in folded_grads.items():
        scale = grad.abs().max().item()
        assert scale > 0 and (grouped_grads[name] - grad).abs().max().item() <= 1e-5 * scale, name

    grouped.save_pretrained(tmp_path / "grouped")  # PEFT's own format: the same tensor names as the folded model's
    folded.save_pretrained(tmp_path / "folded")
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "grouped" / "adapter_model.safetensors"),
        load_file(tmp_path / "folded" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_and_loading_take_the_grouped_path(tiny_checkpoints, tmp_path):
    from cc_train.models.lora import load_adapter, wrap_with_lora

    run, _ = compose_run("model=tiny_qwen3_moe", "peft=paper")
    wrapped, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    assert wrapped.get_base_model().config._experts_implementation == IMPLEMENTATION
    wrapped.save_pretrained(tmp_path / "adapter")
    loaded = load_adapter(load_model(run.model, "cpu"), tmp_path / "adapter")
    assert loaded.get_base_model().config._experts_implementation == IMPLEMENTATION
