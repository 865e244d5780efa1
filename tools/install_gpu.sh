#!/usr/bin/env bash
# Install cc-train with CUDA torch and vLLM into the active Python 3.12 environment, for the node's NVIDIA driver:
#   bash tools/install_gpu.sh cu130    # driver >= 580 (CUDA 13): everything from PyPI, pinned by constraints/gpu-cu130.txt
#   bash tools/install_gpu.sh cu128    # a CUDA 12 driver: torch 2.13.0 and vLLM 0.32.0 built for CUDA 12.8 (PyTorch's
#                                      # index, vLLM's release wheel), everything else pinned as for cu130
# Which one: `nvidia-smi` prints the newest CUDA the driver runs ("CUDA Version: 12.4" -> a cu12x variant that PyTorch
# and vLLM both publish for 2.13.0 / 0.32.0); `cc-train doctor` says so too. Extra pip options: PIP_ARGS="...".
set -euo pipefail
VARIANT=${1:-cu130}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
cd "$(dirname "$0")/.."
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
python tools/gpu_lock.py constraints "$VARIANT" > "$constraints"
# shellcheck disable=SC2086  # PIP_ARGS holds several options
if [ "$VARIANT" = cu130 ]; then
  python -m pip install ${PIP_ARGS:-} -c "$constraints" "torch==$TORCH_VERSION"
else
  index="https://download.pytorch.org/whl/$VARIANT"
  wheel="https://github.com/vllm-project/vllm/releases/download/v$VLLM_VERSION/vllm-$VLLM_VERSION+$VARIANT-cp38-abi3-manylinux_2_28_x86_64.whl"
  python -m pip install ${PIP_ARGS:-} --index-url "$index" "torch==$TORCH_VERSION"
  python -m pip install ${PIP_ARGS:-} -c "$constraints" --extra-index-url "$index" "vllm @ $wheel"
fi
# shellcheck disable=SC2086
python -m pip install ${PIP_ARGS:-} -c "$constraints" ".[gpu]"
python -c "import torch, vllm; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| vllm', vllm.__version__)"
