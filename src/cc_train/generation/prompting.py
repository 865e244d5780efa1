"""The one way prompts and training examples are turned into token ids (training and sampling share it)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """Ids of the inference prompt: the conversation so far plus the assistant header."""
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(rendered["input_ids"])


def training_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids of a full training example and its assistant mask (1 on tokens the loss is taken on)."""
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(rendered["input_ids"]), list(rendered["assistant_masks"])
