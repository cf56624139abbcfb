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

.PHONY: run test venv tools redis proto proto-check lint typecheck test-python test-go test-java bench clean

run: venv
	./scripts/run-demo.sh

test: venv tools redis
	$(MAKE) --no-print-directory lint typecheck proto-check test-python test-go test-java

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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
	touch $@

# Debian's redis-server for tests/fleet (the fleet quota is coordinated on Redis). Installed
# with apt when missing and we are root; otherwise an error in CI, and elsewhere a warning
# (those tests then skip, saying why). The package may start a default instance; the tests
# never use it: each starts its own on a free loopback port.
redis:
	@if command -v redis-server >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	elif [ -n "$${CI:-}" ]; then \
	  echo "error: redis-server is required in CI (apt-get install redis-server)" >&2; exit 1; \
	else \
	  echo "warning: redis-server not found; tests/fleet will skip (apt-get install redis-server)" >&2; \
	fi

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

bench: venv
	$(BIN)/cosyvoice-sidecar bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
