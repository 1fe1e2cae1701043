# The two set-up commands: `make up` runs the whole system on the embedded default, `make test` runs the tests.
# Both bootstrap first (a .venv from uv.lock; instant once done).

SHELL := /bin/bash
VENV := .venv/bin
# Extra arguments: `make up ARGS="--port 8000"`, `make test PYTEST_ARGS="-k migrations -x"`.
ARGS ?=
PYTEST_ARGS ?=
# Test files run in this many processes (pytest-xdist, a file's tests stay together): most tests wait on
# processes they start, so two share the two cores well. `make test PYTEST_WORKERS=0` runs them in one.
PYTEST_WORKERS ?= 2

.PHONY: bootstrap system-deps up test test-fast prod-check lint bench clean-venv

bootstrap:
	@bash scripts/bootstrap.sh

system-deps:
	@bash scripts/system-deps.sh

up: bootstrap
	$(VENV)/fracture up $(ARGS)

test: bootstrap system-deps
	@start=$$SECONDS; rc=0; \
	$(VENV)/pytest -q -rfEs --durations=15 -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 0 ]]; then verdict=PASSED; else verdict="FAILED (pytest exit $$rc)"; fi; \
	echo "== make test: $$verdict in $$((SECONDS - start))s =="; \
	exit $$rc

# The fast lane: every test but those marked slow (servers, worker processes, live systems, browsers; tests/conftest.py).
test-fast: bootstrap system-deps
	@start=$$SECONDS; rc=0; \
	$(VENV)/pytest -q -rfEs -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	echo "== make test-fast: exit $$rc in $$((SECONDS - start))s =="; \
	exit $$rc

# The production topology on this machine, from docker-compose.yml's commands, with faults (tests/test_prod_topology.py):
# PostgreSQL, redis-server, gunicorn x2, 2 inference workers, trainer, beat, DICOM node. Prints its figures;
# PROD_CHECK_REPORT=file.json keeps them. `make test` runs it too.
prod-check: bootstrap system-deps
	$(VENV)/pytest -q -rfEs -s -p no:cacheprovider -n 0 tests/test_prod_topology.py $(PYTEST_ARGS)

# ruff (style and bugs), mypy (types; packages in pyproject.toml), lint-imports (the layers; pyproject.toml).
lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports

bench: bootstrap
	@if [[ -f bench/run.py ]]; then $(VENV)/python bench/run.py $(ARGS); \
	else echo "bench: bench/run.py does not exist yet"; fi

clean-venv:
	rm -rf .venv
