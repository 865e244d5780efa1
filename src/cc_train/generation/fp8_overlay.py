"""Serve an adapter over an FP8 release (DeepSeek-V3.1) on vLLM without a copy of the release per adapter.

vLLM serves no LoRA on DeepSeek's kv_b_proj (its MLA kernels absorb the weight) nor on its lm_head, and the paper's
module set adapts both. Merging the whole adapter would need a copy of the base per adapter (1.34 TB in BF16, or
690 GB re-quantized to FP8, where LoRA deltas smaller than FP8's step round away). Instead, an *overlay*:
- the modules vLLM cannot serve are merged, W + (alpha / r) B @ A, with W dequantized exactly (models/fp8.py) and
  the sum rounded once to BF16; they go into one small shard (kv_b_proj of every layer + lm_head: about 3.9 GB for
  DeepSeek-V3.1) and are listed in the config's `modules_to_not_convert` (read by vLLM and transformers as the layers
  left unquantized);
- every other tensor comes from the release's files, linked, not copied. Loaders read every tensor of every file the
  index names (vLLM and transformers alike), so a file may not also hold a replaced tensor: once per release, the
  shards holding kv_b_proj or lm_head are rewritten without them (the *split*, shared by every adapter); the others
  are linked;
- the rest of the adapter is served as LoRA on the overlay, unmerged (the *remainder* adapter, with its per-expert
  export for vLLM).
bench/fp8_eval_fidelity.py measures how much of an adapter's effect each way of serving keeps; the same functions
build the full merges it compares with (every adapted module merged, in BF16 or re-quantized to FP8).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cc_train.files import write_json
from cc_train.models.export import export_per_expert, served_lora_dir
from cc_train.models.fp8 import SCALE_SUFFIX, dequantize, quantize

OVERLAY_SHARD = "cc-train-overlay.safetensors"
CONFIG, INDEX = "config.json", "model.safetensors.index.json"
EXPERT_WEIGHT = re.compile(r"^(?P<module>.*\.mlp\.experts)\.\d+\.(gate|up|down)_proj\.weight$")
PREFIX = "base_model.model."  # PEFT's prefix of the base model's module names in a saved adapter


def lora_scaling(config: dict) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA); an adapter with per-module ranks or alphas is refused."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("adapters with rank_pattern / alpha_pattern are not merged here; expected one r and alpha")
    return config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])


def lora_deltas(adapter_dir: Path, base_config: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Checkpoint tensor name (`model.layers.0.self_attn.kv_b_proj.weight`) -> (A, B, scaling) for every module the
    adapter adapts, routed experts per expert (their per-expert export, models/export.py)."""
    lora_dir = served_lora_dir(adapter_dir, base_config)
    scaling = lora_scaling(json.loads((lora_dir / "adapter_config.json").read_text()))
    tensors = load_file(lora_dir / "adapter_model.safetensors")
    deltas = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight").removeprefix(PREFIX)
            deltas[f"{module}.weight"] = (a, tensors[key.replace(".lora_A.", ".lora_B.")], scaling)
    return deltas


def leaf(weight_name: str) -> str:
    """`model.layers.0.self_attn.kv_b_proj.weight` -> `kv_b_proj`."""
    return weight_name.removesuffix(".weight").rsplit(".", 1)[-1]


class Release:
    """An FP8 release's tensors, read one at a time from its shards (never the whole model in memory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = json.loads((folder / CONFIG).read_text())
        self.block = tuple(self.config["quantization_config"]["weight_block_size"])
        self.weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        self._handles: dict[str, object] = {}

    def tensor(self, name: str) -> torch.Tensor:
        shard = self.weight_map[name]
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.folder / shard, framework="pt")
        return self._handles[shard].get_tensor(name)

    def is_fp8(self, name: str) -> bool:
        return name + SCALE_SUFFIX in self.weight_map

    def exact(self, name: str) -> torch.Tensor:
        """The weight as the model computes with it (fp32): FP8 dequantized by DeepSeek's rule, others as stored."""
        value = self.tensor(name)
        return (
            dequantize(value, self.tensor(name + SCALE_SUFFIX), self.block).float()
            if self.is_fp8(name)
            else value.float()
        )


def merged_tensors(
    release: Release,
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    modules: Iterable[str] | None,
    fmt: str,
) -> dict[str, torch.Tensor]:
    """W + scaling * B @ A for the adapted modules whose leaf name is in `modules` (None: every adapted module), as
    BF16 (`fmt="bf16"`; an FP8 weight then becomes a BF16 one) or, for FP8 weights, re-quantized with fresh block
    scales (`fmt="fp8"`); the release's BF16 weights (lm_head) stay BF16 either way."""
    chosen = set(modules) if modules is not None else None
    out = {}
    for name, (a, b, scaling) in deltas.items():
        if chosen is not None and leaf(name) not in chosen:
            continue
        merged = release.exact(name) + scaling * (b.float() @ a.float())
        if fmt == "fp8" and release.is_fp8(name):
            out[name], out[name + SCALE_SUFFIX] = quantize(merged, release.block)
        else:
            out[name] = merged.to(torch.bfloat16)
    return out


def unquantized_modules(weights: list[str]) -> set[str]:
    """The module names to leave unquantized for these BF16 weights: a routed expert's gate/up/down weights name
    their layer's experts module (one fused module in transformers and vLLM), which then needs all of them."""
    modules, experts = set(), {}
    for name in weights:
        match = EXPERT_WEIGHT.match(name)
        if match:
            experts.setdefault(match["module"], set()).add(name)
        else:
            modules.add(name.removesuffix(".weight"))
    for module, names in experts.items():
        if len(names) % 3:  # gate, up and down of every expert
            raise ValueError(f"{module}: only some of its experts' weights are merged; expected all or none")
        modules.add(module)
    return modules


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder written beside `out` and renamed into place when complete: a kill never leaves half of one, and a
    concurrent writer of the same content finishing first is kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_extras(source: Path, target: Path) -> None:
    """Tokenizer, generation config, chat template: every small file but the config and the index."""
    for extra in source.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in (CONFIG, INDEX):
            shutil.copy2(extra, target / extra.name)


def removed_names(release: Release, weights: Iterable[str]) -> set[str]:
    """The tensors of the release that `weights` replace: each weight and, for an FP8 one, its scale."""
    return {n for w in weights for n in (w, w + SCALE_SUFFIX) if n in release.weight_map}


def split_release(release: Release, weights: Iterable[str], out: Path) -> Path:
    """The release without `weights` (and their scales), at `out`: a shard holding none of them is linked, one that
    does is rewritten without them (one shard in memory at a time)."""
    removed = removed_names(release, weights)
    by_shard: dict[str, list[str]] = {}
    for name, shard in release.weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    with staged(out) as staging:
        for shard, names in sorted(by_shard.items()):
            if removed.isdisjoint(names):
                os.symlink((release.folder / shard).resolve(), staging / shard)
            else:
                kept = {name: release.tensor(name).contiguous() for name in names if name not in removed}
                save_file(kept, str(staging / shard), {"format": "pt"})
        weight_map = {n: s for n, s in release.weight_map.items() if n not in removed}
        write_json(staging / INDEX, {"metadata": {}, "weight_map": weight_map})
        write_json(staging / CONFIG, release.config)
        _copy_extras(release.folder, staging)
    return out


def write_overlay(release: Release, split: Release, tensors: dict[str, torch.Tensor], out: Path) -> Path:
    """A checkpoint folder at `out`: `tensors` (merged weights of `release`) in a shard of their own, every other
    tensor in the shards of `split` (the release without those tensors: split_release), linked; the index, and the
    config with the FP8 weights now in BF16 listed in `modules_to_not_convert`."""
    replaced = removed_names(release, [n.removesuffix(SCALE_SUFFIX) for n in tensors])
    left = replaced & set(split.weight_map)
    if left:
        raise ValueError(f"{split.folder} still holds {sorted(left)[:3]}: expected the release split without them")
    now_bf16 = sorted(n for n in tensors if release.is_fp8(n) and n + SCALE_SUFFIX not in tensors)
    with staged(out) as staging:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / OVERLAY_SHARD), {"format": "pt"})
        for shard in sorted(set(split.weight_map.values())):
            os.symlink((split.folder / shard).resolve(), staging / shard)
        weight_map = split.weight_map | dict.fromkeys(tensors, OVERLAY_SHARD)
        write_json(staging / INDEX, {"metadata": {}, "weight_map": weight_map})
        config = json.loads(json.dumps(release.config))
        quant = config["quantization_config"]
        skipped = set(quant.get("modules_to_not_convert") or []) | unquantized_modules(now_bf16)
        skipped.add("lm_head")  # transformers skips the output embedding by default only when no list is given
        quant["modules_to_not_convert"] = sorted(skipped)
        write_json(staging / CONFIG, config)
        _copy_extras(release.folder, staging)
    return out


def remainder_adapter(adapter_dir: Path, drop: Iterable[str], base_config: dict, out: Path) -> Path:
    """The adapter without its LoRA on the modules named in `drop` (leaf names), in PEFT's format with its
    per-expert export: what is served as LoRA on an overlay that has those modules merged."""
    dropped = set(drop)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    kept = {k: v for k, v in tensors.items() if leaf(k.split(".lora_")[0] + ".weight") not in dropped}
    config["target_modules"] = sorted(set(config.get("target_modules") or []) - dropped)
    with staged(out) as staging:
        save_file(kept, str(staging / "adapter_model.safetensors"), {"format": "pt"})
        write_json(staging / "adapter_config.json", config)
        export_per_expert(staging, base_config)
    return out
