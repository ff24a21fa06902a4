# Two commands matter: `make run` (the service on the in-memory backend, with a
# dev token and a curl line printed) and `make test` (installs everything, then
# lints, type-checks, validates the manifests and runs the whole test suite).

VENV ?= .venv
PY := $(VENV)/bin/python
# What running needs, and everything (tests, deploy checks, benchmarks).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
USER ?= 42

.PHONY: install run token test lint typecheck manifests pytest system-deps bench bench-quick clean

$(PY):
	@python3 -m venv $(VENV) || { echo "make: python3 cannot create a virtualenv; on Debian or Ubuntu: apt-get install python3-venv" >&2; exit 1; }

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,deploy,bench]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

# Chromium for the browser tests, redis-server for the Redis tests and curl,
# from Debian's packages when missing (never a browser download of Playwright's
# own). Only this installs them: the tests look for each on PATH and, without
# it, skip (under CI, with CI=true, fail). Each command is its package's name.
SYSTEM_DEPS := chromium redis-server curl
system-deps:
	@missing=$$(for cmd in $(SYSTEM_DEPS); do command -v $$cmd >/dev/null 2>&1 || printf '%s ' $$cmd; done); \
	if [ -n "$$missing" ]; then \
		echo "make: installing $$missing(Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

run: $(RUN_STAMP)
	@bash scripts/run-dev.sh serve

# A development token for USER (default 42), signed with the secret `make run` uses.
token: $(RUN_STAMP)
	@bash scripts/run-dev.sh token $(USER)

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
