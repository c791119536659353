# `make run` and `make test` are the two commands a new user needs (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch. On a CUDA host the Makefile installs the default
# (CUDA) build instead; override with `make setup TORCH_SPEC=...`.
TORCH_CPU_SPEC ?= torch==2.13.0

.PHONY: setup run test index clean test-scale

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

# Tests against real engines and large databases (tests/scale/): they FAIL when an engine is missing.
test-scale: setup
	BOT_SCALE_TESTS=1 $(BIN)/python -m pytest -q tests/scale

clean:
	rm -rf $(VENV) data .pytest_cache
