"""The CUDA build a node gets (tools/install_gpu.sh, the Dockerfile's CUDA_VARIANT): the gpu extra's lock checked
against the packages' own metadata on PyPI (`pip install --dry-run --no-deps --report`: metadata only, no CUDA
installed, a few seconds), and the constraints of a CUDA 12 variant without anything built for CUDA 13."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
from conftest import LIMIT_S, REPO
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(REPO / "tools"))
from gpu_lock import LOCK, constraints  # noqa: E402

# what the gpu extra is about: their metadata states the requirements that made the lock what it is
KEY = ("torch", "vllm", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
NODE = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
NODE |= {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython"}


def pins() -> dict[str, str]:
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines}


def unmet(requirement: str, pinned: dict[str, str], extras: tuple[str, ...] = ("",)) -> str | None:
    """Why the lock does not satisfy `requirement` on a Linux x86-64 Python 3.12 node, or None."""
    req = Requirement(requirement)
    if req.marker and not any(req.marker.evaluate({**NODE, "extra": extra}) for extra in extras):
        return None
    version = pinned.get(canonicalize_name(req.name))
    if version is None:
        return f"{req} is not in the lock"
    return None if req.specifier.contains(version, prereleases=True) else f"{req} but the lock has {version}"


@pytest.fixture(scope="module")
def key_metadata(tmp_path_factory) -> dict[str, dict]:
    pinned = pins()
    report = tmp_path_factory.mktemp("gpu") / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
    command += ["--only-binary=:all:", "--report", str(report), *(f"{name}=={pinned[name]}" for name in KEY)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT_S)
    if result.returncode != 0 and any(
        word in result.stderr for word in ("NewConnectionError", "Temporary failure in name resolution", "Max retries")
    ):
        pytest.skip(f"PyPI is unreachable from here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    installed = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in installed}


def test_the_gpu_lock_satisfies_what_vllm_torch_and_the_training_stack_require(key_metadata):
    pinned = pins()
    assert set(key_metadata) == set(KEY)
    problems = [
        f"{name}: {why}"
        for name, metadata in key_metadata.items()
        for requirement in metadata.get("requires_dist", [])
        if (why := unmet(requirement, pinned))
    ]
    assert problems == []
    # the CUDA 13 variant: PyPI's torch 2.13.0 pulls CUDA 13.0's toolkit (a driver >= 580), and vLLM is built on it
    torch_needs = key_metadata["torch"]["requires_dist"]
    assert any(r.startswith("cuda-toolkit") and "==13.0" in r for r in torch_needs), torch_needs
    assert "torch==2.13.0" in key_metadata["vllm"]["requires_dist"]


def test_the_gpu_lock_satisfies_cc_trains_own_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert [why for r in requirements if (why := unmet(r, pins()))] == []


def test_a_cuda_12_node_takes_every_cuda_built_package_from_its_own_variant():
    cu130, cu128 = constraints("cu130").split(), constraints("cu128").split()
    cuda_built = sorted(set(cu130) - set(cu128))
    names = {line.split("==")[0] for line in cuda_built}
    assert {"torch", "vllm", "triton", "torchvision", "torchaudio", "cuda-toolkit", "nvidia-nccl-cu13"} <= names
    assert not [line for line in cu128 if "cu13" in line or line.startswith(("cuda-", "nvidia-"))]
    assert {"transformers==5.19.0", "trl==1.16.0", "peft==0.21.2"} <= set(cu128)  # the rest pinned alike
    with pytest.raises(SystemExit, match="CUDA variant 'cuda12' is invalid"):
        constraints("cuda12")
    script = (REPO / "tools" / "install_gpu.sh").read_text()
    assert "download.pytorch.org/whl/$VARIANT" in script and "vllm-$VLLM_VERSION+$VARIANT" in script
    assert "ARG CUDA_VARIANT=cu130" in (REPO / "Dockerfile").read_text()
