# GPU image for cluster nodes: Python 3.12, CUDA PyTorch + vLLM (CUDA build) + cc-train with its configs.
# Build: docker build -t cc-train:gpu .
# Run:   docker run --gpus all -v /scratch/cc:/data -e WANDB_API_KEY cc-train:gpu train recipe=paper/qwen3_30b_a3b
# Secrets (WANDB_API_KEY, OPENAI_API_KEY, HF_TOKEN) come from the environment at run time, never the image.
# Ubuntu 24.04's Python is 3.12 (Petri needs >= 3.12). The wheels carry their CUDA libraries, so the base needs none.
# CUDA_VARIANT picks the build for the nodes' NVIDIA driver (tools/install_gpu.sh): cu130 (driver >= 580, PyPI, the
# default) or a CUDA 12 variant (e.g. --build-arg CUDA_VARIANT=cu128: torch and vLLM from PyTorch's index and vLLM's
# release for that CUDA); every other package is pinned by constraints/gpu-cu130.txt either way.
FROM ubuntu:24.04
ARG CUDA_VARIANT=cu130

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/data/hf CC_TRAIN_RUNS=/data/runs CC_TRAIN_CACHE=/data/cache \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev gcc \
    && rm -rf /var/lib/apt/lists/* && python3.12 -m venv /opt/venv
RUN useradd --create-home --uid 1001 cctrain && mkdir -p /data && chown 1001:1001 /data
WORKDIR /opt/cc-train
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
COPY recipes ./recipes
COPY evals ./evals
COPY conditions ./conditions
COPY constraints ./constraints
COPY tools/gpu_lock.py tools/install_gpu.sh ./tools/
RUN bash tools/install_gpu.sh "$CUDA_VARIANT"
USER 1001:1001
ENTRYPOINT ["cc-train"]
CMD ["--help"]
