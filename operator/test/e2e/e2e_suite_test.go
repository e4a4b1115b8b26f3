//go:build e2e

// Package e2e runs GoChat's images on a real Kubernetes, whichever cluster
// KUBECONFIG points at: the local cluster (make e2e-local) or kind (make
// e2e-kind). It needs kubectl and helm (E2E_KUBECTL, E2E_HELM), the images
// already on the node (E2E_OPERATOR_IMAGE, E2E_GOCHAT_IMAGE), and MariaDB
// and Redis reachable in the cluster as the Services mysql and redis in
// namespace gochat-backends (user gochat, password gochat, database gochat),
// as hack/localcluster/up.sh and hack/kind/backends.yaml provide them.
package e2e

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

const (
	operatorNS = "gochat-system"
	appNS      = "gochat-e2e"
	backendsNS = "gochat-backends"
	release    = "e2e"
	cluster    = "demo"
)

var (
	operatorImage = envOr("E2E_OPERATOR_IMAGE", "ghcr.io/gochat/gochat-operator:dev")
	gochatImage   = envOr("E2E_GOCHAT_IMAGE", "ghcr.io/gochat/gochat:dev")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// repoRoot is the checkout this file is in.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

func TestMain(m *testing.M) {
	if os.Getenv("KUBECONFIG") == "" {
		// Refuse to guess: ~/.kube/config may be a real cluster.
		os.Stderr.WriteString("e2e: set KUBECONFIG to the test cluster's kubeconfig\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}
