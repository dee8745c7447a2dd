# Everything the project needs is installed from here: `make serve` and `make test` work on a
# fresh machine. TORCH pins the CPU wheel for development and CI; GPU users: `make serve TORCH=torch`.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: serve test test-sqlite test-postgres lint typecheck check bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e '.[dev]'
	$(BIN)/python -c "import torch, transformers, fastapi, pytest"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/ckpt migrate
	$(BIN)/ckpt serve

# The whole suite on SQLite, then every test that talks to a database (marked `database`, set
# for tests using the server/database_url fixtures) again on PostgreSQL, each module in a fresh
# database on CKPT_TEST_POSTGRES_URL's server. No PostgreSQL there: that pass reports SKIPPED.
test: test-sqlite test-postgres

# Three pytest processes: most of the suite's time is spent waiting on real servers, workers
# and subprocesses to start, not on the two cores. loadscope keeps each module (and its
# module-scoped server) on one process.
PYTEST := $(BIN)/pytest -n 3 --dist loadscope

test-sqlite: $(STAMP)
	$(PYTEST)

test-postgres: $(STAMP)
	CKPT_TEST_DATABASE=postgresql $(PYTEST) -m "database and not sqlite_only"

lint: $(STAMP)
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/ruff format --check app tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy app

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
