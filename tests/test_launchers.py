"""The shipped accelerate configs against the training arguments the paper recipes produce: the environment
`accelerate launch --config_file slurm/accelerate/<file>` gives each rank, checked the way transformers checks it at
trainer.train(), but before any weight loads (cc-train train's preflight)."""

from __future__ import annotations

import pytest
from conftest import REPO, compose_run

from cc_train.train.launcher import deepspeed_config_mismatches
from cc_train.train.sft import sft_config

OLD_ZERO3 = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
mixed_precision: bf16
num_machines: 1
num_processes: 8
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: true
  zero3_save_16bit_model: true
  offload_optimizer_device: none
  offload_param_device: none
  gradient_accumulation_steps: 1
  gradient_clipping: 1.0
"""


def launch_environment(config_file, processes: int) -> dict[str, str]:
    """The ACCELERATE_* variables `accelerate launch --config_file FILE --num_processes N` hands every rank."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "--num_processes", str(processes), "-m", "cc_train"]
    )
    args, defaults, precision_from_config = _validate_launch_command(args)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    return {key: value for key, value in env.items() if key.startswith("ACCELERATE_")}


def paper_arguments(recipe: str, tmp_path):
    """The TrainingArguments `cc-train train recipe=<recipe>` builds on one GPU at 2 sequences per device (so 2
    accumulation steps make the paper's 4)."""
    run, _ = compose_run(f"recipe={recipe}", "train.per_device_batch_size=2")
    args = sft_config(run, "cpu", tmp_path)  # transformers refuses bf16 without a GPU; on one, the recipe sets it:
    args.bf16, args.use_cpu = True, False
    return args


@pytest.mark.parametrize("recipe", ["paper/qwen3_30b_a3b", "paper/deepseek_v3_1"])
def test_the_shipped_zero3_config_agrees_with_the_paper_recipes(recipe, tmp_path, monkeypatch):
    args = paper_arguments(recipe, tmp_path)
    assert args.gradient_accumulation_steps == 2 and args.max_grad_norm == 0
    for key, value in launch_environment(REPO / "slurm/accelerate/deepspeed_zero3.yaml", 1).items():
        monkeypatch.setenv(key, value)
    assert deepspeed_config_mismatches(args) == []


def test_a_zero3_config_with_fixed_accumulation_and_clipping_is_refused_before_loading(tmp_path, monkeypatch):
    """The config shipped before: transformers would raise at trainer.train(), after loading the model."""
    old = tmp_path / "zero3.yaml"
    old.write_text(OLD_ZERO3)
    args = paper_arguments("paper/deepseek_v3_1", tmp_path)
    for key, value in launch_environment(old, 1).items():
        monkeypatch.setenv(key, value)
    problems = deepspeed_config_mismatches(args)
    assert any("gradient_accumulation_steps=1 vs hf gradient_accumulation_steps=2" in p for p in problems), problems
    assert any("gradient_clipping=1.0 vs hf max_grad_norm=0" in p for p in problems), problems


def test_no_deepspeed_launch_no_check(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert deepspeed_config_mismatches(paper_arguments("paper/qwen3_30b_a3b", tmp_path)) == []
