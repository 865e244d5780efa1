"""`cc-train prepare-model` (optional): the BF16 copy of an FP8 release (DeepSeek-V3.1 ships FP8 weights with 128x128
block scales). cc-train trains and evaluates over the FP8 release as it is (models/fp8.py); the copy (1.34 TB for
DeepSeek-V3.1) is for other tools, and its values are exactly what the FP8 modules compute with. Converts shard by
shard (one input shard in memory at a time, scales fetched lazily from any shard), drops the multi-token-prediction
layer, removes the quantization config, verifies, and can resume.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from cc_train.config import ConfigError, RunConfig
from cc_train.files import write_json, write_manifest
from cc_train.models.fp8 import FP8_DTYPES as FP8
from cc_train.models.fp8 import SCALE_SUFFIX, dequantize

log = logging.getLogger(__name__)


def mtp_prefixes(config: dict) -> tuple[str, ...]:
    """Layers past num_hidden_layers are the multi-token-prediction module: not used for SFT."""
    first = config["num_hidden_layers"]
    return tuple(f"model.layers.{first + i}." for i in range(config.get("num_nextn_predict_layers", 0)))


def convert(source: Path, out: Path) -> dict:
    config = json.loads((source / "config.json").read_text())
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "fp8":
        raise ConfigError(f"prepare.source={source}: config.json has no fp8 quantization_config; nothing to convert")
    block = tuple(quant.get("weight_block_size", (128, 128)))
    index_path = source / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
    else:
        single = safe_open(source / "model.safetensors", "pt")
        weight_map = dict.fromkeys(single.keys(), "model.safetensors")
    skip = mtp_prefixes(config)
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}

    def tensor(key: str) -> torch.Tensor:
        shard = weight_map[key]
        if shard not in handles:
            handles[shard] = safe_open(source / shard, framework="pt")
        return handles[shard].get_tensor(key)

    new_map, converted = {}, 0
    shards = sorted(set(weight_map.values()))
    for shard in tqdm(shards, desc="FP8 -> BF16", unit="shard"):
        keys = [
            k for k, s in weight_map.items() if s == shard and not k.endswith(SCALE_SUFFIX) and not k.startswith(skip)
        ]
        new_map.update(dict.fromkeys(keys, shard))
        if (out / shard).exists():  # finished earlier (shards are written atomically): resume past it
            continue
        tensors = {}
        for key in keys:
            value = tensor(key)
            if value.dtype in FP8:
                value = dequantize(value, tensor(key + SCALE_SUFFIX), block)
                converted += 1
            tensors[key] = value.contiguous()
        save_file(tensors, str(out / f".{shard}.partial"), metadata={"format": "pt"})
        (out / f".{shard}.partial").replace(out / shard)
        handles.clear()  # bounded memory: drop mmaps of shards already done
    write_json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": new_map})
    config.pop("quantization_config", None)
    config["num_nextn_predict_layers"] = 0
    config["torch_dtype"] = "bfloat16"
    write_json(out / "config.json", config)
    for extra in source.iterdir():  # tokenizer, generation config, chat template ...
        skipped = extra.suffix == ".safetensors" or extra.name in ("config.json", "model.safetensors.index.json")
        if extra.is_file() and not skipped:
            shutil.copy2(extra, out / extra.name)
    return {
        "tensors": len(new_map),
        "fp8_converted": converted,
        "dropped_mtp_prefixes": list(skip),
        "shards": len(shards),
        "block": list(block),
    }


def verify(out: Path) -> dict:
    """Every tensor readable, no FP8 left, no scales left, finite values; the index covers every shard."""
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    count = 0
    for shard in sorted(set(weight_map.values())):
        with safe_open(out / shard, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                value = handle.get_tensor(key)
                if value.dtype in FP8 or key.endswith(SCALE_SUFFIX):
                    raise ConfigError(f"verify: {out / shard}: {key} is still FP8 or a scale")
                if value.is_floating_point() and not math.isfinite(value.float().abs().max().item()):
                    raise ConfigError(f"verify: {out / shard}: {key} has non-finite values")
                if weight_map.get(key) != shard:
                    raise ConfigError(f"verify: {key} in {shard} but the index says {weight_map.get(key)}")
                count += 1
    if count != len(weight_map):
        raise ConfigError(f"verify: the index lists {len(weight_map)} tensors, the shards hold {count}")
    return {"verified_tensors": count}


def source_folder(source: str) -> tuple[Path, str | None]:
    """The FP8 checkpoint's folder: `source` itself, or the Hugging Face snapshot of the Hub id `source` (from the
    cache; downloaded when online and missing), with the snapshot's commit."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"prepare.source={source}: no config.json there; expected the FP8 checkpoint folder")
        return local, None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(source))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as error:
        raise ConfigError(
            f"prepare.source={source!r} is neither a folder nor a Hub id in the Hugging Face cache or reachable "
            f"({type(error).__name__}); download it first (`hf download {source}`) or give the folder"
        ) from error
    return folder, folder.name


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    if not run.prepare.source:
        raise ConfigError("prepare.source is not set: expected the FP8 checkpoint's Hub id or folder to convert")
    source, revision = source_folder(run.prepare.source)
    out = Path(run.model.path).expanduser()
    result = convert(source, out) | verify(out)
    inputs = {"source": run.prepare.source, "folder": str(source), "revision": revision}
    write_manifest(out / "cc-train-prepare.json", "prepare-model", cfg, started, inputs=inputs, **result)
    print(f"prepare-model: wrote BF16 checkpoint to {out} ({result['fp8_converted']} FP8 tensors converted)")
    return out
