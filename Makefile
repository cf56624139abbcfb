# cosyvoice-sidecar: every entry point a developer or CI needs.
#
#   make run    set up, start the sidecar on the embedded emulator, synthesize a sample
#   make test   set up everything (Python, Go, Java, grpcurl, buf) and run every check
#
# Everything installs into the work tree (.venv, .tools), nothing system-wide.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(BIN):$(PATH)
export GOBIN := $(TOOLS)
export GOFLAGS := -mod=mod

# Pinned code generators and CLI tools, installed with `go install`.
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
GRPCURL := github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
BUF := github.com/bufbuild/buf/cmd/buf@v1.75.0
# v5.8.3 needs Go >= 1.27; v5.8.2 builds with the machine's Go 1.26.
KUSTOMIZE := sigs.k8s.io/kustomize/kustomize/v5@v5.8.2
# helm template / helm lint of deploy/helm (tests/deploy).
HELM := helm.sh/helm/v4/cmd/helm@v4.3.2
# Debian packages the tests need (see the packages target).
PACKAGES := podman buildah debootstrap redis-server
IMAGE_TAG ?= localhost/cosyvoice-sidecar:dev

.PHONY: run test venv tools packages image pin-base-images proto proto-check lint typecheck test-python test-go test-java bench soak coverage clean

run: venv
	./scripts/run-demo.sh

test: venv tools packages
	$(MAKE) --no-print-directory lint typecheck proto-check test-python test-go test-java

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml bench/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./bench
	touch $@

# Go-based tools; without Go they cannot be installed, which is an error in CI.
tools: $(TOOLS)/.installed

$(TOOLS)/.installed: Makefile
	@if ! command -v go >/dev/null; then \
	  if [ -n "$${CI:-}" ]; then echo "error: go is required in CI" >&2; exit 1; fi; \
	  echo "warning: go not found; Go-based tools (grpcurl, buf) not installed" >&2; exit 0; \
	fi
	mkdir -p $(TOOLS)
	go install $(PROTOC_GEN_GO)
	go install $(PROTOC_GEN_GO_GRPC)
	go install $(GRPCURL)
	go install $(BUF)
	go install $(KUSTOMIZE)
	go install $(HELM)
	touch $@

# Debian packages the tests need: podman, buildah and debootstrap build and run
# the container image without a registry or a Docker engine (tests/deploy);
# redis-server coordinates the fleet quota (tests/fleet, each test starting its
# own on a free loopback port). apt-get installs what is missing, as root only
# (CI runs as root); otherwise a warning, or an error when CI is set, since those
# tests must then fail rather than skip.
packages:
	@missing=""; for t in $(PACKAGES); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing (apt-get)" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$${CI:-}" ]; then echo "error:$$missing required in CI (apt-get as root)" >&2; exit 1; \
	else echo "warning:$$missing not installed; the tests that need them will skip" >&2; fi

# The container image, built with podman on a debootstrap base (no registry).
image: packages
	./scripts/build-image.sh $(IMAGE_TAG)

# Re-pin the Dockerfile's base images to their current digests (needs skopeo
# and access to the registry).
pin-base-images:
	./scripts/pin-base-images.sh

# Regenerate every language's checked-in code from protos/ (Java generates at build time).
proto: venv tools
	./scripts/gen-protos.sh

# CI: the checked-in generated code must match the proto, and the proto must lint.
proto-check: venv tools
	./scripts/gen-protos.sh --check
	cd protos && buf lint

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test-python: venv
	$(BIN)/pytest

test-go: venv
	./scripts/require.sh go
	cd clients/go && COSYVOICE_SIDECAR_BIN=$(BIN)/cosyvoice-sidecar go test -count=1 ./...

test-java: venv
	./scripts/require.sh mvn
	cd clients/java && COSYVOICE_SIDECAR_BIN=$(BIN)/cosyvoice-sidecar mvn -B -q test

# Line coverage of the Python tests, subprocesses included (docs/coverage.md); not part of
# `make test`, whose timeouts are set for untraced processes.
coverage: venv
	mkdir -p out/coverage
	COVERAGE_FILE=$(CURDIR)/out/coverage/.coverage $(BIN)/pytest --cov --cov-report=term --cov-report=json:out/coverage/coverage.json

# The benchmark is its own package (bench/), never part of the sidecar's image.
bench: venv
	$(BIN)/pip install --quiet -e './bench[extras]'
	$(BIN)/cosyvoice-sidecar bench $(BENCH_ARGS)

# The soak (docs/reliability.md): many calls under injected faults, every byte checked.
soak: venv
	$(BIN)/pip install --quiet -e './bench[extras]'
	$(BIN)/cosyvoice-sidecar soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
