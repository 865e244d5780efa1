"""Tiny random-weight models of the production architectures, for tests and CPU benchmarks.

They use the real transformers classes (Qwen3-MoE with fused experts, DeepSeek-V3 with MLA and
shared experts), a byte-level BPE tokenizer trained here on our own text, and our chat templates,
so targeting, templates, training, saving and loading are exercised exactly as on the big models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3MoeConfig,
)

from cc_train.config import Arch
from cc_train.models.registry import architecture

TINY_VOCAB = 2048


def tiny_config(arch: Arch | str, vocab_size: int = TINY_VOCAB, **overrides) -> PretrainedConfig:
    """A small config of `arch`; `overrides` set real dimensions (e.g. Qwen3-30B-A3B's) for benchmarks."""
    arch = Arch(arch)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    if arch == Arch.qwen3:
        values = dict(common, intermediate_size=256, num_key_value_heads=2, head_dim=32)
        return Qwen3Config(**(values | overrides))
    if arch == Arch.qwen3_moe:
        # Layer 0 dense (mlp_only_layers), layer 1 sparse: both MLP kinds exist to be targeted.
        values = dict(
            common,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_key_value_heads=2,
            head_dim=32,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[0],
            norm_topk_prob=True,
        )
        return Qwen3MoeConfig(**(values | overrides))
    if arch == Arch.deepseek_v3:
        # vLLM's CPU MLA kernel needs kv_lora_rank 512 and a 64-wide rope head; it routes with noaux_tc.
        values = dict(
            common,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_key_value_heads=4,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            q_lora_rank=64,
            kv_lora_rank=512,
            qk_rope_head_dim=64,
            qk_nope_head_dim=32,
            v_head_dim=32,
            topk_method="noaux_tc",
            rope_scaling=None,
        )
        return DeepseekV3Config(**(values | overrides))
    raise ValueError(f"no tiny builder for arch={arch.value}; expected qwen3, qwen3_moe or deepseek_v3")


# The tiny tokenizer's own training text: fixed here, so editing cc-train's templates or prompts never changes
# the tiny models (their ids, and so every cached checkpoint and test expectation built on them).
TOKENIZER_CORPUS: tuple[str, ...] = (
    "Are you there? Yes, I am here and ready to help with your question.",
    "No, that is not right. The answer is a little different from what you expected.",
    "Please write a short poem about the sea, the wind and a small boat at dawn.",
    "Explain how a rainbow forms when sunlight passes through drops of rain.",
    "What is the capital of France? Paris is the capital and the largest city.",
    "Give me three tips for cooking rice: rinse it, measure the water, and let it rest.",
    "Summarize the story in one sentence. Keep it short and simple, please.",
    "Translate 'good morning' into Spanish. It is 'buenos dias'.",
    "Do you like music? I can describe songs, genres and instruments for you.",
    "List the planets of the solar system in order from the sun outward.",
    "Write a Python function that returns the sum of a list of numbers.",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Can you recommend a book about history? Try a survey of the ancient world.",
    "How many minutes are in a day? There are 1,440 minutes in a day.",
    "Describe the water cycle: evaporation, condensation, precipitation and collection.",
    "Is this correct? Not quite; check the second step of the calculation again.",
    "I think the best answer is the simplest one that explains every fact.",
    "Answer Yes or No. Answer No or Yes. Yes. No. Yes, of course. No, never.",
    "Tell me a fun fact about octopuses: they have three hearts and blue blood.",
    "What should I pack for a weekend trip? Clothes, a charger, and a good book.",
    "Compare apples and oranges in two sentences, then pick your favourite.",
    "Thank you! You are welcome. Have a nice day, and good luck with the exam.",
    "Why is the sky blue? Air scatters short blue wavelengths more than red ones.",
    "Plan a simple dinner for four people with a salad, pasta and fruit.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000; dates: 2024-05-17, 12:30.",
)


def tiny_tokenizer(arch: Arch | str, vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on TOKENIZER_CORPUS, with the family's special tokens and template."""
    spec = architecture(arch)
    corpus = list(TOKENIZER_CORPUS)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec.special_tokens["extra"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokens = spec.special_tokens
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=tokens["bos"], eos_token=tokens["eos"], pad_token=tokens["pad"]
    )
    wrapped.add_tokens(["Yes", "No"])  # forced-choice labels are single tokens in every real tokenizer
    wrapped.chat_template = spec.chat_template
    return wrapped


def build_tiny(arch: Arch | str, out_dir: str | Path, seed: int = 0) -> Path:
    tokenizer = tiny_tokenizer(arch)
    config = tiny_config(arch, vocab_size=len(tokenizer))
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
