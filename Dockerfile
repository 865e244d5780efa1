# GPU image for cluster nodes: Python 3.12, CUDA PyTorch + vLLM (CUDA build) + cc-train with its configs.
# Build: docker build -t cc-train:gpu .
# Run:   docker run --gpus all -v /scratch/cc:/data -e WANDB_API_KEY cc-train:gpu train recipe=paper/qwen3_30b_a3b
# Secrets (WANDB_API_KEY, OPENAI_API_KEY, HF_TOKEN) come from the environment at run time, never the image.
# Ubuntu 24.04's Python is 3.12 (Petri needs >= 3.12). PyPI's torch 2.13.0 carries its CUDA libraries, so the base
# needs none; it must equal what the gpu extra's vLLM 0.32 pins (torch==2.13.0), so pip keeps it.
FROM ubuntu:24.04

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
# Versions are pinned as compatible ranges in pyproject.toml (the gpu extra), not repeated here; torch first.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch==2.13.0" && pip install --no-cache-dir ".[gpu]"
USER 1001:1001
ENTRYPOINT ["cc-train"]
CMD ["--help"]
