# GPU image for cluster nodes: CUDA PyTorch + vLLM (CUDA build) + cc-train with its configs.
# Build: docker build -t cc-train:gpu .
# Run:   docker run --gpus all -v /scratch/cc:/data -e WANDB_API_KEY cc-train:gpu train recipe=paper/qwen3_30b_a3b
# Secrets (WANDB_API_KEY, OPENAI_API_KEY, HF_TOKEN) come from the environment at run time, never the image.
# The base image's torch must equal what the gpu extra's vLLM 0.32 pins (torch==2.13.0), so pip keeps it.
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/data/hf CC_TRAIN_RUNS=/data/runs CC_TRAIN_CACHE=/data/cache
RUN useradd --create-home --uid 1000 cctrain && mkdir -p /data && chown 1000:1000 /data
WORKDIR /opt/cc-train
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
COPY recipes ./recipes
COPY evals ./evals
COPY conditions ./conditions
# Versions are pinned as compatible ranges in pyproject.toml (the gpu extra), not repeated here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]"
USER 1000:1000
ENTRYPOINT ["cc-train"]
CMD ["--help"]
