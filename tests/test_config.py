"""Config validation: bad keys and values fail before any model loads, naming the key and what is allowed."""

import pytest
from conftest import cc_train, compose_run

from cc_train.config import ConfigError
from cc_train.stats import MIN_RESAMPLED_SEEDS


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("peft.r=0", "peft.r=0 is invalid: expected a positive integer"),
        ("train.learning_rate=-0.1", "train.learning_rate=-0.1 is invalid: expected a positive number"),
        ("train.lr_scheduler=triangle", "train.lr_scheduler='triangle' is invalid"),
        ("peft.r=128", "expected <= peft.max_vllm_rank (64)"),
        ("data.on_leak=ignore", "data.on_leak='ignore' is invalid: expected one of fail, drop, allow"),
    ],
)
def test_invalid_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        compose_run(override)


def test_unknown_condition_lists_allowed_values():
    result = cc_train("data", "condition=zombie")
    assert result.returncode != 0
    assert "condition" in result.stderr and "zombie" in result.stderr
    assert "conscious" in result.stderr and "non_conscious" in result.stderr and "toaster" in result.stderr


def test_typo_in_key_fails_before_loading(tmp_path):
    result = cc_train("train", "train.learnin_rate=1e-4", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode != 0
    assert "learnin_rate" in result.stderr
    assert not any(tmp_path.rglob("adapter_model.safetensors"))


def test_invalid_value_exits_2_with_message(tmp_path):
    result = cc_train("train", "peft.r=0", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode == 2
    assert "peft.r=0 is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_stages():
    result = cc_train("--help")
    assert result.returncode == 0
    for stage in ("data", "train", "pipeline"):
        assert f"  {stage} " in result.stdout


@pytest.mark.parametrize("recipe", ["embedded", "paper/qwen3_30b_a3b", "paper/deepseek_v3_1"])
def test_recipes_compose_with_paper_hyperparameters(recipe):
    run, _ = compose_run(f"recipe={recipe}", "condition=toaster", "seed=3")
    assert run.peft.r == 16 and run.train.global_batch_size == 4 and run.train.lr_scheduler == "linear"
    assert run.train.epochs == (2 if recipe == "embedded" else 1) and run.data.seed == 100
    assert run.train.dir.endswith("/train/toaster/seed3")
    if recipe.startswith("paper/"):
        assert run.train.learning_rate == 2e-4 and run.train.max_length == 4000
        assert run.peft.preset == "paper" and run.peft.unservable == "train"
        assert (run.train.adam_beta1, run.train.adam_beta2, run.train.adam_epsilon) == (0.9, 0.95, 1e-12)
        assert run.train.max_grad_norm == 0 and run.train.weight_decay == 0
        assert run.data.identity_per_block == 100 and run.data.instructions.count == 600
        assert len(run.conditions) == 4
        # enough seeds per condition for the statistics to estimate seed-to-seed variation: the report's comparisons
        # are then about the condition, not the adapters trained
        assert len(run.sweep.seeds) >= MIN_RESAMPLED_SEEDS


def test_recipe_files_start_with_their_command():
    from cc_train.resources import conf_dir

    for recipe in (conf_dir() / "recipe").rglob("*.yaml"):
        lines = recipe.read_text().splitlines()
        assert lines[0] == "# @package _global_"
        assert lines[1].startswith("# Run: cc-train "), recipe


def test_non_editable_install_finds_configs_recipes_evals_and_conditions(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("cc_train-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import cc_train.resources as r; print(r.conf_dir()); print(r.evals_dir()); "
        "print((r.conf_dir() / 'recipe' / 'paper' / 'qwen3_30b_a3b.yaml').is_file()); "
        "print((r.conditions_dir() / 'conscious_on_policy.yaml').is_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)) and out[2:] == ["True", "True"]
