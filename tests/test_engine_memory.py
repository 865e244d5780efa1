"""The vLLM engine's memory, planned before it starts (generation/engine_memory.py): LoRA slot buffers as vLLM 0.32's
layer code allocates them, checked on the full-size Qwen3-30B-A3B and DeepSeek-V3.1 built on the meta device; the
verdicts for H100 and H200 nodes; the merge refusal; adapters served in chunks when slots are fewer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from cc_train.config import ConfigError
from cc_train.evaluate.preflight import check_merges
from cc_train.generation.engine_memory import GIB, engine_plan, lora_slot_bytes, merge_cost, smallest_engine
from cc_train.launch.cards import card_gib
from cc_train.models.shapes import PUBLISHED_CONFIGS, published_shape, weight_bytes

QWEN, DEEPSEEK = "Qwen/Qwen3-30B-A3B-Instruct-2507", "deepseek-ai/DeepSeek-V3.1"


def meta_model(hub_id: str):
    values = dict(PUBLISHED_CONFIGS[hub_id])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def vllm_slot_elements(model, r: int, tp: int, fully_sharded: bool) -> int:
    """One slot's elements on one rank, walking the real modules with the buffer shapes of vllm/lora/layers/ (0.32):
    fused MoE w13 A 2 x (E, r/f, H), w13 B 2 x (E, I/tp, r), w2 A (E, r, I/tp), w2 B (E, H/f, r); column-parallel
    A (r/f, in), B (out/tp, r); row-parallel A (r, in/tp), B (out/f, r); replicated A (r, in), B (out, r)."""
    f = tp if fully_sharded else 1
    config = model.config
    total = 0
    column = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "q_b_proj", "kv_b_proj")
    replicated = ("q_a_proj", "kv_a_proj_with_mqa")  # DeepSeek's fused_qkv_a_proj
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            out, inp = module.weight.shape
            if leaf in ("k_proj", "v_proj"):
                out = max(config.num_key_value_heads // tp, 1) * config.head_dim * tp  # KV heads replicated below tp
            if leaf in column:
                total += r // f * inp + out // tp * r
            elif leaf in replicated:
                total += r * (inp + out)
            else:  # o_proj, down_proj: row-parallel
                total += r * (inp // tp) + out // f * r
        elif leaf == "experts":
            experts, two_i, hidden = module.gate_up_proj.shape
            inter = two_i // 2
            total += experts * (2 * (r // f) * hidden + 2 * (inter // tp) * r + r * (inter // tp) + (hidden // f) * r)
        elif leaf == "gate" and hasattr(module, "weight") and module.weight.dim() == 2:  # the router: replicated
            total += r * sum(module.weight.shape)
    if config.model_type != "deepseek_v3":  # embed_tokens and lm_head LoRA (DeepSeek declares none)
        total += 2 * (config.vocab_size + config.hidden_size) * r
    return total


@pytest.mark.parametrize("hub_id", [QWEN, DEEPSEEK])
@pytest.mark.parametrize(("tp", "fully_sharded"), [(1, False), (2, False), (8, True)])
def test_slot_bytes_follow_vllms_buffers_on_the_real_modules(hub_id, tp, fully_sharded):
    expected = vllm_slot_elements(meta_model(hub_id), 16, tp, fully_sharded) * 2
    assert lora_slot_bytes(published_shape(hub_id), 16, tp, fully_sharded) == pytest.approx(expected, rel=1e-9)


def test_qwen3_30b_a3b_slots_are_about_a_gigabyte_and_a_half_on_one_gpu():
    shape = published_shape(QWEN)
    per_slot = {(tp, fs): lora_slot_bytes(shape, 16, tp, fs) / GIB for tp, fs in ((1, False), (2, False), (2, True))}
    assert per_slot == pytest.approx({(1, False): 1.584, (2, False): 1.367, (2, True): 0.798}, abs=0.001)


def verdict(hub_id: str, gpu_gib: float, adapters: int, fp8: bool = False):
    shape = published_shape(hub_id)
    weights = weight_bytes(shape, 2, fp8=fp8)
    settings = dict(adapters=adapters, rank=16, max_model_len=4096, fully_sharded=True)
    return smallest_engine(shape, weights, gpu_gib * 0.9, 8, **settings)


def test_verdicts_for_h100_and_h200_nodes():
    # Qwen3-30B-A3B, 16 adapters + 4 checkpoints each: one GPU, adapters in chunks of the slots that fit
    h200, h100 = verdict(QWEN, card_gib("H200-141GB"), 80), verdict(QWEN, card_gib("H100-80GB"), 80)
    assert (h200.gpus, h100.gpus) == (1, 1) and h200.max_loras > 10 > h100.max_loras >= 1
    # DeepSeek-V3.1 as a BF16 copy fits no node (engines span one node: no pipeline over nodes)
    merged_h200 = verdict(DEEPSEEK, card_gib("H200-141GB"), 0)
    assert not merged_h200.fits and (merged_h200.tp, merged_h200.pp) == (8, 1)
    # ... its FP8 release does, with adapters as LoRA: one H200 node; H100 nodes hold not even its weights
    lora_fp8 = verdict(DEEPSEEK, card_gib("H200-141GB"), 80, fp8=True)
    assert lora_fp8.gpus == 8 and lora_fp8.fits and lora_fp8.max_loras >= 8
    assert not verdict(DEEPSEEK, card_gib("H100-80GB"), 1, fp8=True).fits
    # a single H200 cannot hold the BF16 DeepSeek: the plan says so with its numbers
    alone = engine_plan(
        published_shape(DEEPSEEK), weight_bytes(published_shape(DEEPSEEK), 2), 125, 1, 1, 0, 16, 4096, False
    )
    assert not alone.fits and "does not fit: 1249.9 GiB of weights" in alone.describe()


def test_merges_that_need_more_disk_or_ram_than_there_is_are_refused(tmp_path):
    from conftest import compose_run

    run, _ = compose_run(f"paths.cache={tmp_path}")
    bf16 = weight_bytes(published_shape(DEEPSEEK), 2)
    assert merge_cost(bf16, 20).disk_bytes / 1e12 == pytest.approx(26.8, abs=0.1)
    with pytest.raises(ConfigError, match=r"20 merged copies of the base: 26\.84 TB of disk.*only 5\.00 TB free"):
        check_merges(run, 20, bf16, free_disk=5e12, ram=4e12)
    with pytest.raises(ConfigError, match=r"1476 GB of CPU RAM for each merge, but there are only 1024 GB of RAM"):
        check_merges(run, 1, bf16, free_disk=1e15, ram=1024e9)
    check_merges(run, 1, 1e9, free_disk=1e12, ram=64e9)  # a small model: nothing to refuse


def test_training_and_sweep_preflights_name_the_numbers(capsys):
    from conftest import compose_run

    from cc_train.launch.preflight import check_sweep, training_fits

    qwen, _ = compose_run("recipe=paper/qwen3_30b_a3b")
    assert training_fits(qwen, 1, card_gib("H200-141GB")) is None
    problem = training_fits(qwen, 1, card_gib("H100-80GB"))
    assert problem.startswith("training needs 96.1 GiB per GPU on 1 GPU(s)") and "H200-141GB: 1 GPUs" in problem
    assert "more than the card's 79.2 GiB" in problem and "H100-80GB: 2 GPUs" in problem

    h100, _ = compose_run("recipe=paper/qwen3_30b_a3b", "sweep.gpu=H100-80GB")
    with pytest.raises(ConfigError, match=r"sweep on H100-80GB, nothing queued: training needs 96\.1 GiB"):
        check_sweep(h100, 1, 16)
    check_sweep(compose_run("recipe=paper/qwen3_30b_a3b", "sweep.gpu=H200-141GB")[0], 1, 16)  # fits: no error

    # DeepSeek-V3.1 over its FP8 release: one H200 node per training task and per evaluation engine, not H100s
    check_sweep(compose_run("recipe=paper/deepseek_v3_1", "sweep.gpu=H200-141GB")[0], 8, 16)
    printed = capsys.readouterr().out
    assert (
        "carry kv_b_proj, lm_head, which vLLM serves only merged: an overlay of the FP8 release per adapter" in printed
    )
    h100, _ = compose_run("recipe=paper/deepseek_v3_1", "sweep.gpu=H100-80GB")
    with pytest.raises(
        ConfigError, match="nothing queued: training over the FP8 release needs .* one node of 8 x H200"
    ):
        check_sweep(h100, 8, 16)


def test_cc_train_plan_prints_the_evaluation_engines():
    from conftest import cc_train

    result = cc_train("plan", "recipe=paper/deepseek_v3_1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "base + 16 adapters; vLLM serves no LoRA on kv_b_proj, lm_head: each adapter on an overlay" in result.stdout
    assert "H200-141GB  per adapter: 8 GPU(s) (8 tensor x 1 pipeline): weights" in result.stdout
    excluded = cc_train("plan", "recipe=paper/deepseek_v3_1", "peft.unservable=exclude")
    assert "base + 16 adapters as LoRA in one engine" in excluded.stdout and "overlay" not in excluded.stdout


def test_adapters_kept_in_host_memory_are_bounded_by_the_memory_granted():
    from cc_train.generation.engine_memory import cpu_lora_slots

    # 112 Qwen3-30B-A3B adapters and checkpoints (eval.checkpoints=all) of 1.3 GB on a node granting 128 GiB: not all
    assert cpu_lora_slots(112, 2, 1.3e9, 128 * GIB) == int(0.5 * 128 * GIB // 1.3e9) == 52
    assert cpu_lora_slots(16, 16, 1.3e9, 2048 * GIB) == 16  # a large node: every adapter stays
    assert cpu_lora_slots(16, 4, 1.3e9, 4 * GIB) == 4  # never fewer than the GPU slots (vLLM requires it)


def test_a_sweep_whose_tasks_ask_for_too_little_host_memory_is_refused():
    from conftest import compose_run

    from cc_train.launch.preflight import check_sweep

    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "sweep.gpu=H200-141GB")
    with pytest.raises(ConfigError, match=r"asks for 32 GiB of host memory .* about 61 GiB: raise hydra.launcher"):
        check_sweep(run, 1, 16, host_gib=32)
    check_sweep(run, 1, 16, host_gib=200)  # the shipped slurm launcher's mem_gb
