# Two jobs for a fresh machine: `make demo` (the main job: the whole simulated head at work) and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/glass-inspect: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cpu,train]'
	touch $@

demo: $(BIN)/glass-inspect
	$(BIN)/glass-inspect run --sim --samples 3 --seed 1 --overlay demo/overlay

test: $(BIN)/glass-inspect
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile.jetson
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/glass-inspect
	$(BIN)/python benchmarks/sim_render.py
	$(BIN)/python benchmarks/space_to_depth.py
	$(BIN)/python benchmarks/dbscan.py
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/head.py
	$(BIN)/python benchmarks/codec.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
