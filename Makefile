# Two commands on a fresh machine: `make run` and `make test`. Each does its own set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-sqlite test-postgres lint bench system-deps services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# Embedded mode: SQLite, Huey's SQLite queue, consumer threads inside the web process.
run: install
	$(BIN)/python -m pa init-db
	$(BIN)/python -m pa seed-demo
	$(BIN)/python run_web.py

# Programs the tests run: redis-server (each test run starts its own), Chromium for
# the browser tests, poppler's pdftotext for reading PDFs.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v pdftotext >/dev/null || missing="$$missing poppler-utils"; \
	command -v pg_dump >/dev/null || missing="$$missing postgresql-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# PostgreSQL runs on these machines at 127.0.0.1:5432; start it if it is down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || \
	  (pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start && \
	   for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done)

test: install system-deps services test-sqlite test-postgres

test-sqlite: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser tests do not depend on the database: they run in the SQLite pass only.
test-postgres: install
	PA_TEST_DB=postgres $(BIN)/python -m pytest -m "not browser" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pa tests bench run_web.py run_consumer.py
	$(BIN)/mypy

# bench_all.py runs bench_spine.py on both databases (wrk is the second, independent
# client) and draws docs/bench/*.png; then the benchmarks of the single job types.
bench: install system-deps services
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/bench_all.py
	@for b in bench/bench_report.py bench/bench_analytics.py bench/bench_import.py \
	          bench/bench_archive.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
