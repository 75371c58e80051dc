PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 5000

.PHONY: run test sim unit integration faults typecheck lint check clean

$(BIN)/activate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/activate

run: $(BIN)/activate
	$(BIN)/coordctl cluster up --nodes 3 --dir .coord

test: $(BIN)/activate
	$(BIN)/python -m pytest -q tests

unit: $(BIN)/activate
	$(BIN)/python -m pytest -q tests/unit

sim: $(BIN)/activate
	$(BIN)/python -m pytest -q tests/sim --seeds $(SEEDS)

integration: $(BIN)/activate
	$(BIN)/python -m pytest -q tests/integration

# Long fault-injection runs: every workload on 5 nodes for DURATION seconds under kills,
# pauses and nftables partitions (needs root for nft). FAULTS_SEED=<n> replays a seed.
# DURATION is shared with the bench targets (there a scale), so no global default here.
faults: $(BIN)/activate
	FAULTS_DURATION=$(or $(DURATION),600) $(BIN)/python -m pytest -q -s tests/faults -m long

typecheck: $(BIN)/activate
	$(BIN)/mypy

lint: $(BIN)/activate
	$(BIN)/ruff check coordsvc cli tests bench

# What CI runs: the whole suite, then the type check and the linter.
check: test typecheck lint

clean:
	rm -rf $(VENV) .coord .pytest_cache

# Benchmarks (issue 7). DURATION scales every test's duration (1 = the issue's table).
# `make bench`: coordsvc alone, quick by default; `make bench-compare`: coordsvc, etcd and
# PySyncObj, 3 interleaved rounds, one markdown table (see bench/README.md).
DURATION ?=
ROUNDS ?= 3

.PHONY: bench bench-compare bench-anchors bench-large

bench: $(BIN)/activate
	$(BIN)/python bench/load.py --system coordsvc --scale $(or $(DURATION),0.3)

# Issue 11's large-value row: 64 KiB and 1 MiB puts, a full list of a 100 MiB prefix, with
# throughput and peak RSS per node.
bench-large: $(BIN)/activate
	$(BIN)/python bench/load.py --system coordsvc --tests large --scale $(or $(DURATION),0.3)

bench-anchors:
	bash bench/anchors/install.sh

bench-compare: $(BIN)/activate
	-bash bench/anchors/install.sh
	$(BIN)/python bench/compare.py --rounds $(ROUNDS) --scale $(or $(DURATION),1)
