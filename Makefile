# One venv for everything; `make demo` and `make test` create or reuse it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOME_DIR ?= tol-data

.PHONY: help install system-deps peers demo test test-fast lint bench serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# facenet-pytorch (the faces scorer's MTCNN, weights inside its wheel) pins torch < 2.3 and numpy < 2,
	# stale pins: it runs on ours, so it is installed without its dependencies.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $@

install: $(STAMP)  ## create the venv and install everything (cached by pyproject hash)

demo: $(STAMP)  ## run every stage on the offline sample world under $(HOME_DIR)
	$(BIN)/tol --home $(HOME_DIR) demo

# Debian packages the tests drive: chromium (the browser test, tests/test_ui.py, through Playwright) and
# postgresql (Prefect on a real database, tests/test_postgres.py). Installed when missing and apt-get can (root,
# or sudo without a password); otherwise those tests say what to install.
SYSTEM_DEPS_MISSING = $(shell command -v chromium >/dev/null 2>&1 || echo chromium) \
                      $(shell ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql)

system-deps:  ## install the Debian packages the tests need (chromium, postgresql), when missing and possible
	@missing="$(strip $(SYSTEM_DEPS_MISSING))"; [ -z "$$missing" ] || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q $$missing || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; } \
	  || echo "make: could not install $$missing; the tests that need them will say so"; }

test: $(STAMP) system-deps  ## run the whole test suite (installs chromium and postgresql first when it can)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## tests without the slow, spark and prefect markers
	$(BIN)/python -m pytest -q -m "not slow and not spark and not prefect"

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

PEERS ?= .venv-peers
$(PEERS)/.installed: Makefile
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip
	$(PEERS)/bin/pip install -q img2dataset==1.47.0
	touch $@

peers: $(PEERS)/.installed  ## a separate venv with img2dataset, the fetch benchmark's peer

# QUICK=1: every benchmark at small sizes (about 15 min on 2 cores); otherwise at their defaults (over an hour).
bench: $(STAMP) $(PEERS)/.installed  ## run every benchmark (JSON lines, the first naming the commit), with their peers
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py $(if $(QUICK),--quick)

serve: $(STAMP)  ## start a local Prefect server with the deployments
	$(BIN)/tol --home $(HOME_DIR) serve

clean:  ## remove the demo home and caches (keeps the venv)
	rm -rf $(HOME_DIR) .pytest_cache .ruff_cache
