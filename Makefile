# make test: a fresh machine to a green test run, with nothing installed beforehand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test unit integration faults lint bench demo devserver dashboard clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

# faketime (clock-skew tests), prometheus/promtool (deploy checks, the live
# Prometheus test) and chromium/chromium-driver (the dashboard's browser tests)
# come from Debian; tests that need them skip with a reason where they cannot
# be installed.
system-deps:
	@if ! command -v faketime >/dev/null || ! command -v promtool >/dev/null \
		|| ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null \
		|| ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				faketime prometheus chromium chromium-driver >/dev/null) \
			|| echo "warning: could not install faketime/prometheus/chromium; those tests will skip"; \
		else echo "note: faketime/promtool/chromium missing and not root; those tests will skip"; fi; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/integration

faults: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/faults

lint: $(STAMP)
	$(BIN)/ruff check streamqueue tests
	$(BIN)/mypy --strict

# A 3-node replica set, 2 workers, a reaper and 2,000 jobs; kills a worker
# mid-run. Ctrl-C stops everything. DEMO_ARGS passes options (see --help).
demo: $(STAMP)
	$(BIN)/python -m streamqueue.demo $(DEMO_ARGS)

devserver: $(STAMP)
	$(BIN)/python -m streamqueue.devserver --nodes 3

# The web dashboard on http://127.0.0.1:8080/ (STREAMQUEUE_URI, STREAMQUEUE_DB set).
dashboard: $(STAMP)
	$(BIN)/python -m streamqueue.dashboard $(DASHBOARD_ARGS)

# Throughput, latency, idle load, depth and herd, each against polling and the
# raw-pymongo floor, on a replica set of its own (~15 min; BENCH_ARGS=--quick: < 2 min).
# Writes bench-results/results.json, results.md and *.png.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m streamqueue.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bench-results .pytest_cache .mypy_cache .ruff_cache *.egg-info
