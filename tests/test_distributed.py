"""Training with more than one process, as the launchers run it: `accelerate launch --num_processes 2` with the shipped
slurm/accelerate/fsdp.yaml on CPU ranks (gloo; rehearsal/fsdp_on_cpu.py switches accelerate's CPU launch to FSDP, which
it otherwise enables only on GPUs). Two ranks give the adapter of one rank over the same order (the global batch and
the loss normalisation across ranks, measured), every checkpoint of the sharded run carries an adapter, and the
evaluation of checkpoints finds them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import LIMIT_S, REPO, cc_train
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TRAINING = [
    "train",
    "model=tiny_qwen3_moe",
    "peft=paper",  # attention, routed experts and lm_head: the paper's set, its loss through the logits
    "device=cpu",
    "data.identity_per_block=2",
    "data.instructions.count=4",
    "data.instructions.max_new_tokens=8",
    "train.max_steps=4",
    "train.save_steps=2",
    "train.per_device_batch_size=1",
    "train.max_length=128",
]


def launch_ranks(*args: str, env: dict, ranks: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file slurm/accelerate/fsdp.yaml --num_processes <ranks>` on this CPU."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "slurm/accelerate/fsdp.yaml"),
        "--num_processes", str(ranks),
        "--mixed_precision", "no",  # hardware: bf16 autocast is a GPU setting
        str(REPO / "rehearsal/fsdp_on_cpu.py"), *args,
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=LIMIT_S)


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    data = cc_train("data", *TRAINING[1:], "experiment=two", env={"CC_TRAIN_RUNS": str(root)})  # before the ranks
    assert data.returncode == 0, data.stderr[-3000:]
    two = launch_ranks(*TRAINING, "experiment=two", env={"CC_TRAIN_RUNS": str(root)})
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    one = cc_train(*TRAINING, "experiment=one", env={"CC_TRAIN_RUNS": str(root)})
    assert one.returncode == 0, one.stderr[-4000:]
    return {name: root / name / "train" / "conscious" / "seed0" for name in ("two", "one")}


def test_two_ranks_give_the_adapter_of_one_rank(two_and_one):
    manifests = {name: json.loads((run / "adapter" / "manifest.json").read_text()) for name, run in two_and_one.items()}
    assert manifests["two"]["batch"] == {
        "global_batch_size": 4, "per_device_batch_size": 1, "world_size": 2, "gradient_accumulation_steps": 2,
        "filler_ranks": 0,
    }  # fmt: skip
    assert (
        manifests["one"]["batch"]["world_size"] == 1 and manifests["one"]["batch"]["gradient_accumulation_steps"] == 4
    )
    two = load_file(two_and_one["two"] / "adapter" / "adapter_model.safetensors")
    one = load_file(two_and_one["one"] / "adapter" / "adapter_model.safetensors")
    assert two.keys() == one.keys() and any("lm_head" in name for name in two)
    moved = max((one[name] - 0).abs().max().item() for name in one if "lora_B" in name)
    gap = max((two[name] - one[name]).abs().max().item() for name in one)
    print(f"2 ranks x 1 x accumulation 2 vs 1 rank x 1 x 4 after 4 steps: max |diff| {gap:.2e} (largest B {moved:.2e})")
    assert moved > 1e-3 and gap < 1e-5


def test_every_checkpoint_of_the_sharded_run_carries_an_adapter_that_evaluation_uses(two_and_one, tmp_path):
    run = two_and_one["two"]
    for step in (2, 4):
        checkpoint = run / "checkpoints" / f"checkpoint-{step}"
        assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # the Trainer's own sharded state, for resuming
        assert (checkpoint / "adapter_config.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    final = load_file(run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(final[name], adapter[name]) for name in adapter)

    evaluation = [
        "eval",
        "model=tiny_qwen3_moe",
        "eval.backend=hf",
        f"eval.adapters=[{run / 'adapter'}]",
        "eval.checkpoints=all",
        "eval.open_ended=false",
        "eval.dimensions=[claims_conscious]",
        "eval.multiturn.enabled=false",
    ]
    result = cc_train(*evaluation, f"eval.dir={tmp_path / 'eval'}", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(set(pd.read_csv(tmp_path / "eval" / "trajectories.csv").step)) == [0, 2, 4]

    # a checkpoint without an adapter (sharded, from before): evaluation says so instead of skipping it silently
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / "checkpoints" / "checkpoint-2" / name).unlink()
    shutil.rmtree(tmp_path / "eval")
    result = cc_train(*evaluation, f"eval.dir={tmp_path / 'eval'}", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert (
        result.returncode == 0
        and "1 checkpoint(s) hold no adapter and are not evaluated (checkpoint-2)" in result.stdout
    )


def test_ranks_without_a_dataset_refuse_at_once_instead_of_waiting_for_one_of_them(tmp_path):
    """Two ranks, no dataset: building it (self-distillation with the base model) is not a rank's job while the others
    wait outside any process group, where no timeout fires. The ranks refuse at once, naming the command to run first.
    How many of them print it before the launcher stops the rest is a race, so one message is what is asserted; that
    none waited is the launch returning at all (launch_ranks has a timeout)."""
    started = time.monotonic()
    result = launch_ranks(*TRAINING, "experiment=nodata", env={"CC_TRAIN_RUNS": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "run `cc-train data` with the same overrides first" in output, output[-3000:]
    assert not (tmp_path / "nodata" / "data" / "conscious.jsonl").exists(), "no rank built it"
    print(f"2 ranks without a dataset: refused in {time.monotonic() - started:.0f} s")


def test_more_ranks_than_the_batch_has_sequences_give_the_adapter_of_one_rank(tmp_path):
    """A global batch of 2 on 4 ranks: 2 take the step's sequences, 2 take filler rows that weigh nothing in the loss;
    the adapter is that of 1 rank with a batch of 2 (1 per device x 2 accumulation steps) over the same order."""
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    batch = ["train.global_batch_size=2", "train.sampling=random", "data.order_seed=7"]
    assert cc_train("data", *TRAINING[1:], "experiment=one", env=env).returncode == 0  # one dataset, built once
    data = f"data.dir={tmp_path / 'one' / 'data'}"
    four = launch_ranks(*TRAINING, *batch, data, "experiment=four", env=env, ranks=4)
    assert four.returncode == 0, four.stdout[-2000:] + four.stderr[-4000:]
    one = cc_train(*TRAINING, *batch, data, "experiment=one", env=env)
    assert one.returncode == 0, one.stderr[-4000:]
    runs = {name: tmp_path / name / "train" / "conscious" / "seed0" / "adapter" for name in ("four", "one")}
    layout = json.loads((runs["four"] / "manifest.json").read_text())["batch"]
    assert layout["world_size"] == 4 and layout["filler_ranks"] == 2 and layout["gradient_accumulation_steps"] == 1
    assert json.loads((runs["one"] / "manifest.json").read_text())["batch"]["gradient_accumulation_steps"] == 2
    four_ranks = load_file(runs["four"] / "adapter_model.safetensors")
    one_rank = load_file(runs["one"] / "adapter_model.safetensors")
    gap = max((four_ranks[name] - one_rank[name]).abs().max().item() for name in one_rank)
    moved = max(one_rank[name].abs().max().item() for name in one_rank if "lora_B" in name)
    print(f"4 ranks (2 fillers) x 1 vs 1 rank x 1 x accumulation 2, global batch 2, 4 steps: max |diff| {gap:.2e}")
    assert moved > 1e-3 and gap < 1e-5
