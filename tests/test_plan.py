"""`cc-train plan`: exact parameter counts (checked against real models and PEFT), memory and layouts (no GPU)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_run
from transformers import AutoModelForCausalLM, DeepseekV3Config, Qwen3MoeConfig

from cc_train.config import Arch, BuildConfig, BuildKind, ConfigError, DType, ModelConfig, PeftConfig, Preset
from cc_train.launch import fp8_plan, plan, plan_stage
from cc_train.launch.cards import CARDS, GPUS_PER_NODE, card_gib
from cc_train.launch.preflight import check_training, training_fits
from cc_train.models.lora import wrap_with_lora
from cc_train.models.tiny import tiny_config

QWEN = "Qwen/Qwen3-30B-A3B-Instruct-2507"
DEEPSEEK = "deepseek-ai/DeepSeek-V3.1"
CONFIG_CLASSES = {QWEN: Qwen3MoeConfig, DEEPSEEK: DeepseekV3Config}


def peft_cfg(preset: str, r: int = 8, unservable: str = "exclude") -> PeftConfig:
    return PeftConfig(preset=Preset(preset), r=r, alpha=2 * r, dropout=0.0, max_vllm_rank=64, unservable=unservable)


def published_transformers_config(hub_id: str):
    values = {key: value for key, value in plan.PUBLISHED_CONFIGS[hub_id].items() if key != "model_type"}
    return CONFIG_CLASSES[hub_id](**values)


def test_published_parameter_counts_match_the_model_cards():
    qwen = plan.count_parameters(plan.published_shape(QWEN))
    assert qwen == pytest.approx(30.5e9, rel=0.02)  # model card: 30.5B in total, 3.3B activated
    # DeepSeek's model card: "685B on Hugging Face = 671B of the Main Model weights + 14B of the MTP Module".
    # The MTP layer is not loaded by transformers for training and is not counted here, so 671B is the match.
    deepseek = plan.published_shape(DEEPSEEK)
    assert deepseek.mtp_layers == 1
    assert plan.count_parameters(deepseek) == pytest.approx(671e9, rel=0.02)
    # practitioners' BF16 sizes: about 61 GB and 1.34 TB
    assert plan.weight_bytes(plan.published_shape(QWEN), 2) == pytest.approx(61e9, rel=0.02)
    assert plan.weight_bytes(deepseek, 2) == pytest.approx(1.34e12, rel=0.02)


@pytest.mark.parametrize("hub_id,arch", [(QWEN, "qwen3_moe"), (DEEPSEEK, "deepseek_v3")])
def test_full_size_counts_equal_a_meta_device_model_and_peft(hub_id, arch):
    """The real architectures at full size, built on the meta device (no memory): the analytic counts are exact."""
    shape = plan.published_shape(hub_id)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(published_transformers_config(hub_id), dtype=torch.bfloat16)
        assert sum(p.numel() for p in model.parameters()) == plan.count_parameters(shape)
        _, audit = wrap_with_lora(model, Arch(arch), peft_cfg("paper", r=16, unservable="train"))
    assert audit["trainable_parameters"] == plan.count_lora_parameters(shape, "paper", 16, "train")


TINY_CASES = [
    ("qwen3_moe", "attn"),
    ("qwen3_moe", "attn_mlp"),
    ("qwen3_moe", "attn_experts"),
    ("deepseek_v3", "attn"),
    ("deepseek_v3", "attn_mlp"),
    ("deepseek_v3", "attn_experts"),
    ("qwen3", "attn"),
    ("qwen3", "attn_mlp"),
    ("qwen3_moe", "paper"),
    ("deepseek_v3", "paper"),
    ("qwen3", "paper"),
]


@pytest.mark.parametrize("arch,preset", TINY_CASES)
def test_lora_count_equals_what_peft_creates_on_tiny_models(arch, preset):
    config = tiny_config(arch)
    shape = plan.shape_from_config(config, arch, "tiny")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == plan.count_parameters(shape)
    unservable = "train" if preset == "paper" else "exclude"
    _, audit = wrap_with_lora(model, Arch(arch), peft_cfg(preset, r=8, unservable=unservable))
    assert audit["trainable_parameters"] == plan.count_lora_parameters(shape, preset, 8, unservable)


def test_deepseek_attention_preset_leaves_kv_b_proj_out():
    shape = plan.published_shape(DEEPSEEK)
    names = {w.name for w in plan.lora_targets(shape, "attn", moe=True)}
    assert names == {"self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.o_proj"}


def test_fused_expert_lora_is_experts_times_rank_times_in_plus_out():
    shape = plan.published_shape(QWEN)
    gate_up, down = (w for w in plan.layer_weights(shape, moe=True) if w.kind == "experts")
    assert plan.lora_numel(gate_up, 16) == 128 * 16 * (2 * 768 + 2048)
    assert plan.lora_numel(down, 16) == 128 * 16 * (2048 + 768)


def test_shape_is_read_from_a_local_config_json(tmp_path):
    tiny_config("deepseek_v3").save_pretrained(tmp_path)
    model = ModelConfig(
        name="local",
        arch=Arch.deepseek_v3,
        path=str(tmp_path),
        build=BuildConfig(kind=BuildKind.none),
        dtype=DType.bfloat16,
        load_in_4bit=False,
    )
    shape = plan.resolve_shape(model)
    assert shape.source.endswith("config.json")
    assert shape == plan.shape_from_config(tiny_config("deepseek_v3"), "deepseek_v3", shape.source)
    with pytest.raises(ConfigError, match="model.arch=qwen3_moe"):
        plan.resolve_shape(replace(model, arch=Arch.qwen3_moe))


def test_unknown_remote_model_is_a_config_error():
    model = ModelConfig(
        name="other",
        arch=Arch.qwen3,
        path="someone/not-a-local-dir",
        build=BuildConfig(kind=BuildKind.none),
        dtype=DType.bfloat16,
        load_in_4bit=False,
    )
    with pytest.raises(ConfigError, match="model.path"):
        plan.resolve_shape(model)


def test_qlora_quantizes_linear_layers_only():
    """nf4 for nn.Linear (lm_head and router skipped); fused experts, embeddings and norms end up fp32."""
    shape = plan.published_shape(QWEN)
    linear = sum(
        count * sum(w.numel for w in plan.layer_weights(shape, moe) if w.kind == "linear")
        for count, moe in plan.layer_groups(shape)
    )
    rest = plan.count_parameters(shape) - linear
    expected = linear * plan.NF4_BYTES_PER_PARAM + rest * 4
    assert plan.weight_bytes(shape, 2, load_in_4bit=True) == pytest.approx(expected)


@pytest.fixture(scope="module")
def paper_plans() -> dict[str, dict]:
    """The sharded (FSDP) plans of the paper recipes; DeepSeek-V3.1's as its BF16 weights at 1 row per device would
    need them (its recipe trains over the FP8 release on one node instead: tests/test_fp8_plan.py)."""
    plans = {}
    for recipe, rows in (("paper/qwen3_30b_a3b", 4), ("paper/deepseek_v3_1", 1)):
        run, _ = compose_run(f"recipe={recipe}", f"train.per_device_batch_size={rows}")
        plans[recipe] = plan.plan(run.model, run.peft, run.train)
    return plans


def _gpus(layout: dict) -> float:
    return layout["gpus"] or float("inf")


def test_paper_layouts_are_consistent(paper_plans):
    for result in paper_plans.values():
        totals = [result["per_gpu"][n]["total"] for n in plan.GPU_COUNTS]
        assert all(later < earlier for earlier, later in zip(totals, totals[1:], strict=False)), (
            "more GPUs, less per GPU"
        )
        h100, h200 = result["layouts"]["H100-80GB"], result["layouts"]["H200-141GB"]
        assert _gpus(h200) <= _gpus(h100)
        for lay, usable in ((h100, card_gib("H100-80GB")), (h200, card_gib("H200-141GB"))):
            if lay["gpus"]:
                assert lay["per_gpu_gib"] <= usable
                assert lay["nodes"] * lay["gpus_per_node"] == lay["gpus"]
                smaller = [n for n in plan.GPU_COUNTS if n < lay["gpus"]]
                assert all(result["per_gpu"][n]["total"] > usable for n in smaller), "the smallest that fits"
    qwen, deepseek = paper_plans["paper/qwen3_30b_a3b"], paper_plans["paper/deepseek_v3_1"]
    assert qwen["layouts"]["H200-141GB"]["gpus"] is not None  # a 30B model fits some layout
    assert _gpus(deepseek["layouts"]["H100-80GB"]) >= 16  # 1.34 TB of BF16 weights
    assert qwen["vs_reports"]["weights_diff_pct"] == pytest.approx(0, abs=2)
    assert deepseek["vs_reports"]["weights_diff_pct"] == pytest.approx(0, abs=2)


def test_memory_items_behave(paper_plans):
    qwen = paper_plans["paper/qwen3_30b_a3b"]
    est = qwen["estimate"]
    one, two = qwen["per_gpu"][1], qwen["per_gpu"][2]
    assert two["base weights"] == pytest.approx(one["base weights"] / 2)
    assert one["unsharded layers (FSDP)"] == 0 < two["unsharded layers (FSDP)"]
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b")
    # expert LoRA runs grouped (x@A@B per expert): no folded stacks; PEFT's fold would add 4 E I h in bf16
    folded = plan.estimate(run.model, run.peft, run.train, folded_experts=True)
    assert est.fold_bytes == 0 and folded.fold_bytes == 4 * 128 * 768 * 2048 * 2
    # the loss and a layer's backward are not live together: only the larger counts
    parts = sum(v for k, v in one.items() if k not in ("overhead", "total"))
    larger = max(one["logits (loss) *"], one["one layer *"])
    smaller = min(one["logits (loss) *"], one["one layer *"])
    assert one["total"] == pytest.approx(parts - smaller + one["overhead"])
    assert larger >= smaller
    no_ckpt = plan.estimate(run.model, run.peft, replace(run.train, gradient_checkpointing=False))
    assert no_ckpt.saved_activation_bytes > est.saved_activation_bytes
    attn = plan.estimate(run.model, replace(run.peft, preset=Preset.attn), run.train)
    assert (
        plan.estimate(run.model, replace(run.peft, preset=Preset.attn), run.train, folded_experts=True).fold_bytes == 0
    )
    assert attn.lora_parameters < est.lora_parameters


def test_main_prints_the_table(capsys):
    run, cfg = compose_run("recipe=paper/qwen3_30b_a3b")
    result = plan_stage.main(run, cfg)
    out = capsys.readouterr().out
    for text in ("per GPU (GiB)", "base weights", "H100-80GB", "H200-141GB", "vs reports", "61"):
        assert text in out
    assert result["parameters"] == plan.count_parameters(plan.published_shape(QWEN))


def test_tiny_recipe_plans_without_a_built_checkpoint():
    run, _ = compose_run("model=tiny_qwen3_moe", "model.path=/nonexistent/tiny", "peft=attn_experts")
    result = plan.plan(run.model, run.peft, run.train)
    assert result["layouts"]["H100-80GB"]["gpus"] == 1


# Peak torch.cuda.max_memory_allocated (GiB) of one LoRA step (AdamW, gradient checkpointing, SDPA, grouped_mm
# experts) on one H200 with torch 2.11, transformers 5.17, peft 0.21.2: the production shapes cut to a few layers.
MEASURED_H200 = [
    # hub id, layers, dense layers, batch x 4000 tokens, preset, GiB
    (QWEN, 4, 0, 4, "attn_experts", 34.00),
    (QWEN, 4, 0, 4, "attn", 33.42),
    (DEEPSEEK, 3, 1, 1, "attn_experts", 80.77),
]


@pytest.mark.parametrize("hub_id,layers,dense,batch,preset,measured", MEASURED_H200)
def test_single_gpu_estimate_matches_measured_peaks(hub_id, layers, dense, batch, preset, measured):
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b")  # bf16, r16, 4000 tokens, gradient checkpointing
    shape = replace(plan.published_shape(hub_id), layers=layers, dense_layers=tuple(range(dense)))
    peft = replace(run.peft, preset=Preset(preset), unservable="exclude")  # as measured: no kv_b_proj, no lm_head
    # measured with the whole micro-batch's logits at once: the loss in one chunk of all its tokens
    train = replace(run.train, per_device_batch_size=batch, global_batch_size=batch, loss_chunk_tokens=batch * 4000)
    one = plan.estimate(run.model, peft, train, shape, folded_experts=True).per_gpu(1)  # measured with PEFT's fold
    assert one["total"] - one["overhead"] == pytest.approx(measured, rel=0.05)


def test_layouts_keep_the_paper_global_batch(paper_plans):
    """Any number of GPUs keeps the recipe's global batch: ranks beyond its sequences take filler rows."""
    deepseek = paper_plans["paper/deepseek_v3_1"]["layouts"]["H200-141GB"]
    assert deepseek["gpus"] == 32 and deepseek["filler_ranks"] == 28
    qwen = paper_plans["paper/qwen3_30b_a3b"]
    assert qwen["global_batch_size"] == 4 and qwen["hint"]["per_device_batch_size"] == 1
    # one 80 GB card is too tight even at 1 row x 4 accumulation steps once the allocator's reserve is counted: 2 GPUs
    h100 = qwen["hint"]["layouts"]["H100-80GB"]
    assert h100["gpus"] == 2 and h100["filler_ranks"] == 0
    assert qwen["layouts"]["H200-141GB"]["gpus"] == 1
    text = plan.format_plan(paper_plans["paper/deepseek_v3_1"])
    assert "32 GPUs = 4 nodes x 8" in text and "filler rows on 28 ranks" in text


RECIPES = ("embedded", "paper/qwen3_30b_a3b", "paper/deepseek_v3_1")


def fake_cards(monkeypatch, kind: str, gpus: int) -> None:
    """`gpus` cards of `kind` as torch reports them (total_memory in bytes), on a machine without any."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: min(gpus, 8))
    card = SimpleNamespace(name=kind, total_memory=CARDS[kind])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: card)
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    monkeypatch.setenv("LOCAL_RANK", "0")


def advertised(recipe: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(card, GPUs, overrides) of every layout `cc-train plan` prints for a recipe, its per-device batch 1 hint too."""
    run, _ = compose_run(f"recipe={recipe}")
    result = plan.plan(run.model, run.peft, run.train)
    if result["estimate"].shape.fp8_block:  # one process over one node of the FP8 release (launch/fp8_plan.py)
        return [(kind, GPUS_PER_NODE, ()) for kind in CARDS if fp8_plan.fp8_plan(run, kind).fits]
    found = [(kind, lay["gpus"], ()) for kind, lay in result["layouts"].items() if lay["gpus"]]
    if result["hint"]:
        hint = ("train.per_device_batch_size=1",)
        found += [(kind, lay["gpus"], hint) for kind, lay in result["hint"]["layouts"].items() if lay["gpus"]]
    return found


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_layout_the_plan_advertises_is_accepted_by_trains_preflight_on_that_card(recipe, monkeypatch):
    """The planner and `train`'s preflight use one rule for a card's memory (launch/cards.py): whatever layout the plan
    prints, `cc-train train` accepts on that card, and the next smaller count (the plan did not pick it) it refuses."""
    layouts = advertised(recipe)
    assert layouts, f"{recipe}: the plan advertises no layout"
    for kind, gpus, overrides in layouts:
        run, _ = compose_run(f"recipe={recipe}", "device=cuda", *overrides)
        fake_cards(monkeypatch, kind, gpus)
        check_training(run)  # accepted: no ConfigError
        smaller = [n for n in plan.GPU_COUNTS if n < gpus]
        if smaller:
            fake_cards(monkeypatch, kind, smaller[-1])
            with pytest.raises(ConfigError, match=f"more than the card's {card_gib(kind):.1f} GiB"):
                check_training(run)


def test_the_readme_one_h100_layout_no_longer_promised_and_refused():
    """The reproduced failure: the plan promised Qwen3-30B-A3B on one H100 at 1 row per device (78.9 GiB of '79 usable')
    while `train` refused it on the card torch reports (79.19 GiB less a margin). Now both say: not on one H100."""
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "train.per_device_batch_size=1")
    result = plan.plan(run.model, run.peft, run.train)
    assert result["layouts"]["H100-80GB"]["gpus"] == 2
    assert training_fits(run, 1, card_gib("H100-80GB")) is not None
    assert training_fits(run, 2, card_gib("H100-80GB")) is None


def test_plan_and_preflight_import_one_way():
    """plan.py builds on neither preflight module; preflight builds on plan (issue 24: no import circle)."""
    import ast
    from pathlib import Path

    source = Path(plan.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.endswith("preflight") for name in imported), imported
