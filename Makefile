# The two commands (README): `make run` and `make test`. Also: lint, bench, install, lock.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The first Python 3.11+ on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
PYTEST := $(PY) -m pytest

.PHONY: run test test-sqlite test-postgres lint bench install lock clean screenshots

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/portal migrate
	$(VENV)/bin/portal demo
	$(VENV)/bin/portal serve

# The whole suite on SQLite and, at the same time, every database test again on PostgreSQL (Redis-backed
# tests run in both, on two Redis databases); see scripts/run-tests.sh.
test: install
	@eval "$$(scripts/test-services.sh)" && PY=$(PY) scripts/run-tests.sh

test-sqlite: install
	@eval "$$(scripts/test-services.sh)" && PORTAL_TEST_ENGINE=sqlite $(PYTEST)

test-postgres: install
	@eval "$$(scripts/test-services.sh)" && PORTAL_TEST_ENGINE=postgres $(PYTEST) -m db

# Re-take the README's screenshots (the browser tests save them under docs/screenshots/).
screenshots: install
	@eval "$$(scripts/test-services.sh)" && PORTAL_TEST_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PYTEST) tests/browser

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict src workers

bench: install
	$(PY) bench/policy.py
	$(PY) bench/members.py
	$(PY) bench/domains.py
	$(PY) bench/sessions.py
	$(PY) bench/oidc.py
	$(PY) bench/load.py
	$(PY) bench/api.py
	$(PY) bench/webhooks.py
	$(PY) bench/scim.py
	$(PY) bench/links.py

# Re-pin every dependency (needs network): edit pyproject.toml, then `make lock`.
lock: install
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
