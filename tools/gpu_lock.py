"""The gpu extra's lock, and the constraints a node of a given CUDA variant installs with.

    python tools/gpu_lock.py lock                 # resolve `torch==2.13.0 ".[gpu]"` on PyPI (pip install --dry-run
                                                  # --report, Linux x86-64, Python 3.12; about 12 minutes) and write
                                                  # constraints/gpu-cu130.txt
    python tools/gpu_lock.py constraints cu130    # the lock as it is: a node whose driver runs CUDA 13 (>= 580)
    python tools/gpu_lock.py constraints cu128    # the lock less the packages built per CUDA version (torch, vLLM,
                                                  # their kernels and NVIDIA's libraries): a CUDA 12 node takes those
                                                  # from PyTorch's index and vLLM's release for that variant

PyPI's torch 2.13.0 (Linux x86-64) is the CUDA 13.0 build and vLLM 0.32.0's PyPI wheel is built on it, so the lock
is the cu130 variant; tools/install_gpu.sh and the Dockerfile (build argument CUDA_VARIANT) install either.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints" / "gpu-cu130.txt"
TORCH = "2.13.0"
# built for one CUDA version: a CUDA 12 node gets these from its variant's indexes instead of the lock
CUDA_BUILT = re.compile(r"^(torch|torchvision|torchaudio|vllm|triton|flashinfer.*|xformers|nvidia-.*|cuda-.*)==")


def lock() -> None:
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--report", str(report), f"torch=={TORCH}", f"{REPO}[gpu]"]
        subprocess.run(command, check=True)
        installed = json.loads(report.read_text())["install"]
    pins = sorted(
        f"{item['metadata']['name'].lower()}=={item['metadata']['version']}"
        for item in installed
        if item["metadata"]["name"] != "cc-train"
    )
    header = (
        f'# What `pip install torch=={TORCH} ".[gpu]"` resolved to on PyPI (Linux x86-64, Python 3.12): the CUDA\n'
        "# 13.0 variant (NVIDIA driver >= 580). Written by `python tools/gpu_lock.py lock`; installed by\n"
        "# tools/install_gpu.sh.\n"
    )
    LOCK.write_text(header + "\n".join(pins) + "\n")
    print(f"wrote {len(pins)} pins to {LOCK}")


def constraints(variant: str) -> str:
    """The lock's lines for a node of `variant` (cu130: all of them; a CUDA 12 variant: not the CUDA-built ones)."""
    if not re.fullmatch(r"cu1[0-9]{2}", variant):
        raise SystemExit(f"CUDA variant {variant!r} is invalid: expected cu130, or a CUDA 12 one such as cu128, cu126")
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    if variant != "cu130":
        lines = [line for line in lines if not CUDA_BUILT.match(line)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["lock"]:
        lock()
    elif sys.argv[1:2] == ["constraints"] and len(sys.argv) == 3:
        sys.stdout.write(constraints(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
