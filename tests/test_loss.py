"""The causal-LM loss in chunks of label tokens (train/loss.py): the same loss and the same gradient of every LoRA
weight, lm_head's included, as transformers' full-logits loss, on the tiny models with the paper's module set."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_run

from cc_train.models.loading import load_model
from cc_train.models.lora import wrap_with_lora
from cc_train.train.loss import DeferredLogits, compute_loss_in_chunks


def batch(vocab: int) -> dict:
    torch.manual_seed(1)
    input_ids = torch.randint(3, vocab, (2, 23))
    labels = input_ids.clone()
    labels[0, :9] = -100  # the prompt: no loss
    labels[1, :4] = -100
    labels[1, 15:] = -100  # padding
    return {"input_ids": input_ids, "labels": labels}


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "deepseek_v3"])
def test_chunked_loss_and_lora_gradients_equal_the_full_logits(tiny_checkpoints, arch):
    run, _ = compose_run(f"model=tiny_{arch}", "peft=paper")
    torch.manual_seed(0)
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so every LoRA factor gets a gradient
            param.data.normal_(0, 0.05)
    model.train()
    chunked = copy.deepcopy(model)
    compute_loss_in_chunks(chunked, chunk_tokens=5)
    inputs = batch(model.get_base_model().config.vocab_size)
    items = (inputs["labels"][:, 1:] != -100).sum()

    results = []
    for variant in (model, chunked):
        out = variant(**inputs, num_items_in_batch=items)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in variant.named_parameters() if p.requires_grad}
        results.append((out.loss.detach(), grads, out.logits))
    (full_loss, full_grads, full_logits), (chunk_loss, chunk_grads, chunk_logits) = results
    assert isinstance(chunk_logits, DeferredLogits) and torch.is_tensor(full_logits)  # no logits were materialised
    assert chunk_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert full_grads.keys() == chunk_grads.keys() and any("lm_head" in n for n in full_grads)
    for name, grad in full_grads.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (chunk_grads[name] - grad).abs().max().item() <= 1e-5 * scale, name

    chunked.eval()  # evaluation and generation use lm_head as before
    with torch.no_grad():
        assert torch.allclose(
            chunked(input_ids=inputs["input_ids"]).logits, model(input_ids=inputs["input_ids"]).logits
        )
