"""prepare-model: a tiny DeepSeek-V3 in the FP8 release format (block scales, MTP layer, two shards) -> BF16, from a
folder or by its Hub id from an offline Hugging Face cache."""

import json

import torch
from conftest import cc_train
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from cc_train.launch.prepare import dequantize
from cc_train.models.tiny import build_tiny
from rehearsal.stand_ins import DEEPSEEK, fp8_release, publish_model, quantize_block_fp8

BLOCK = 32  # several tiles per tiny matrix (the release's 128 would give one)


def fp8_checkpoint(tmp_path):
    reference = build_tiny("deepseek_v3", tmp_path / "reference")
    source = fp8_release(reference, tmp_path / "fp8", block=BLOCK)
    return source, reference, json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]


def test_dequantize_inverts_block_quantization():
    weight = torch.randn(70, 50)
    fp8, scales = quantize_block_fp8(weight, BLOCK)
    restored = dequantize(fp8, scales, (BLOCK, BLOCK)).float()
    assert torch.allclose(restored, weight, rtol=0.07, atol=1e-3)


def check_converted(out, reference, released):
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_nextn_predict_layers"] == 0
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    mtp = f"model.layers.{config['num_hidden_layers']}."
    assert not any(k.endswith("_scale_inv") or k.startswith(mtp) for k in weight_map)
    kept = [k for k in released if not k.endswith("_scale_inv") and not k.startswith(mtp)]
    assert sorted(weight_map) == sorted(kept)
    manifest = json.loads((out / "cc-train-prepare.json").read_text())
    assert manifest["fp8_converted"] == sum(1 for k in released if k.endswith("_scale_inv") and not k.startswith(mtp))
    # every FP8 weight is exactly its blocks times their scales; the model is the original up to FP8's rounding
    fp8, bf16 = {}, {}
    for shard in sorted(set(released.values())):
        fp8.update(load_file(out.parent / "fp8" / shard))  # fp8_checkpoint's release, beside `out`
    for shard in sorted(set(weight_map.values())):
        bf16.update(load_file(out / shard))
    quantized = [name for name in bf16 if f"{name}_scale_inv" in fp8]
    assert len(quantized) == manifest["fp8_converted"]
    for name in quantized:
        assert torch.equal(bf16[name], dequantize(fp8[name], fp8[f"{name}_scale_inv"], (BLOCK, BLOCK))), name
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 24))
    with torch.no_grad():
        a, b = converted(input_ids=ids).logits, original(input_ids=ids).logits
    assert torch.allclose(a, b, atol=0.15), f"max logit gap {(a - b).abs().max():.3f}"
    return manifest


def test_prepare_model_converts_an_fp8_release_to_a_loadable_bf16_checkpoint(tmp_path):
    source, reference, released = fp8_checkpoint(tmp_path)
    out = tmp_path / "bf16"
    args = ("prepare-model", "model=deepseek_v3_1", f"model.path={out}", f"prepare.source={source}")
    result = cc_train(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    check_converted(out, reference, released)
    rerun = cc_train(*args)  # every shard present: resumes past all of them and verifies again
    assert rerun.returncode == 0 and "wrote BF16 checkpoint" in rerun.stdout


def test_prepare_model_takes_the_hub_id_from_an_offline_cache(tmp_path):
    """As the docs tell a user: prepare.source=deepseek-ai/DeepSeek-V3.1, the release in the Hugging Face cache."""
    source, reference, released = fp8_checkpoint(tmp_path)
    hf_home = tmp_path / "hf"
    snapshot = publish_model(hf_home, DEEPSEEK, source)
    out = tmp_path / "bf16"
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    result = cc_train(
        "prepare-model", "recipe=paper/deepseek_v3_1", f"model.path={out}", f"prepare.source={DEEPSEEK}", env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    manifest = check_converted(out, reference, released)
    assert manifest["inputs"] == {"source": DEEPSEEK, "folder": str(snapshot), "revision": snapshot.name}
    missing = cc_train(
        "prepare-model", f"model.path={tmp_path / 'x'}", "prepare.source=deepseek-ai/NoSuchModel", env=env
    )
    assert missing.returncode == 2 and "neither a folder nor a Hub id in the Hugging Face cache" in missing.stderr


def test_prepare_model_refuses_a_checkpoint_that_is_not_fp8(tmp_path):
    _, reference, _ = fp8_checkpoint(tmp_path)
    result = cc_train(
        "prepare-model", "model=deepseek_v3_1", f"model.path={tmp_path / 'x'}", f"prepare.source={reference}"
    )
    assert result.returncode == 2 and "no fp8 quantization_config" in result.stderr
