"""prepare-model: a tiny DeepSeek-V3 in the FP8 release format (block scales, MTP layer, two shards) -> BF16."""

import json

import torch
from conftest import cc_train
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from cc_train.launch.prepare import dequantize
from cc_train.models.tiny import tiny_config

BLOCK = 32


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 with one scale per BLOCK x BLOCK tile, as DeepSeek ships it (`weight_scale_inv`)."""
    rows, cols = weight.shape
    tiles = torch.zeros(-(-rows // BLOCK), -(-cols // BLOCK))
    for i in range(tiles.shape[0]):
        for j in range(tiles.shape[1]):
            tile = weight[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
            tiles[i, j] = tile.abs().max().clamp(min=1e-8) / 448.0
    scale = tiles.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]
    return (weight / scale).to(torch.float8_e4m3fn), tiles


def fp8_checkpoint(tmp_path):
    config = tiny_config("deepseek_v3", vocab_size=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reference = tmp_path / "reference"
    model.save_pretrained(reference)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = {}
    for key, value in state.items():
        if value.dim() == 2 and key.endswith("proj.weight"):
            tensors[key], tensors[key + "_scale_inv"] = quantize(value)
        else:
            tensors[key] = value.to(torch.bfloat16)
    tensors["model.layers.2.eh_proj.weight"] = torch.ones(4, 4, dtype=torch.bfloat16)  # the MTP layer
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    source = tmp_path / "fp8"
    source.mkdir()
    weight_map = {}
    for shard, names in halves.items():  # scales land in the other shard than their weight half the time
        save_file({k: tensors[k].contiguous() for k in names}, str(source / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, shard))
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    raw = json.loads((reference / "config.json").read_text())
    raw |= {
        "num_nextn_predict_layers": 1,
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK],
        },
    }
    (source / "config.json").write_text(json.dumps(raw))
    return source, reference, tensors


def test_dequantize_inverts_block_quantization():
    weight = torch.randn(70, 50)
    fp8, scales = quantize(weight)
    restored = dequantize(fp8, scales, (BLOCK, BLOCK)).float()
    assert torch.allclose(restored, weight, rtol=0.07, atol=1e-3)


def test_prepare_model_converts_an_fp8_release_to_a_loadable_bf16_checkpoint(tmp_path):
    source, reference, tensors = fp8_checkpoint(tmp_path)
    out = tmp_path / "bf16"
    args = ("prepare-model", "model=deepseek_v3_1", f"model.path={out}", f"prepare.source={source}")
    result = cc_train(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_nextn_predict_layers"] == 0
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert not any(k.endswith("_scale_inv") or k.startswith("model.layers.2.") for k in weight_map)
    assert len(weight_map) == sum(1 for k in tensors if not k.endswith("_scale_inv")) - 1
    manifest = json.loads((out / "cc-train-prepare.json").read_text())
    assert manifest["fp8_converted"] == sum(1 for k in tensors if k.endswith("_scale_inv"))

    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 24))
    with torch.no_grad():
        a, b = converted(input_ids=ids).logits, original(input_ids=ids).logits
    assert torch.allclose(a, b, atol=0.05), f"max logit gap {(a - b).abs().max():.3f}"

    rerun = cc_train(*args)  # every shard present: resumes past all of them and verifies again
    assert rerun.returncode == 0 and "wrote BF16 checkpoint" in rerun.stdout


def test_prepare_model_refuses_a_checkpoint_that_is_not_fp8(tmp_path):
    _, reference, _ = fp8_checkpoint(tmp_path)
    result = cc_train(
        "prepare-model", "model=deepseek_v3_1", f"model.path={tmp_path / 'x'}", f"prepare.source={reference}"
    )
    assert result.returncode == 2 and "no fp8 quantization_config" in result.stderr
