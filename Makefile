# Two commands do all the set-up: `make run` (the pipeline) and `make test` (the tests).
# Both are idempotent: the virtual environment is made once and reinstalled only when
# pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-paper bench bench-gate quality-gate ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -q --durations=8

# the paper profile end to end on folders in the real SD-2.1 / Florence-2 / Qwen2.5 layouts (shrunk)
test-paper: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -q -m paper --durations=5

# pytest-benchmark timings of real work (tests/benchmarks, excluded from `make test`)
bench: $(STAMP)
	mkdir -p reports/bench
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest tests/benchmarks -m benchmark -p no:cacheprovider \
		--benchmark-columns=min,median,max,rounds --benchmark-json=reports/bench/last.json

# this checkout's benchmarks against the parent commit's, same machine (threshold: benchmarks/gate.yaml)
bench-gate: $(STAMP)
	$(BIN)/python scripts/bench_gate.py

# the whole pipeline under profiles/smoke.yaml vs benchmarks/quality_baseline.json (thresholds: benchmarks/quality.yaml)
quality-gate: $(STAMP)
	$(BIN)/python scripts/quality_gate.py

ui: $(STAMP)
	$(BIN)/vlv ui

clean:
	rm -rf data models metrics plots mlruns/mlflow.db mlruns/artifacts .pytest_cache
