# Everything a fresh machine needs is installed from here: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test lint unit deps system-deps kube-binaries demo format clean controlplane-up controlplane-down

test: deps lint  ## lint, then the whole suite against the local control plane + fake Infisical
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/ruff format --check operator tests benchmarks
	$(BIN)/mypy

unit: $(VENV)/.installed  ## fast tests only (no control plane)
	$(BIN)/pytest -q tests/unit

format: $(VENV)/.installed
	$(BIN)/ruff format operator tests benchmarks
	$(BIN)/ruff check --fix operator tests benchmarks

deps: system-deps $(VENV)/.installed kube-binaries

system-deps:
	@command -v go >/dev/null || { echo "Go is required to build kube-apiserver (https://go.dev/doc/install)"; exit 1; }
	@command -v etcd >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

kube-binaries: $(VENV)/.installed  ## build kube-apiserver, kubectl and helm once (cached in ~/.cache/infisical-sync)
	$(BIN)/python -c "from infisical_sync.testing.controlplane import ensure_kube_binaries as e, ensure_helm as h; e(with_kubectl=True); h()"

demo: deps  ## the main job: control plane + fake Infisical + operator + samples, then clean up
	$(BIN)/python -m infisical_sync.demo

controlplane-up: deps
	@$(BIN)/infisical-sync controlplane up

controlplane-down: $(VENV)/.installed
	@$(BIN)/infisical-sync controlplane down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info operator/*.egg-info
