# Set-up and everyday tasks. Needs only Python 3.10+ (3.11 preferred) and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install  ## score the bundled example predictions, rank the example results
	$(BIN)/flare-eval score examples/data/predictions/teamA examples/data/labels --out demo_out/teamA
	$(BIN)/flare-eval rank examples/data/results.csv --out demo_out/ranking --seed 2022

test: install  ## the whole test suite (installs Docker, busybox-static and Chromium where missing), then the linter
	scripts/ensure-test-tools.sh
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: install
	$(BIN)/ruff check .

bench: install  ## ours against the official-equivalent reference, side by side
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_ranking.py

clean:
	rm -rf $(VENV) demo_out build *.egg-info
