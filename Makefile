PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 5000

.PHONY: run test sim unit integration typecheck clean

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

typecheck: $(BIN)/activate
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .coord .pytest_cache
