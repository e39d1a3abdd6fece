# modelgate: the two commands are `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: install install-test quickstart test lint bench protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Editable install with what the quickstart needs (the MLflow registry, the load-test harness).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[mlflow,loadtest]"
	touch $@

# Everything the tests need: MLflow, LightGBM/XGBoost converters, the harness, pytest, linters.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[mlflow,boost,loadtest,test,lint]"
	touch $@ $(VENV)/.installed

# Debian packages the tests need: Prometheus, for the cluster's metrics test (CI runs as root).
$(VENV)/.installed-debian: | $(BIN)/python
	@if ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null; \
	  else echo "make test needs Debian's prometheus package: run it as root"; exit 1; fi; \
	fi
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

quickstart: install
	$(BIN)/modelgate quickstart

# Lint first (ruff + mypy), then pytest; pytest exiting 5 (no test collected) is a failure.
# pytest's stderr (native crash dumps) is kept and replayed after the run, with the test that was
# running when the interpreter died, so the end of a CI log names the test and the crashing thread.
test: install-test $(VENV)/.installed-debian lint
	@rm -f .pytest_cache/current-test; mkdir -p .pytest_cache; \
	$(BIN)/python -m pytest $(PYTEST_ARGS) 2>.pytest_cache/stderr; rc=$$?; \
	cat .pytest_cache/stderr >&2; \
	if [ -s .pytest_cache/current-test ]; then \
		echo "pytest died (exit $$rc) during: $$(cat .pytest_cache/current-test)"; \
		grep -a -E 'Check failed|\*\*\* SIG|terminate called|Assertion|FATAL|Fatal' \
			.pytest_cache/stderr | tail -20; \
		sed -n '/^Current thread/,/^$$/p' .pytest_cache/stderr | head -60; \
		driver=$$(ls -t /tmp/ray/session_latest/logs/python-core-driver-*.log 2>/dev/null | head -1); \
		if [ -n "$$driver" ]; then echo "the end of $$driver:"; tail -n 25 "$$driver"; fi; fi; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: install-test
	$(BIN)/ruff check serve converters loadtests tests
	$(BIN)/ruff format --check serve converters loadtests tests
	$(BIN)/mypy

bench: install-test
	$(BIN)/python -m loadtests.bench

# The gRPC stubs are committed; regenerate them after editing the .proto.
protos: install-test
	$(BIN)/python -m grpc_tools.protoc -Iserve/protos=serve/protos --python_out=. \
		--grpc_python_out=. --pyi_out=. serve/protos/grpc_predict_v2.proto

clean:
	rm -rf $(VENV) .modelgate .pytest_cache .mypy_cache .ruff_cache
