# One gate for every check: `make test` = setup + stack up + ruff + mypy + pytest.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DF      = $(VENV)/bin/dataflow
PKGS    = streams agents schemas connectors ops

.PHONY: setup stack down test unit lint typecheck demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

stack: setup
	$(DF) stack up

down:
	-$(DF) stack down

lint: setup
	$(VENV)/bin/ruff check $(PKGS) tests

typecheck: setup
	$(VENV)/bin/mypy $(PKGS)

test: setup stack lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

demo: setup stack
	$(PY) -m ops demo

bench: setup stack
	$(PY) -m tests.bench

clean: down
	rm -rf .dataflow/stack
