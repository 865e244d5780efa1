"""The causal-LM loss without the full-vocabulary logits, LoRA on lm_head included.

With the paper's module set the unembedding is adapted (lm_head LoRA), which rules out TRL's fused loss (it reads
`lm_head.weight` directly). The plain path materialises logits for every token of the micro-batch: at 4,000 tokens
and Qwen3's 151,936-token vocabulary that is 2.4 GB in fp32, several times over once log-softmax and gradients are
kept. Here lm_head returns its input unchanged (a `DeferredLogits`) while the model trains, and the model's loss
function computes the cross-entropy chunk by chunk of the tokens that carry a label (assistant tokens), each chunk
through the adapted lm_head under activation checkpointing: one chunk's logits exist at a time, in the forward and
again in the backward. The sum over chunks divided by the number of label tokens of the optimizer step
(`num_items_in_batch`) is the same loss as transformers' ForCausalLMLoss, and so are the gradients (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional
from torch.utils.checkpoint import checkpoint


@dataclass
class DeferredLogits:
    """What lm_head returns in training: the hidden states it would project, and the projection to use later."""

    hidden: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]


def _chunk_loss(project, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(project(hidden).float(), targets, reduction="sum")


def chunked_causal_lm_loss(
    logits: DeferredLogits | torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
    **kwargs,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (mean cross-entropy over the label tokens, or their sum over
    `num_items_in_batch`), computed `chunk_tokens` label tokens at a time."""
    if shift_labels is None:
        shift_labels = functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(logits.hidden.device)
    labelled = targets != ignore_index
    every = logits.hidden.reshape(-1, logits.hidden.shape[-1])
    hidden, targets = every[labelled], targets[labelled]
    if not targets.numel():  # a filler row (train/layout.py): zero, but through lm_head, so every rank's backward
        # reaches the same parameters
        return 0.0 * _chunk_loss(logits.project, every[:1], torch.zeros(1, dtype=torch.long, device=every.device))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(
            _chunk_loss, logits.project, hidden[start:end], targets[start:end], use_reentrant=False
        )
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def compute_loss_in_chunks(model, chunk_tokens: int) -> None:
    """Make `model` (a PEFT model or a transformers causal LM) compute its training loss through
    `chunked_causal_lm_loss`: lm_head defers its projection while the model trains with gradients on; evaluation and
    generation are untouched."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    project = head.forward  # the adapted lm_head's own forward (base + LoRA)

    def deferred_forward(hidden: torch.Tensor, *args, **kwargs):
        if causal_lm.training and torch.is_grad_enabled():
            return DeferredLogits(hidden, project)
        return project(hidden, *args, **kwargs)

    head.forward = deferred_forward

    def loss_function(logits, labels, vocab_size, **kwargs):
        return chunked_causal_lm_loss(logits, labels, vocab_size, chunk_tokens=chunk_tokens, **kwargs)

    causal_lm.loss_function = loss_function
