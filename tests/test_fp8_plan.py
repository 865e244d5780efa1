"""The one-node plan of LoRA over DeepSeek-V3.1's FP8 release (launch/fp8_plan.py): `cc-train plan` gives one node of
8 x H200 for training, self-distillation and evaluation, refuses H100 nodes with the reason, and its parts follow
from the model's shape (weights, LoRA states, the dequantized chunk, time per adapter)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import compose_run

from cc_train.launch import fp8_plan, plan, plan_stage, preflight
from cc_train.launch.cards import card_gib
from cc_train.models.shapes import published_shape, weight_bytes

DEEPSEEK = "deepseek-ai/DeepSeek-V3.1"


def test_the_release_is_known_as_fp8_and_its_parts_follow_from_its_shape():
    shape = published_shape(DEEPSEEK)
    assert shape.fp8_block == (128, 128)
    assert fp8_plan.active_parameters(shape) == pytest.approx(37.5e9, rel=0.03)  # DeepSeek's "37B activated"
    assert weight_bytes(shape, 2, fp8=True) == pytest.approx(673e9, rel=0.01)  # the 690 GB release less its MTP layer
    # the dequantized chunk: 16 experts' gate_up stacks (2 x 2048 x 7168 each) outgrow any single projection
    assert fp8_plan.largest_dequantized(shape, 16) == 16 * 2 * 2048 * 7168
    assert fp8_plan.largest_dequantized(shape, 1) == 18432 * 7168  # then the dense MLP's widest weight


def test_the_recipe_plans_one_node_of_h200s_and_says_why_not_h100s():
    run, _ = compose_run("recipe=paper/deepseek_v3_1")
    shape = published_shape(DEEPSEEK)
    h200, h100 = fp8_plan.fp8_plan(run, "H200-141GB"), fp8_plan.fp8_plan(run, "H100-80GB")
    assert h200.fits and not h100.fits and h200.gpus == 8
    gib = plan.GIB
    assert h200.per_gpu["FP8 weights"] == pytest.approx(weight_bytes(shape, 2, fp8=True) / 8 / gib)
    lora = plan.count_lora_parameters(shape, run.peft.preset, run.peft.r, run.peft.unservable)
    assert h200.per_gpu["LoRA params+grads+AdamW"] == pytest.approx(16 * lora / 8 / gib)
    parts = sum(v for k, v in h200.per_gpu.items() if k not in ("overhead", "total"))
    parts -= min(h200.per_gpu["logits (loss) *"], h200.per_gpu["one layer *"])
    assert h200.per_gpu["total"] == pytest.approx(parts + h200.per_gpu["overhead"])
    assert preflight.training_fits(run, 8, card_gib("H200-141GB")) is None
    refused = preflight.training_fits(run, 8, card_gib("H100-80GB"))
    assert refused and "one node of 8 x H200-141GB" in refused


def test_a_micro_batch_pays_the_dequantization_so_more_rows_per_micro_batch_cost_less():
    run, _ = compose_run("recipe=paper/deepseek_v3_1")
    two = fp8_plan.fp8_plan(run, "H200-141GB")  # the recipe: 2 rows per micro-batch
    one = fp8_plan.fp8_plan(replace(run, train=replace(run.train, per_device_batch_size=1)), "H200-141GB")
    four = fp8_plan.fp8_plan(replace(run, train=replace(run.train, per_device_batch_size=4)), "H200-141GB")
    assert one.micro_batches == 2 * two.micro_batches == 1200  # 600 identity + 600 instruction rows, one epoch
    assert one.dequantize_s == pytest.approx(2 * two.dequantize_s)
    assert one.compute_s == pytest.approx(two.compute_s)  # the same tokens
    assert one.per_gpu["one layer *"] < two.per_gpu["one layer *"] < four.per_gpu["one layer *"]  # longer micro-batches
    assert one.fits and two.fits and not four.fits  # 4 rows at once outgrow the H200


def test_cc_train_plan_prints_one_node_for_training_self_distillation_and_evaluation(capsys):
    run, cfg = compose_run("recipe=paper/deepseek_v3_1")
    plan_stage.main(run, cfg)
    out = capsys.readouterr().out
    assert "training over the FP8 release" in out and "H200-141GB  1 node x 8: fits" in out
    assert "H100-80GB   1 node x 8: does not fit" in out and "train on an H200 node" in out
    assert "H200-141GB  base (self-distillation, base scores): 8 GPU(s) (8 tensor x 1 pipeline)" in out
    assert "H200-141GB  per adapter: 8 GPU(s) (8 tensor x 1 pipeline): weights" in out  # fits: no "does not fit"
    assert "3.9 GB per adapter" in out and "time per adapter" in out and "eval.backend=hf (exact" in out
    assert "32 GPUs" not in out and "nodes x" not in out and "ray" not in out.lower()


def test_the_evaluation_preflight_gives_each_overlay_engine_one_lora_slot_on_one_node(tmp_path, capsys):
    from cc_train.config import ConfigError
    from cc_train.evaluate.preflight import slots_per_engine
    from cc_train.evaluate.run import Engine

    run, _ = compose_run("recipe=paper/deepseek_v3_1")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    models = {"base": {"path": None}, "conscious-seed0": {"path": adapter}}
    engines = [Engine(["base"]), Engine(["conscious-seed0"], merged="conscious-seed0")]
    assert slots_per_engine(run, engines, models, 141 * 10**9) == {1: 1}  # the rest of the adapter, as LoRA
    assert "8 GPU(s) (8 tensor x 1 pipeline): weights" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="does not fit.*The smallest engine of one node"):
        slots_per_engine(run, engines, models, 80 * 10**9)  # H100s hold not even the FP8 weights with a KV cache


def test_doctor_accepts_one_node_of_8_h200s_for_deepseek_and_refuses_h100s(monkeypatch):
    """The first step of every sbatch job holds a node to the FP8 plan: one process, one host copy of nothing."""
    from test_doctor import by_check, node

    from cc_train.launch import doctor

    monkeypatch.setattr(doctor, "vllm_status", lambda: (True, "vLLM 0.32.0 with its CUDA kernels"))
    monkeypatch.setattr(doctor, "nccl_all_reduce", lambda gpus, timeout_s: None)
    monkeypatch.setattr(doctor, "free_disk_bytes", lambda path: 10e12)
    run, _ = compose_run("recipe=paper/deepseek_v3_1")
    slurm = {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8", "SLURM_NNODES": "1"}
    h200 = by_check(doctor.diagnose(run, node(8, "H200-141GB", **slurm)))
    assert h200["memory vs plan"].ok is True and h200["engine vs plan"].ok is True
    assert h200["host memory"].ok is True and "(1 rank(s))" in h200["host memory"].detail  # not 8 BF16 copies
    h100 = by_check(doctor.diagnose(run, node(8, "H100-80GB", **slurm)))
    assert h100["memory vs plan"].ok is False and "one node of 8 x H200-141GB" in h100["memory vs plan"].fix
    assert h100["engine vs plan"].ok is False
