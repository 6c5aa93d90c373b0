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

.PHONY: help install generate verify audit test test-fast binaries tools images cluster-up cluster-up-fake cluster-down demo demo-local bench clean

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

verify: install ## Lint, format, strict types, import layers, generated files unchanged, manifest audit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(foreach p,$(PACKAGES),$(p)/duotone_$(p)) hack/generate.py hack/audit.py tests/support tests/fakes \
	  bench/reconcile.py bench/runtime.py bench/formats.py bench/gpu_runtime.py bench/router.py bench/autoscaler.py bench/local_cluster.py bench/mixed_burst.py bench/cold_start.py bench/step_scheduler.py bench/streaming.py \
	  hack/demo.py
	$(VENV)/bin/lint-imports
	$(PY) hack/generate.py --check
	$(MAKE) --no-print-directory audit

audit: install ## kube-score the chart and every example's children; fail on a CRITICAL finding
	hack/install-tools.sh --audit >/dev/null
	$(PY) hack/audit.py

test-fast: install ## Unit tests only (pure, seconds)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

binaries: ## Build (first time, ~15 min) or reuse the control-plane and real-node binaries
	hack/build-binaries.sh --node >/dev/null

images: tools ## Build the operator, router and CPU runtime images (buildah, cached by content)
	hack/images.sh build

tools: ## Install Prometheus/promtool (Debian) and build Helm and kube-score (Go modules) if missing
	hack/install-tools.sh

# Images are built before pytest starts: the first build (a cold cache) takes longer than one
# test may, and the real-node fixture then only loads them.
test: install binaries tools images ## The whole suite: unit, integration and e2e on a real control plane
	$(PY) -m pytest tests $(PYTEST_ARGS)

cluster-up: binaries tools ## Local control plane: fake GPU nodes and one real node with the images
	hack/cluster-up.sh --real-node >/dev/null

cluster-up-fake: binaries ## Local control plane with fake nodes only (no root, no images)
	hack/cluster-up.sh >/dev/null

cluster-down: ## Stop the local control plane and remove its state
	hack/cluster-down.sh

demo: install binaries tools ## The main job: the chart, the operator and a CPU IMD on the real node, OpenAI SDK traffic, autoscaling
	$(PY) hack/demo.py

demo-local: install ## The data plane alone (no Kubernetes): two CPU tiers and the router as local processes
	$(PY) hack/demo.py --local

bench: install ## Run the benchmarks in bench/ (figures go to docs/benchmarks.md)
	@shopt -s nullglob; scripts=(bench/*.py bench/*.sh); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks yet"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "==> $$s"; \
	  case "$$s" in *.py) $(PY) "$$s";; *.sh) bash "$$s";; esac; done

clean: ## Remove the virtualenv and caches (keeps the cached control-plane binaries)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
