# GoChat. `make run` starts the whole platform in one process; `make test`
# runs every test (MariaDB and Redis must be running: see .ci/run).

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

GO        ?= go
BIN       := $(CURDIR)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULES   := github.com/gochat/gochat/api/... github.com/gochat/gochat/services/...

# Tools, pinned; installed into bin/ with go install on first use.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2

.PHONY: all build test test-unit test-e2e lint generate verify-generated run bench clean tools help

all: build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build the gochat binary into bin/
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/gochat ./services/cmd/gochat

run: ## the whole platform in one process on embedded SQLite, Redis and Kafka, at http://127.0.0.1:8080
	$(GO) run -ldflags "-X main.version=$(VERSION)" ./services/cmd/gochat dev

# Logs of the processes the tests start, and the browser test's screenshots.
export GOCHAT_TEST_ARTIFACTS ?= $(CURDIR)/artifacts

test: verify-generated ## every test: unit, MariaDB/Redis integration, multi-process end to end, browser
	hack/check-backends.sh
	rm -rf $(GOCHAT_TEST_ARTIFACTS)
	$(GO) test -count=1 -timeout 20m $(MODULES)

test-unit: ## only the tests that need no backend
	$(GO) test -count=1 -short $(MODULES)

bench: ## benchmarks (see docs/benchmarks.md for the method)
	$(GO) test -run '^$$' -bench . -benchmem $(MODULES)

lint: $(BIN)/staticcheck ## gofmt, go vet and staticcheck
	@bad=$$(gofmt -l api services); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet $(MODULES)
	$(BIN)/staticcheck $(MODULES)

generate: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## regenerate the gRPC code from api/proto
	cd api && $(BIN)/buf lint && rm -rf gen && $(BIN)/buf generate

verify-generated: generate ## fail when committed generated code differs from what generate makes
	@if [ -n "$$(git status --porcelain -- api/gen)" ]; then \
		echo "generated code is stale: run 'make generate' and commit api/gen"; git status --porcelain -- api/gen; exit 1; fi

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck ## install the pinned tools into bin/

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean: ## remove build outputs and the make run data dir
	rm -rf $(BIN) .gochat
