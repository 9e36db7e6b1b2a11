# alignkit: `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ and git).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch by default. On a GPU machine: make test TORCH_SPEC=torch   (PyPI's Linux wheel is a CUDA build)
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-all lint bench bench-trl bench-grpo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/alignkit demo

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports  # the layers contract in .importlinter

bench: setup
	$(BIN)/python bench/logprobs_memory.py --sweep

bench-trl:
	$(PYTHON) bench/dpo_vs_trl.py

bench-grpo:
	$(PYTHON) bench/grpo_vs_trl.py

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache
