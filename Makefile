# Two jobs for a fresh machine: `make demo` (the main job: the whole simulated head at work) and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the window classifier classify-demo uses: the shipped one, or e.g. CLASSIFY_MODEL=runs/fusion.onnx
CLASSIFY_MODEL ?= shipped:attention_fusion.onnx

.PHONY: demo classify-demo test lint bench clean

$(BIN)/glass-inspect: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cpu,train]'
	touch $@

demo: $(BIN)/glass-inspect
	$(BIN)/glass-inspect run --sim --samples 3 --seed 1 --overlay demo/overlay

# Single dark-field images through the window classifier: 4 simulated frames (2 scratched, 2
# clean) and 2 broken files, so exit status 1 (some images ERROR) is the expected outcome; any
# other failure (2: no usable model, see CLASSIFY_MODEL) fails the target.
classify-demo: $(BIN)/glass-inspect
	rm -rf demo/darkfield demo/darkfield-overlay demo/darkfield-verdicts.json
	$(BIN)/glass-inspect simulate-darkfield demo/darkfield --count 4 --clean 2 --broken --seed 900
	$(BIN)/glass-inspect classify demo/darkfield --model $(CLASSIFY_MODEL) \
		--overlay demo/darkfield-overlay --json demo/darkfield-verdicts.json --bit-depth 12; \
	rc=$$?; test $$rc -le 1 || exit $$rc

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
