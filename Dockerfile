# GPU image for cluster nodes: CUDA PyTorch + vLLM (CUDA build) + cc-train with its configs.
# Build: docker build -t cc-train:gpu .    Run: docker run --gpus all -e WANDB_API_KEY cc-train:gpu train recipe=...
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/data/hf CC_TRAIN_RUNS=/data/runs CC_TRAIN_CACHE=/data/cache
RUN useradd --create-home --uid 1000 cctrain
WORKDIR /opt/cc-train
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
COPY recipes ./recipes
COPY evals ./evals
RUN pip install ".[gpu]"
USER cctrain
ENTRYPOINT ["cc-train"]
CMD ["--help"]
