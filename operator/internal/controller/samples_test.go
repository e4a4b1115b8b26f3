package controller_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// contractExample is the first yaml block of the contract, which sits beside
// the repository (../shared/spec/chatcluster.md).
func contractExample(t *testing.T) []byte {
	t.Helper()
	md, err := os.ReadFile(filepath.Join(repoRoot(), "..", "shared", "spec", "chatcluster.md"))
	if err != nil {
		t.Fatalf("the contract: %v", err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindSubmatch(md)
	if m == nil {
		t.Fatal("the contract has no yaml block")
	}
	return m[1]
}

// TestSamples: the sample and the contract's example are one and the same
// ChatCluster, and the API server accepts both as they stand.
func TestSamples(t *testing.T) {
	ns := newNamespace(t)
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "samples", "chat_v1alpha1_chatcluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sample, contract chatv1.ChatCluster
	if err := yaml.UnmarshalStrict(raw, &sample); err != nil {
		t.Fatalf("sample: %v", err)
	}
	if err := yaml.UnmarshalStrict(contractExample(t), &contract); err != nil {
		t.Fatalf("contract example: %v", err)
	}
	if !equality.Semantic.DeepEqual(sample.Spec, contract.Spec) {
		t.Fatalf("config/samples differs from the contract:\nsample   %+v\ncontract %+v", sample.Spec, contract.Spec)
	}
	for _, tc := range []struct {
		name string
		cc   chatv1.ChatCluster
	}{{"sample", sample}, {"contract", contract}} {
		t.Run(tc.name, func(t *testing.T) {
			cc := tc.cc.DeepCopy()
			cc.Namespace, cc.Name = ns, tc.name
			cc.Status = chatv1.ChatClusterStatus{} // status is the operator's to write
			if err := k8s.Create(bg, cc); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}
