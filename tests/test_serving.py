"""Adapters vLLM cannot serve as trained are refused with the reason, before an engine starts."""

import json

import pytest

from cc_train.generation.vllm_backend import AdapterServingError, check_servable


def adapter(tmp_path, arch="llama", **config):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"], **config}))
    (tmp_path / "manifest.json").write_text(json.dumps({"base_model": {"arch": arch}}))
    return tmp_path


def test_a_plain_attention_adapter_is_servable(tmp_path):
    assert check_servable("ok", adapter(tmp_path, rank_pattern={"o_proj": 32})) == 32


@pytest.mark.parametrize(
    ("arch", "config", "reason"),
    [
        ("llama", {"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ("llama", {"r": 1024}, "vLLM serves ranks up to 512"),
        ("deepseek_v3", {"target_modules": ["q_a_proj", "kv_b_proj"]}, "vLLM ignores LoRA on these"),
        ("qwen3_moe", {"target_parameters": ["mlp.experts.gate_up_proj"]}, "set eval.merge_unservable=true"),
    ],
)
def test_unservable_adapters_are_refused_with_the_reason(tmp_path, arch, config, reason):
    with pytest.raises(AdapterServingError, match=reason):
        check_servable("bad", adapter(tmp_path, arch=arch, **config))
