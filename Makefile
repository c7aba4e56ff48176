# Set-up and everyday tasks. Needs only Python 3.10+ (3.11 preferred) and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp

.PHONY: install install-test demo test lint bench gpu-check clean

install: $(STAMP)  ## flare-eval and what it needs to run, nothing more

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install-test: $(TEST_STAMP)  ## also the test, benchmark and lint tools (pytest, ruff, dask, nbclient)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

demo: install  ## score, rank, quantify, cohorts, compare, review and report on the bundled example data (see demo_out/report/index.html)
	$(BIN)/flare-eval score examples/data/predictions/teamA examples/data/labels --out demo_out/runs/teamA
	$(BIN)/flare-eval score examples/data/predictions/teamB examples/data/labels --out demo_out/runs/teamB
	$(BIN)/flare-eval rank examples/data/results.csv --out demo_out/ranking --seed 2022
	$(BIN)/flare-eval quantify examples/data/predictions/teamA examples/data/labels --out demo_out/quantify
	$(BIN)/flare-eval cohorts examples/data/cohort_scores.csv --metadata examples/data/metadata.csv \
	    --out demo_out/cohorts
	$(BIN)/flare-eval compare examples/data/cohort_scores.csv teamA teamA-nounlabeled --out demo_out/compare --seed 2022
	$(BIN)/flare-eval review examples/data/cohort_scores.csv --out demo_out/review.csv
	$(BIN)/flare-eval report examples/data/results.csv --ranking demo_out/ranking --runs demo_out/runs \
	    --quantify demo_out/quantify --cohorts demo_out/cohorts --compare demo_out/compare --out demo_out/report

test: install-test  ## the whole test suite (installs Docker, busybox-static and Chromium where missing), then the linter
	scripts/ensure-test-tools.sh
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: install-test
	$(BIN)/ruff check .

bench: install-test  ## ours against the official-equivalent reference, side by side
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_ranking.py
	$(BIN)/python benchmarks/bench_dask.py

gpu-check: install  ## on the evaluation workstation: driver, NVML, the engine's NVIDIA runtime, and a CUDA workload measured on the host and in a container
	$(BIN)/flare-eval gpu-check

clean:
	rm -rf $(VENV) demo_out build *.egg-info
