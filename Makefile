# The few verbs a newcomer needs. Everything installs into ./.venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-replay bench-memory bench-rss quality clean system-deps

# The compiled core (setup.py) is built from these: after an edit the next make builds it again
# (until then the package runs its Python sources: geoincident/compiled.py).
CORE_SOURCES := setup.py $(wildcard geo/*.py detectors/*.py)

$(STAMP): pyproject.toml $(CORE_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: the detector on a live simulated city stream (embedded broker, no Docker)
demo: $(STAMP)
	$(BIN)/geoincident demo

## test: the whole test suite (unit, property, integration against a real broker)
test: $(STAMP) system-deps
	$(BIN)/python -m pytest

## system-deps: Debian packages the tests drive for real (promtool, prometheus, chromium)
system-deps:
	@bash scripts/system-deps

lint: $(STAMP)
	$(BIN)/ruff check geoincident geo detectors stream sim tests benchmarks setup.py
	$(BIN)/ruff format --check geoincident geo detectors stream sim tests benchmarks setup.py
	$(BIN)/mypy  # geo/ and detectors/, as [tool.mypy] in pyproject.toml says

## bench-replay: replay throughput against the naive baseline (writes docs/benchmarks.md)
bench-replay: $(STAMP)
	$(BIN)/python benchmarks/replay.py

## bench: worker throughput (raw aiokafka, Faust, Quix Streams, the worker) and detection latency
##        on an embedded broker; writes docs/benchmarks.md. Quix runs from .venv-bench, built on
##        first use. Quick run: make bench BENCH_ARGS="--reports 20000 --paced-seconds 10"
bench: $(STAMP)
	$(BIN)/python benchmarks/worker.py $(BENCH_ARGS)

## bench-memory: bytes a report held in the window costs (peak RSS, 350k vs 50k reports in one
##               window); writes docs/benchmarks.md
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py

## bench-rss: the worker's RSS at 1,000 reports/s for 10 minutes once its windows are full
##            (~28 minutes in all); writes docs/benchmarks.md
bench-rss: $(STAMP)
	$(BIN)/python benchmarks/rss.py $(RSS_ARGS)

## quality: simulate -> replay -> evaluate over 5 seeds, beside the naive baseline (docs/quality.md)
quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .hypothesis build *.egg-info
	rm -f geoincident/*.so geo/*.so detectors/*.so
