# Duotone developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
# One distribution per folder: the contracts, the three programs, the test bed, the monitoring
# generators (docs/development.md). `make install` installs them all, editable.
PACKAGES := contracts operator router runtime testbed monitoring

.PHONY: help install generate verify test test-fast binaries tools cluster-up cluster-down demo bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml $(PACKAGES:%=%/pyproject.toml)
	@echo "==> creating $(VENV); installing $(PACKAGES) and the dev tools (torch, ~3 GB the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PACKAGES:%=-e ./%) -e '.[dev]'
	@touch $@

install: $(INSTALLED) ## Create .venv with every package (editable), the dev tools and torch

generate: install ## Regenerate crds/, the chart's CRD copy, the dashboard and the alert rules from code
	$(PY) hack/generate.py

verify: install ## Lint, format, strict types, import layers, generated files unchanged
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(foreach p,$(PACKAGES),$(p)/duotone_$(p)) hack/generate.py tests/support tests/fakes \
	  bench/reconcile.py bench/runtime.py bench/gpu_runtime.py bench/router.py bench/autoscaler.py bench/local_cluster.py \
	  hack/demo.py
	$(VENV)/bin/lint-imports
	$(PY) hack/generate.py --check

test-fast: install ## Unit tests only (pure, seconds)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

binaries: ## Build (first time, ~10 min) or reuse the control-plane binaries
	hack/build-binaries.sh >/dev/null

tools: ## Install Prometheus/promtool (Debian) and build Helm (Go module) if missing
	hack/install-tools.sh

test: install binaries tools ## The whole suite: unit, integration and e2e on a real control plane
	$(PY) -m pytest tests $(PYTEST_ARGS)

cluster-up: binaries ## Start a local control plane with fake GPU nodes (127.0.0.1 only)
	hack/cluster-up.sh >/dev/null

cluster-down: ## Stop the local control plane and remove its state
	hack/cluster-down.sh

demo: install ## The main job: two CPU tiers behind the router, a request mix, PNGs and a table
	$(PY) hack/demo.py

bench: install ## Run the benchmarks in bench/ (figures go to docs/benchmarks.md)
	@shopt -s nullglob; scripts=(bench/*.py bench/*.sh); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks yet"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "==> $$s"; \
	  case "$$s" in *.py) $(PY) "$$s";; *.sh) bash "$$s";; esac; done

clean: ## Remove the virtualenv and caches (keeps the cached control-plane binaries)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
