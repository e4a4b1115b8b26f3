# GoChat. `make run` starts the whole platform in one process; `make test`
# runs every test (MariaDB and Redis must be running: see .ci/run).

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

GO        ?= go
BIN       := $(CURDIR)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULES   := github.com/gochat/gochat/api/... github.com/gochat/gochat/services/... github.com/gochat/gochat/operator/...

# Tools, pinned; installed into bin/ with go install on first use.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2
CONTROLLER_GEN_VERSION     := v0.23.0
KUSTOMIZE_VERSION          := v5.8.2
HELM_VERSION               := v3.22.0

.PHONY: all build build-operator images localcluster-bin localcluster-up localcluster-down test-e2e e2e-local e2e-kind test test-go lint generate manifests verify-generated run bench bench-send bench-compare clean tools help install-manifests envtest

all: build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build the gochat binary, the gochat-load tool and the kubectl-chat plugin into bin/
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/gochat ./services/cmd/gochat
	$(GO) build -o $(BIN)/gochat-load ./services/cmd/gochat-load
	$(GO) build -o $(BIN)/kubectl-chat ./operator/cmd/kubectl-chat

build-operator: ## build the operator binary into bin/
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/operator ./operator/cmd

# Images for the e2e suite, built without Docker (hack/images): the same
# entrypoint, user and ports as the Dockerfile, which stays the release path.
IMAGE_TAG       ?= dev
GOCHAT_IMAGE    ?= ghcr.io/gochat/gochat:$(IMAGE_TAG)
OPERATOR_IMAGE  ?= ghcr.io/gochat/gochat-operator:$(IMAGE_TAG)
# The same gochat image under a second tag: the e2e roll changes the gateways' image to it.
GOCHAT_ROLL_IMAGE ?= ghcr.io/gochat/gochat:$(IMAGE_TAG)-roll
PAUSE_IMAGE     := localhost/gochat/pause:1
LINUX_GO        := CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath

images: ## the gochat, operator and (local cluster) pause images as docker-archive tarballs in bin/images/, no Docker needed
	$(LINUX_GO) -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/linux/gochat ./services/cmd/gochat
	$(LINUX_GO) -ldflags "-s -w" -o $(BIN)/linux/manager ./operator/cmd
	cd hack/images && GOWORK=off $(LINUX_GO) -ldflags "-s -w" -o $(BIN)/linux/pause ./pause && GOWORK=off $(GO) build -o $(BIN)/image-builder .
	$(BIN)/image-builder -tag $(GOCHAT_IMAGE) -o $(BIN)/images/gochat.tar -file $(BIN)/linux/gochat:/usr/local/bin/gochat \
		-entrypoint /usr/local/bin/gochat -port 8080 -port 9000 -port 9001 -port 9002
	$(BIN)/image-builder -tag $(OPERATOR_IMAGE) -o $(BIN)/images/operator.tar -file $(BIN)/linux/manager:/manager -entrypoint /manager
	$(BIN)/image-builder -tag $(PAUSE_IMAGE) -o $(BIN)/images/pause.tar -file $(BIN)/linux/pause:/pause -entrypoint /pause

run: ## the whole platform in one process on embedded SQLite, Redis and Kafka, at http://127.0.0.1:8080
	$(GO) run -ldflags "-X main.version=$(VERSION)" ./services/cmd/gochat dev

# Logs of the processes the tests start, and the browser test's screenshots.
export GOCHAT_TEST_ARTIFACTS ?= $(CURDIR)/artifacts

# The Kubernetes binaries (envtest's and the local cluster's) are built in a
# prerequisite, never under a test's timeout.
test: test-go localcluster-bin ## every test: unit, MariaDB/Redis integration, multi-process end to end, browser, operator on envtest, e2e on a local Kubernetes
	$(MAKE) --no-print-directory e2e-local

test-go: lint verify-generated envtest $(BIN)/kustomize $(BIN)/helm ## every test but the local-cluster e2e suite
	hack/check-backends.sh
	$(BIN)/kustomize build config/default > /dev/null
	$(BIN)/helm lint --strict charts/gochat-operator
	$(BIN)/helm template t charts/gochat-operator --namespace gochat-system --kube-version 1.37.0 --set metrics.serviceMonitor.enabled=true --set grafana.dashboard.enabled=true > /dev/null
	rm -rf $(GOCHAT_TEST_ARTIFACTS)
	$(GO) test -race -count=1 -timeout 25m github.com/gochat/gochat/services/...
	$(GO) test -count=1 -timeout 20m github.com/gochat/gochat/api/... github.com/gochat/gochat/operator/...
	$(GO) test -run '^$$' -fuzz '^FuzzFrameReader$$' -fuzztime 150000x github.com/gochat/gochat/services/internal/gateway
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeInFrame$$' -fuzztime 150000x github.com/gochat/gochat/services/internal/clientapi
	$(GO) test -run '^$$' -fuzz '^FuzzDirectPath$$' -fuzztime 50000x github.com/gochat/gochat/services/internal/authtoken
	$(GO) test -run '^$$' -fuzz '^FuzzCanonicalClaims$$' -fuzztime 100000x github.com/gochat/gochat/services/internal/authtoken

bench: ## Go benchmarks (docs/benchmarks.md; gochat-load for load)
	$(GO) test -run '^$$' -bench . -benchmem $(MODULES)

bench-send: ## the send path's latency curve at 1k to 10k msg/s on MariaDB (LONG=10m adds a long run at 5,000/s; docs/benchmarks.md)
	hack/bench-send.sh

bench-compare: ## GoChat and Centrifugo (pinned) side by side with gochat-load (FULL=1 for the whole comparison; docs/benchmarks.md)
	hack/bench-compare.sh

lint: $(BIN)/staticcheck ## gofmt, go mod tidy, go vet and staticcheck
	@bad=$$(gofmt -l api services operator); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	@for m in api services operator; do (cd $$m && $(GO) mod tidy -diff >/dev/null) || { echo "$$m/go.mod is not tidy: run go mod tidy in $$m"; exit 1; }; done
	$(GO) vet $(MODULES)
	$(GO) vet -tags e2e github.com/gochat/gochat/operator/test/...
	$(GO) vet -tags bench github.com/gochat/gochat/services/cmd/gochat-load
	cd hack/images && GOWORK=off $(GO) vet ./...
	cd hack/localcluster/coredns && GOWORK=off $(GO) vet ./...
	$(BIN)/staticcheck $(MODULES)
	$(BIN)/staticcheck -tags e2e github.com/gochat/gochat/operator/test/...

generate: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/controller-gen ## regenerate the gRPC code and the CRD types' deepcopy
	cd api && $(BIN)/buf lint && rm -rf gen && $(BIN)/buf generate
	$(BIN)/controller-gen object paths=./api/v1alpha1/...

manifests: $(BIN)/controller-gen ## regenerate the CRD and the operator's ClusterRole in config/, and the chart's copies (templates/crds.yaml renders them)
	$(BIN)/controller-gen crd paths=./api/v1alpha1/... output:crd:artifacts:config=config/crd/bases
	$(BIN)/controller-gen rbac:roleName=manager-role paths=./operator/... output:rbac:artifacts:config=config/rbac
	rm -f charts/gochat-operator/files/crds/*.yaml && cp config/crd/bases/*.yaml charts/gochat-operator/files/crds/
	sed -n '/^rules:/,$$p' config/rbac/role.yaml | tail -n +2 > charts/gochat-operator/files/role-rules.yaml

GENERATED := api/gen api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml charts/gochat-operator/files

verify-generated: generate manifests ## fail when committed generated files differ from what generate and manifests make
	@if [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then \
		echo "generated files are stale: run 'make generate manifests' and commit them"; git status --porcelain -- $(GENERATED); exit 1; fi

# End to end on a real Kubernetes (operator/test/e2e; docs/development.md).
E2E_TIMEOUT ?= 30m
KIND_CLUSTER ?= gochat-e2e

test-e2e: $(BIN)/helm ## the e2e suite against the cluster KUBECONFIG names (images already on its node)
	cd operator && E2E_HELM=$(BIN)/helm E2E_OPERATOR_IMAGE=$(OPERATOR_IMAGE) E2E_GOCHAT_IMAGE=$(GOCHAT_IMAGE) \
		E2E_GOCHAT_ROLL_IMAGE=$(GOCHAT_ROLL_IMAGE) $(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/

localcluster-bin: ## build (once, cached in ~/.cache/gochat) the local cluster's Kubernetes binaries and CoreDNS
	hack/envtest/build.sh node > /dev/null
	hack/localcluster/coredns.sh > /dev/null

localcluster-up: images localcluster-bin ## a single-node Kubernetes on this machine (hack/localcluster); prints its kubeconfig
	hack/localcluster/up.sh

localcluster-down: ## stop the local cluster and clean up after it
	hack/localcluster/down.sh

e2e-local: images localcluster-bin $(BIN)/helm ## images, local cluster up, the e2e suite, down (also on failure)
	trap 'hack/localcluster/down.sh' EXIT; \
	kubeconfig=$$(LC_EXTRA_TAGS="$(GOCHAT_IMAGE)=$(GOCHAT_ROLL_IMAGE)" hack/localcluster/up.sh); \
	KUBECONFIG=$$kubeconfig E2E_KUBECTL=$$(hack/envtest/build.sh node)/kubectl $(MAKE) --no-print-directory test-e2e

e2e-kind: $(BIN)/helm ## docker build, kind create cluster, kind load, the e2e suite (needs Docker and kind)
	docker build --target gochat --build-arg VERSION=$(VERSION) -t $(GOCHAT_IMAGE) .
	docker build --target operator -t $(OPERATOR_IMAGE) .
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --kubeconfig $(BIN)/kind.kubeconfig
	kind export kubeconfig --name $(KIND_CLUSTER) --kubeconfig $(BIN)/kind.kubeconfig
	docker tag $(GOCHAT_IMAGE) $(GOCHAT_ROLL_IMAGE)
	kind load docker-image --name $(KIND_CLUSTER) $(GOCHAT_IMAGE) $(GOCHAT_ROLL_IMAGE) $(OPERATOR_IMAGE)
	KUBECONFIG=$(BIN)/kind.kubeconfig kubectl apply -f hack/kind/backends.yaml
	KUBECONFIG=$(BIN)/kind.kubeconfig kubectl -n gochat-backends rollout status deployment/mysql deployment/redis --timeout=5m
	KUBECONFIG=$(BIN)/kind.kubeconfig $(MAKE) --no-print-directory test-e2e

install-manifests: $(BIN)/kustomize ## print the operator's install manifests (kustomize build config/default)
	$(BIN)/kustomize build config/default

envtest: ## build (once, cached) the control plane for the operator tests (a prerequisite, never under a test timeout); prints its directory
	hack/envtest/build.sh

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck $(BIN)/controller-gen $(BIN)/kustomize $(BIN)/helm ## install the pinned tools into bin/

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/controller-gen:
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
$(BIN)/kustomize:
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
$(BIN)/helm:
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

clean: ## remove build outputs and the make run data dir
	rm -rf $(BIN) .gochat
