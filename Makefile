# Everything a fresh machine needs is installed from here: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test test-node test-image-python lint unit deps suite-deps system-deps suite-system-deps kube-binaries images demo format clean controlplane-up controlplane-down lock chart actionlint

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

deps: system-deps $(VENV)/.installed kube-binaries actionlint

# What the suite less the node tier needs (CI's suite job): no node packages, whose containerd
# and runc would replace a preinstalled Docker's containerd.io.
suite-deps: suite-system-deps $(VENV)/.installed kube-binaries actionlint

# etcd (below) for the control plane; actionlint checks the workflows' `run:` scripts with
# shellcheck.
SUITE_PACKAGES := shellcheck
# The test node's runtime, CNI plugins and iptables; debootstrap and buildah to build the image
# from the Dockerfile without a registry.
NODE_PACKAGES := containerd runc containernetworking-plugins iptables conntrack debootstrap buildah

system-deps: APT_PACKAGES = $(SUITE_PACKAGES) $(NODE_PACKAGES)
suite-system-deps: APT_PACKAGES = $(SUITE_PACKAGES)
system-deps suite-system-deps:
	@command -v go >/dev/null || { echo "Go is required to build kube-apiserver (https://go.dev/doc/install)"; exit 1; }
	@missing="$$(command -v etcd >/dev/null || echo etcd-server)"; \
	for package in $(APT_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
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

actionlint: $(VENV)/.installed  ## build actionlint once (cached), the workflows' linter in the tests
	$(BIN)/python -c "from infisical_sync.testing.controlplane import ensure_actionlint as a; a()"

# The image's dependencies, pinned with every file's hash for the image's Python (Debian trixie's
# 3.13) on both architectures the release builds: the runtime dependencies of pyproject.toml plus
# its build backend (the Dockerfile installs the project with --no-build-isolation). The arm64
# resolution must come out the same, or one lock could not serve both images.
LOCK_BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
LOCK_COMPILE = $(BIN)/uv pip compile pyproject.toml - --generate-hashes --only-binary :all: \
	--python-version 3.13 --custom-compile-command "make lock" --quiet

lock: $(VENV)/.installed  ## regenerate requirements.lock after a dependency change in pyproject.toml
	$(LOCK_BUILD_REQUIRES) | $(LOCK_COMPILE) --python-platform x86_64-manylinux_2_40 --output-file requirements.lock
	@arm64=$$(mktemp); trap 'rm -f $$arm64' EXIT; \
	$(LOCK_BUILD_REQUIRES) | $(LOCK_COMPILE) --python-platform aarch64-manylinux_2_40 --output-file $$arm64 || exit 1; \
	diff -u requirements.lock $$arm64 || { echo "arm64 resolves differently from amd64: see the diff"; exit 1; }

# The chart's version and appVersion come from pyproject.toml, the one place a release bumps.
VERSION = $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
HELM ?= $(shell $(BIN)/python -c "from infisical_sync.testing.controlplane import ensure_helm; print(ensure_helm())" 2>/dev/null || echo helm)
DIST ?= dist

# IMAGE_REPOSITORY: the packaged chart's default image.repository (the release workflow sets
# the repository it pushed the image to); empty keeps values.yaml's.
IMAGE_REPOSITORY ?=

chart:  ## the Helm chart as $(DIST)/infisical-sync-<version>.tgz
	@chart=deploy/helm/infisical-sync; staging=""; \
	if [ -n "$(IMAGE_REPOSITORY)" ]; then \
	  staging=$$(mktemp -d) && trap 'rm -rf "$$staging"' EXIT && cp -R $$chart "$$staging/" && chart="$$staging/infisical-sync" && \
	  sed -i 's|^  repository: .*|  repository: $(IMAGE_REPOSITORY)|' "$$chart/values.yaml" && \
	  grep -qx '  repository: $(IMAGE_REPOSITORY)' "$$chart/values.yaml" || exit 1; \
	fi; \
	echo "$(HELM) package $$chart --version $(VERSION) --app-version $(VERSION) --destination $(DIST)"; \
	$(HELM) package "$$chart" --version $(VERSION) --app-version $(VERSION) --destination $(DIST)

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
