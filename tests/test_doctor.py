"""`cc-train doctor` and `device=cuda`: on this CPU machine for real (no usable CUDA device, every check listed), and
with the hardware faked (GPUs, driver, SLURM allocation, Hugging Face cache): each problem named with its fix. The
NCCL check's all-reduce runs for real over spawned CPU processes (gloo)."""

from __future__ import annotations

import json

import pytest
from conftest import cc_train, compose_run

from cc_train import hardware
from cc_train.config import ConfigError
from cc_train.launch import doctor
from cc_train.launch.cards import CARDS, set_allocator_default
from cc_train.models.loading import resolve_device

CHECKS = ("torch build", "NVIDIA driver", "GPUs", "memory vs plan", "NCCL", "vLLM", "model files", "disk")
CHECKS += ("host memory", "W&B", "SLURM", "allocator")
QWEN = "Qwen/Qwen3-30B-A3B-Instruct-2507"


def test_doctor_on_this_cpu_machine_says_no_usable_cuda_device_and_lists_what_it_checked(tmp_path):
    result = cc_train("doctor", "recipe=paper/qwen3_30b_a3b", env={"CC_TRAIN_RUNS": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "[FAIL] GPUs" in result.stdout and "no usable CUDA device" in result.stdout
    assert "no usable CUDA device" in result.stderr  # the one-line error too
    for check in CHECKS:
        assert f"] {check}" in result.stdout, check
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in result.stdout  # set by cc-train before CUDA starts


def test_paper_recipes_never_fall_back_to_the_cpu(tmp_path):
    for recipe in ("paper/qwen3_30b_a3b", "paper/deepseek_v3_1"):
        assert compose_run(f"recipe={recipe}")[0].device == "cuda"
    result = cc_train("train", "recipe=paper/qwen3_30b_a3b", env={"CC_TRAIN_RUNS": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2 and "device=cuda but there is no usable CUDA device" in result.stderr
    assert not (tmp_path / "paper_qwen3_30b_a3b" / "data").exists(), "nothing was built on the CPU"


def test_a_cuda_13_torch_on_a_cuda_12_driver_is_named_with_its_fix(monkeypatch):
    monkeypatch.setattr(hardware, "torch_build", lambda: ("2.13.0", "13.0"))
    monkeypatch.setattr(hardware, "driver_cuda", lambda: "12.4")
    monkeypatch.setattr(hardware, "driver_version", lambda: "550.54.15")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reason = hardware.why_no_cuda()
    assert "built for CUDA 13.0" in reason and "supports CUDA 12.4" in reason and "CUDA 12 build" in reason
    with pytest.raises(ConfigError, match="no usable CUDA device: torch 2.13.0 is built for CUDA 13.0"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"  # the embedded recipe still runs here


def node(gpus: int = 0, card: str = "H100-80GB", driver_cuda: str | None = "13.0", **environ) -> doctor.Node:
    return doctor.Node(
        torch_version="2.13.0",
        torch_cuda="13.0",
        driver_cuda=driver_cuda,
        driver="580.65",
        gpus=tuple(doctor.Gpu(card, CARDS[card]) for _ in range(gpus)),
        no_cuda_reason=None if gpus else "faked: none",
        host_memory=1024 * 1024**3,
        host_memory_source="the machine",
        environ={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **environ},
    )


@pytest.fixture
def faked(monkeypatch, tmp_path):
    """vLLM present with CUDA kernels, NCCL answering (calls recorded), 10 TB free, an empty Hugging Face cache."""
    calls = []
    monkeypatch.setattr(doctor, "vllm_status", lambda: (True, "vLLM 0.32.0 with its CUDA kernels"))
    monkeypatch.setattr(doctor, "nccl_all_reduce", lambda gpus, timeout_s: calls.append(gpus))
    monkeypatch.setattr(doctor, "free_disk_bytes", lambda path: 10e12)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return calls


def by_check(findings: list[doctor.Finding]) -> dict[str, doctor.Finding]:
    return {f.check: f for f in findings}


def test_one_h100_is_refused_for_qwen_training_and_two_pass(faked):
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "train.per_device_batch_size=2")
    one = by_check(doctor.diagnose(run, node(1, SLURM_JOB_ID="7", SLURM_GPUS_ON_NODE="1", SLURM_NNODES="1")))
    assert one["memory vs plan"].ok is False and "request 2 GPUs (1 node(s) x 2)" in one["memory vs plan"].fix
    assert one["NCCL"].ok is None and faked == []
    two = by_check(doctor.diagnose(run, node(2, SLURM_JOB_ID="7", SLURM_GPUS_ON_NODE="2", SLURM_NNODES="1")))
    assert two["memory vs plan"].ok is True and two["NCCL"].ok is True and faked == [2]
    assert two["engine vs plan"].ok is True and two["vLLM"].ok is True and two["GPUs"].ok is True
    assert two["SLURM"].ok is True and "SLURM_GPUS_ON_NODE=2" in two["SLURM"].detail
    assert two["host memory"].ok is True  # 1 TiB granted for 2 ranks' copies of 57 GiB


def test_problems_of_a_node_are_each_named_with_a_fix(faked):
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b", "tracking=wandb")
    found = by_check(doctor.diagnose(run, node(1, driver_cuda="12.4", SLURM_JOB_ID="7", SLURM_GPUS_ON_NODE="2")))
    assert found["NVIDIA driver"].ok is False and "CUDA 12 build" in found["NVIDIA driver"].fix
    assert found["SLURM"].ok is False  # SLURM allocated 2, torch sees 1
    assert found["model files"].ok is False and found["model files"].fix == f"hf download {QWEN}"
    assert found["W&B"].ok is False and "WANDB_API_KEY" in found["W&B"].fix
    small = doctor.Node(**{**node(2).__dict__, "host_memory": 64 * 1024**3, "host_memory_source": "its cgroup"})
    assert by_check(doctor.diagnose(run, small))["host memory"].ok is False
    problems = [f for f in doctor.diagnose(run, node(2, driver_cuda="12.4")) if f.ok is False]
    assert all(f.fix for f in problems), problems


def publish(hub, repo: str, files: dict[str, str]) -> None:
    """A snapshot in the Hugging Face cache layout (models--ORG--NAME/snapshots/REV + refs/main)."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc123")


def test_the_model_must_be_in_the_cache_with_every_shard_its_index_names(faked, tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    publish(
        tmp_path / "hub",
        QWEN,
        {"config.json": "{}", "model.safetensors.index.json": json.dumps(index), index["weight_map"]["a"]: "x"},
    )
    run, _ = compose_run("recipe=paper/qwen3_30b_a3b")
    model = doctor.check_model(run)
    assert model.ok is False and "1 weight file(s) missing" in model.detail and "00002" in model.detail
    snapshot = tmp_path / "hub" / f"models--{QWEN.replace('/', '--')}" / "snapshots" / "abc123"
    (snapshot / index["weight_map"]["b"]).write_text("y")
    assert doctor.check_model(run).ok is True


def test_the_nccl_check_all_reduces_over_spawned_processes():
    """The same function as on GPUs, over 2 CPU processes with gloo: every rank gets the right sum."""
    assert doctor.nccl_all_reduce(2, timeout_s=120, backend="gloo") is None


def test_the_allocator_default_leaves_a_users_choice_alone():
    assert set_allocator_default({}) == "expandable_segments:True"
    environ = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert set_allocator_default(environ) == "max_split_size_mb:512" and len(environ) == 1


def test_the_embedded_recipe_passes_the_doctor_on_this_cpu_machine():
    """What slurm/train.sbatch runs first on a CPU node (tests/test_slurm.py): nothing in the way, the job goes on."""
    run, _ = compose_run("doctor.stages=[data,train]")
    findings = doctor.diagnose(run, doctor.probe_node())
    assert [f for f in findings if f.ok is False] == []
    assert by_check(findings)["GPUs"].ok is None and by_check(findings)["model files"].ok is True
