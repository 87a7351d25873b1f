# Everything a fresh machine needs is installed from here: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test test-node test-image-python lint unit deps system-deps kube-binaries images demo format clean controlplane-up controlplane-down

# The image's Python (Debian trixie ships 3.13) runs the suite too, beside $(PYTHON) (3.11, the
# oldest supported). Found on PATH or in pyenv; override with IMAGE_PYTHON=/path/to/python3.13.
IMAGE_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell python3.13 -c "import sys; print(sys.executable)" 2>/dev/null))
IMAGE_VENV := .venv-3.13

# The supported Kubernetes range's ends (the chart's kubeVersion), tested on the diagonal: the
# oldest Python with the oldest Kubernetes, the image's Python with the newest.
KUBERNETES_OLDEST := 1.34
KUBERNETES_NEWEST := 1.37

test: deps lint  ## lint, then the whole suite on both Pythons; the node tier last, with its own time
	INFISICAL_SYNC_KUBERNETES=$(KUBERNETES_OLDEST) $(BIN)/pytest -q --ignore=tests/node
	@$(MAKE) --no-print-directory test-image-python
	@$(MAKE) --no-print-directory test-node

test-image-python: $(IMAGE_VENV)/.installed kube-binaries  ## the suite (less the node tier) on the image's Python and the newest Kubernetes
	INFISICAL_SYNC_KUBERNETES=$(KUBERNETES_NEWEST) $(IMAGE_VENV)/bin/pytest -q --ignore=tests/node -p no:cacheprovider

$(IMAGE_VENV)/.installed: pyproject.toml
	@test -n "$(IMAGE_PYTHON)" || { echo "python3.13 (the image's Python) not found: set IMAGE_PYTHON"; exit 1; }
	$(IMAGE_PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/pip install -q --upgrade pip
	$(IMAGE_VENV)/bin/pip install -q -e '.[dev]'
	touch $@

test-node: deps  ## only the node tier: builds the image, runs the chart's pod on a real node
	@start=$$(date +%s); rc=0; \
	{ $(BIN)/python -m infisical_sync.testing.images && INFISICAL_SYNC_KUBERNETES=$(KUBERNETES_OLDEST) $(BIN)/pytest -q tests/node; } || rc=$$?; \
	echo "node tier (image build + scenarios): $$(( $$(date +%s) - start ))s"; exit $$rc

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

# etcd for the control plane; the test node's runtime, CNI plugins and iptables; debootstrap and
# buildah to build the image from the Dockerfile without a registry.
NODE_PACKAGES := containerd runc containernetworking-plugins iptables conntrack debootstrap buildah

system-deps:
	@command -v go >/dev/null || { echo "Go is required to build kube-apiserver (https://go.dev/doc/install)"; exit 1; }
	@missing="$$(command -v etcd >/dev/null || echo etcd-server)"; \
	for package in $(NODE_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$${missing// /}" ]; then \
	  echo "apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

kube-binaries: $(VENV)/.installed  ## build kube-apiserver and kubectl of each tested Kubernetes, the node binaries, Helm 3 and 4 once (cached in ~/.cache/infisical-sync)
	$(BIN)/python -c "from infisical_sync.testing.controlplane import ensure_all_binaries; ensure_all_binaries()"

images: $(VENV)/.installed  ## the operator image from the Dockerfile (buildah) and the node's pause image, cached
	$(BIN)/python -m infisical_sync.testing.images

demo: deps  ## the main job: control plane + fake Infisical + operator + samples, then clean up
	$(BIN)/python -m infisical_sync.demo

controlplane-up: deps
	@$(BIN)/infisical-sync controlplane up

controlplane-down: $(VENV)/.installed
	@$(BIN)/infisical-sync controlplane down

clean:
	rm -rf $(VENV) $(IMAGE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info operator/*.egg-info
