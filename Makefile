# flow-auditor — every target creates what it needs (.venv, Debian packages) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tools installed by scripts/install-test-deps.sh (kubectl) come first on PATH.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: run test bench bench-server bench-standin soak lint typecheck proto monitoring clean system-deps screenshots \
	native replay-example

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## native: compile the judging core with mypyc (scripts/build_native.py): extension modules beside their
## sources in auditor/, rebuilt when a compiled source or a module it imports changes; FLOW_AUDITOR_PURE=1
## runs the Python sources instead
NATIVE_MANIFEST := auditor/native_manifest.json
NATIVE_INPUTS   := $(shell $(PYTHON) scripts/build_native.py --sources)
native: $(NATIVE_MANIFEST)
$(NATIVE_MANIFEST): $(STAMP) scripts/build_native.py $(NATIVE_INPUTS)
	$(PY) scripts/build_native.py

## run: the daemon against the embedded demo Hubble server (metrics on http://localhost:9967/metrics)
run: $(STAMP) native
	$(VENV)/bin/flow-auditor demo --listen-address 127.0.0.1:9967

## replay-example: replay the bundled Airflow flows and print the report
replay-example: $(STAMP) native
	$(VENV)/bin/flow-auditor replay examples/airflow/flows.jsonl --matrix examples/airflow/matrix.yaml --fail-on none

## test: install the real tools (Prometheus, promtool, Alertmanager, kubectl), lint, type-check, run all tests
test: $(STAMP) native system-deps
	$(VENV)/bin/ruff check auditor monitoring tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check auditor monitoring tests bench examples
	$(VENV)/bin/ruff format --check auditor monitoring tests bench examples
	$(PY) -m monitoring.build --check
	$(VENV)/bin/hadolint Dockerfile

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## bench: one table of stage, events/s, ratio to its floor and peak RSS (replay stages), then instructions
## per event under callgrind (repeatable whatever the load); under 3 minutes;
## BENCH_FULL=1: 1M events, plus bench/learn.py, bench/live.py and the live path against the C++ stand-in
## server (make bench-standin) in full (long). Generated inputs are removed.
bench: $(STAMP) native system-deps
	$(PY) bench/run.py
	$(PY) bench/instructions.py
	if [ -n "$(BENCH_FULL)" ] && [ "$(BENCH_FULL)" != 0 ]; then \
	  $(PY) bench/learn.py && $(PY) bench/live.py && $(MAKE) bench-standin; fi

## bench-server: the C++ stand-in Hubble server (bench/standin/), from Debian's libgrpc++-dev; not in make test
BENCH_SERVER := bench/out/standin
bench-server: $(BENCH_SERVER)
$(BENCH_SERVER): bench/standin/standin.cc scripts/install-bench-deps.sh
	scripts/install-bench-deps.sh
	mkdir -p bench/out
	g++ -O2 -std=c++17 -o $@ bench/standin/standin.cc $$(pkg-config --cflags --libs grpc++ protobuf) -pthread

## bench-standin: the live path against the stand-in, with and without the field mask (bench/standin.py)
bench-standin: $(STAMP) bench-server
	$(PY) bench/standin.py

## screenshots: the README's picture of the HTML report (docs/images/report.png), in headless Chromium
screenshots: $(STAMP) native system-deps
	$(PY) scripts/screenshots.py

## soak: the daemon for SOAK_MINUTES (default 3) against the demo server under churn, scrapes, SIGHUP
## storms, reloads, server restarts and clock steps; checks threads, exact counts, RSS and series
SOAK_MINUTES ?= 3
soak: $(STAMP) native
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

## monitoring: regenerate the alert rules and the Grafana dashboard from monitoring/
monitoring: $(STAMP)
	$(PY) -m monitoring.build

## proto: regenerate auditor/_proto from proto/
proto: $(STAMP)
	$(PY) -m auditor._protogen

system-deps:
	scripts/install-test-deps.sh

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build *.egg-info $(NATIVE_MANIFEST)
	find auditor -name '*.so' -delete
