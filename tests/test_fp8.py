"""LoRA over the frozen FP8 release (models/fp8.py): on the tiny DeepSeek-V3 published as an FP8 release (the
rehearsal's builder), the loss and every LoRA gradient, lm_head and routed experts included, equal those over its
BF16 conversion (prepare-model's) within 1e-5; the FP8 weights stay one byte each and never get a gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_run

from cc_train.launch.prepare import convert
from cc_train.models.fp8 import FrozenFP8Experts, FrozenFP8Linear, dequantize
from cc_train.models.loading import load_model
from cc_train.models.lora import wrap_with_lora
from cc_train.train.loss import compute_loss_in_chunks
from rehearsal.stand_ins import fp8_release, quantize_block_fp8

BLOCK = 32  # several tiles per tiny matrix, partial tiles at the edges


# 32: several tiles per tiny matrix; 128 (the release's): partial tiles, and the routed experts' gate and up halves
# (64 rows each) each with a partial block row of its own
@pytest.fixture(scope="module", params=[BLOCK, 128])
def releases(request, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    fp8 = fp8_release(Path(tiny_checkpoints["deepseek_v3"]), root / "fp8", block=request.param)
    convert(fp8, root / "bf16")
    return {"fp8": fp8, "bf16": root / "bf16"}


def lora_model(path: Path, *overrides: str):
    run, _ = compose_run(
        "model=tiny_deepseek_v3", f"model.path={path}", "model.build.kind=none", "peft=paper", *overrides
    )
    torch.manual_seed(0)
    model, audit = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    generator = torch.Generator().manual_seed(1)
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:  # the same non-zero factors in both models, so every factor gets a gradient
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})  # the forward runs twice
    model.train()
    compute_loss_in_chunks(model, chunk_tokens=7)
    return model, audit


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    input_ids = torch.randint(3, model.get_base_model().config.vocab_size, (2, 29))
    labels = input_ids.clone()
    labels[0, :9] = -100
    labels[1, 20:] = -100
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_dequantize_handles_whole_and_partial_tiles_and_expert_stacks():
    for shape in ((64, 96), (70, 50)):  # whole tiles broadcast, partial ones expand the scales: the same rule
        weight = torch.randn(shape)
        fp8, scales = quantize_block_fp8(weight, BLOCK)
        expected = (
            fp8.float() * scales.repeat_interleave(BLOCK, 0)[: shape[0]].repeat_interleave(BLOCK, 1)[:, : shape[1]]
        ).to(torch.bfloat16)
        assert torch.equal(dequantize(fp8, scales, (BLOCK, BLOCK)), expected)
        assert torch.equal(dequantize(fp8.view(torch.uint8), scales, (BLOCK, BLOCK)), expected)  # raw bytes too
        stacked = dequantize(torch.stack([fp8, fp8]), torch.stack([scales, scales * 2]), (BLOCK, BLOCK))
        assert torch.equal(stacked[0], expected) and torch.equal(stacked[1], (expected.float() * 2).to(torch.bfloat16))


def test_lora_over_the_fp8_release_equals_lora_over_its_bf16_conversion(releases):
    over_fp8, audit = lora_model(releases["fp8"])
    over_bf16, reference_audit = lora_model(releases["bf16"])
    assert audit["adapted"] == reference_audit["adapted"]  # the audit accepts the FP8 modules as the same targets
    assert {"kv_b_proj", "lm_head", "experts.gate_up_proj", "experts.down_proj"} <= set(audit["adapted_leaves"])

    base = over_fp8.get_base_model()
    quantized = json.loads((releases["fp8"] / "model.safetensors.index.json").read_text())["weight_map"]
    linears = [m for m in base.modules() if isinstance(m, FrozenFP8Linear)]
    experts = [m for m in base.modules() if isinstance(m, FrozenFP8Experts)]
    layers = base.config.num_hidden_layers
    in_model = [k for k in quantized if k.endswith("_scale_inv") and int(k.split(".")[2]) < layers]  # no MTP layer
    per_expert = 3  # the release stores gate_proj, up_proj, down_proj per expert; the model stacks them in two
    assert len(linears) + per_expert * len(experts) * base.config.n_routed_experts == len(in_model)
    frozen = [p for m in linears + experts for p in m.parameters(recurse=False)]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert {p.dtype for m in linears + experts for p in m.parameters(recurse=False)} == {torch.uint8, torch.float32}

    loss, grads = loss_and_grads(over_fp8)
    reference_loss, reference_grads = loss_and_grads(over_bf16)
    assert all(p.grad is None for p in frozen)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-5)
    assert grads.keys() == reference_grads.keys()
    assert any("lm_head" in n for n in grads) and any("experts" in n for n in grads)
    for name, grad in reference_grads.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (grads[name] - grad).abs().max().item() <= 1e-5 * scale, name


def test_expert_chunks_change_only_memory_not_results(releases):
    one_at_a_time, _ = lora_model(releases["fp8"], "model.fp8_experts_per_chunk=1")
    all_at_once, _ = lora_model(releases["fp8"], "model.fp8_experts_per_chunk=64")
    loss, grads = loss_and_grads(one_at_a_time)
    other_loss, other_grads = loss_and_grads(all_at_once)
    assert loss.item() == pytest.approx(other_loss.item(), rel=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(grad, other_grads[name], rtol=1e-5, atol=1e-7), name
