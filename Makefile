# One gate for every check: `make test` = setup + stack up + ruff + mypy + pytest.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DF      = $(VENV)/bin/dataflow
PKGS    = streams agents schemas connectors ops

.PHONY: setup stack down test unit lint typecheck demo bench clean dashboard native

WEB     = ops/dashboard/web
setup: $(VENV)/.installed native dashboard

# the web dashboard's assets (served by `dataflow api` at /ui; built here, never committed)
dashboard: $(WEB)/dist/index.html

$(WEB)/dist/index.html: $(WEB)/package-lock.json $(WEB)/index.html $(WEB)/vite.config.ts \
		$(WEB)/tsconfig.json $(wildcard $(WEB)/src/*.ts $(WEB)/src/*.tsx $(WEB)/src/*.css \
		$(WEB)/src/pages/*.tsx)
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run build

# the Postgres source's native tuple decoder (Rust, PyO3; the Python one stays as fallback)
NATIVE  = connectors/postgres/native
export PATH := $(HOME)/.cargo/bin:$(PATH)
native: $(VENV)/.native

$(VENV)/.native: $(VENV)/.installed $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(NATIVE)/pyproject.toml \
		$(NATIVE)/src/lib.rs
	$(PY) -m pip install -q ./$(NATIVE)
	touch $@

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
