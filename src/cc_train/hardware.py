"""What this machine offers, read without loading anything: the CUDA that torch was built for, the newest CUDA the
NVIDIA driver supports, why torch sees no GPU, and the host memory this process is granted (the machine's, a cgroup's
limit or SLURM's allocation, whichever is smallest). `device=cuda` errors, the evaluation's preflight and
`cc-train doctor` read these; tests fake them.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path


def torch_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for or None for a CPU-only build)."""
    import torch

    return torch.__version__, torch.version.cuda


def driver_cuda() -> str | None:
    """The newest CUDA the installed NVIDIA driver supports ("12.4"), or None without a driver. Asks libcuda itself
    (cuDriverGetVersion needs no GPU context), the library torch would load."""
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if library.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def driver_version() -> str | None:
    """The NVIDIA driver's own version ("580.65.06") from nvidia-smi, or None where there is none."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.split()
    return lines[0] if result.returncode == 0 and lines else None


def major(version: str | None) -> int | None:
    return int(version.split(".")[0]) if version else None


def why_no_cuda() -> str:
    """Why torch sees no usable CUDA device here, in words that name the fix."""
    torch_version, built_for = torch_build()
    if built_for is None:
        return f"torch {torch_version} is a CPU-only build: install a CUDA build (docs: GPU set-up)"
    supported = driver_cuda()
    if supported is None:
        return (
            f"no NVIDIA driver on this machine (libcuda.so.1 not found); torch {torch_version} is built for CUDA "
            f"{built_for}. On a cluster: run on a GPU node (srun/sbatch with --gpus)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (on SLURM: request them with --gpus-per-node)"
    if major(supported) < major(built_for):
        return (
            f"torch {torch_version} is built for CUDA {built_for}, but the NVIDIA driver "
            f"{driver_version() or ''} supports CUDA {supported} at most: install the CUDA {major(supported)} "
            f"build of torch and vLLM (docs: GPU set-up, CUDA_VARIANT) or a driver >= 580"
        )
    return f"torch {torch_version} (CUDA {built_for}) finds no GPU although the driver supports CUDA {supported}"


def _cgroup_limit() -> float | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            return float(text)
    return None


def host_memory_bytes() -> tuple[float, str]:
    """(bytes of host memory this process may use, where that limit comes from)."""
    limits = {"the machine": float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))}
    cgroup = _cgroup_limit()
    if cgroup:
        limits["its cgroup"] = cgroup
    slurm = os.environ.get("SLURM_MEM_PER_NODE")
    if slurm and slurm.isdigit() and int(slurm) > 0:  # MB; 0 (--mem=0) means the whole node
        limits["SLURM_MEM_PER_NODE"] = int(slurm) * 1024**2
    source = min(limits, key=limits.get)
    return limits[source], source
