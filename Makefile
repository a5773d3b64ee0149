# Kiln: `make up` runs the whole stack on this machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned: 2.13.0 is the CPU build (an open range would pull a multi-GB CUDA build).
TORCH := torch==2.13.0

.PHONY: up setup test test-setup system-deps browser-deps bundled-model bench chaos clean images pin

up: setup system-deps
	$(PY) -m shared.localstack

setup: $(VENV)/.kiln-installed

$(VENV)/.kiln-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

test-setup: $(VENV)/.kiln-test-installed system-deps browser-deps

$(VENV)/.kiln-test-installed: $(VENV)/.kiln-installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Redis comes from Debian's package when missing (needs root); tests and `make up` start their own.
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

# Only the tests need a browser: `make up` never installs one.
browser-deps:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (the dashboard's browser tests drive it; Playwright never downloads one)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

test: test-setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The chaos suite in full (worker/Redis/storage kills, a 1,000-job burst, a model-churn soak):
# several minutes; CI runs its reduced form inside `make test`. Results: docs/reliability.md.
chaos: test-setup
	$(PY) -m tests.chaos.run --full

bundled-model: setup
	$(PY) -m worker.bundled

clean:
	rm -rf var .pytest_cache

# Container images (needs Docker); `pin` rewrites infra/docker/requirements-*.txt from this venv.
images:
	docker build -f infra/docker/api.Dockerfile -t kiln-api:0.1.0 .
	docker build -f infra/docker/worker.Dockerfile -t kiln-worker:0.1.0-cuda .

pin: setup
	$(PY) infra/docker/pin_requirements.py
