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
	$(BIN)/python -m pytest -q --durations=25 tests

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

# Benchmarks (issues 7 and 17; bench/README.md). `bench` is a package run with `python -m`
# from here. DURATION scales every test's duration (1 = the issue's table).
# `make bench`: coordsvc alone, quick by default; `make bench-compare`: coordsvc, etcd and
# PySyncObj, 3 interleaved rounds, markdown tables with CPU per operation;
# `make bench-scale`: how cost grows, with plots (QUICK=1: small ranges, about a minute).
DURATION ?=
ROUNDS ?= 3
QUICK ?=

.PHONY: bench bench-compare bench-anchors bench-large bench-scale

bench: $(BIN)/activate
	$(BIN)/python -m bench.load --system coordsvc --scale $(or $(DURATION),0.3)

# Issue 11's large-value row: 64 KiB and 1 MiB puts, a full list of a 100 MiB prefix, with
# throughput and peak RSS per node.
bench-large: $(BIN)/activate
	$(BIN)/python -m bench.load --system coordsvc --tests large --scale $(or $(DURATION),0.3)

bench-anchors:
	bash bench/anchors/install.sh

bench-compare: $(BIN)/activate
	-bash bench/anchors/install.sh
	$(BIN)/python -m bench.compare --rounds $(ROUNDS) --scale $(or $(DURATION),1)

# Issue 17's scale sweeps; matplotlib (the `bench` extra) draws bench/results/scale-*.png.
bench-scale: $(BIN)/activate
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.scale $(if $(QUICK),--quick)
