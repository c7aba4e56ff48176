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
	# An editable install leaves the modules uncompiled; where PYTHONDONTWRITEBYTECODE is set they would be
	# compiled again at every command's start.
	$(BIN)/python -m compileall -q flare_eval
	touch $(STAMP)

install-test: $(TEST_STAMP)  ## also the test, benchmark and lint tools (pytest, ruff, dask, nbclient)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

demo: install  ## one coherent evaluation of the bundled teams: collect, rank, quantify, compare, review and report (see demo_out/report/index.html); then the cohort analysis of a larger made-up set
	rm -rf demo_out && mkdir -p demo_out/runs
	for team in teamA teamB teamC; do \
	    cp -r examples/data/runs/$$team demo_out/runs/ && cp -r examples/data/predictions/$$team demo_out/runs/$$team/predictions; \
	done
	cp examples/data/runs/settings.json demo_out/runs/
	# exit code 1: finished, with a failed case (teamC's case_0002 left no output, on purpose)
	$(BIN)/flare-eval collect demo_out/runs --labels examples/data/labels --out demo_out/results.csv --no-progress; \
	    test $$? -le 1
	$(BIN)/flare-eval rank demo_out/results.csv --out demo_out/ranking
	$(BIN)/flare-eval quantify demo_out/runs/teamA/predictions examples/data/labels --out demo_out/quantify --no-progress
	$(BIN)/flare-eval compare demo_out/runs teamA teamB --out demo_out/compare --seed 2022
	$(BIN)/flare-eval review demo_out/runs --out demo_out/review.csv
	$(BIN)/flare-eval report demo_out --out demo_out/report
	$(BIN)/flare-eval cohorts examples/data/cohort_scores.csv --metadata examples/data/metadata.csv \
	    --out demo_out/cohort_example

test: install-test  ## the whole test suite (installs Docker, busybox-static and Chromium where missing), then the linter
	scripts/ensure-test-tools.sh
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: install-test
	$(BIN)/ruff check .

bench: install-test  ## ours against the official-equivalent reference, side by side
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_realistic.py
	$(BIN)/python benchmarks/bench_ranking.py
	$(BIN)/python benchmarks/bench_rank_scale.py
	$(BIN)/python benchmarks/bench_dask.py
	$(BIN)/python benchmarks/bench_lesions.py
	$(BIN)/python benchmarks/bench_scale.py

gpu-check: install  ## on the evaluation workstation: driver, NVML, the engine's NVIDIA runtime, and a CUDA workload measured on the host and in a container
	$(BIN)/flare-eval gpu-check

clean:
	rm -rf $(VENV) demo_out build *.egg-info
