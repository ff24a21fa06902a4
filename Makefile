# Two commands matter: `make run` (the service on the in-memory backend, with a
# dev token and a curl line printed) and `make test` (installs everything, then
# lints, type-checks, validates the manifests and runs the whole test suite).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck manifests pytest system-deps bench bench-quick clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,deploy]'
	touch $(STAMP)

install: $(STAMP)

# Chromium for the browser tests and redis-server for the Redis tests, from
# Debian's packages when missing (never a browser download of Playwright's own).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q redis-server; }
	@command -v curl >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q curl; }

run: $(STAMP)
	@bash scripts/run-dev.sh

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

manifests: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/check-manifests.sh

pytest: $(STAMP) system-deps
	$(PY) -m pytest

test: lint typecheck manifests pytest

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
