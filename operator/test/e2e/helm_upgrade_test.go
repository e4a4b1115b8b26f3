//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gochat/gochat/operator/test/utils"
)

// TestHelmUpgrade installs an earlier chart (by default the 0.1.0 release
// packaged in testdata, so a shallow clone runs it too; E2E_UPGRADE_FROM names
// a git revision instead), then upgrades the release to this checkout's chart: the
// operator rolls to Ready, and the CRD is from then on owned and updated by
// the release (kept on uninstall). Charts from before the CRD moved into the
// templates installed it from crds/, which Helm never adopts on its own: the
// test takes the documented step (label and annotate the CRD for the
// release) first, as an operator of such an install would.
func TestHelmUpgrade(t *testing.T) {
	const ns, rel = "gochat-upgrade", "e2e-upgrade"
	from := os.Getenv("E2E_UPGRADE_FROM")
	defer func() {
		if t.Failed() {
			utils.SaveArtifacts(t, ns)
		}
	}()
	old := t.TempDir()
	unpack := fmt.Sprintf("tar -xzf %q -C %q && mkdir -p %q/charts && mv %q/gochat-operator %q/charts/", filepath.Join("testdata", "gochat-operator-0.1.0.tgz"), old, old, old, old)
	if from != "" {
		unpack = fmt.Sprintf("git -C %q archive %q charts/gochat-operator | tar -x -C %q", repoRoot(), from, old)
	}
	if out, err := exec.Command("sh", "-c", unpack).CombinedOutput(); err != nil {
		t.Fatalf("the earlier chart (%s): %v: %s", unpack, err, out)
	}
	oldChart := filepath.Join(old, "charts", "gochat-operator")
	k, h := utils.Kubectl(), utils.Helm()
	repo, tag, _ := strings.Cut(operatorImage, ":")
	images := []string{"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "replicaCount=1"}

	// Another release (TestE2E's) may own the CRD already; the old chart's
	// crds/ then installs nothing, and its templates (if it has them) must
	// not try to take the CRD over.
	oldArgs := append([]string{"install", rel, oldChart, "--namespace", ns, "--create-namespace", "--wait", "--timeout", "5m"}, images...)
	if _, err := os.Stat(filepath.Join(oldChart, "templates", "crds.yaml")); err == nil {
		oldArgs = append(oldArgs, "--set", "crds.create=false")
	}
	h.Must(t, oldArgs...)
	t.Cleanup(func() {
		_, _ = h.Run(context.Background(), "", "uninstall", rel, "--namespace", ns, "--wait")
		_, _ = k.Run(context.Background(), "", "delete", "namespace", ns, "--wait=false")
	})
	k.Must(t, "get", "crd", "chatclusters.chat.gochat.io")

	// Adopt the CRD into this release (a no-op for the labels when it
	// already carries them, and a hand-over from any earlier owner).
	k.Must(t, "label", "--overwrite", "crd", "chatclusters.chat.gochat.io", "app.kubernetes.io/managed-by=Helm")
	k.Must(t, "annotate", "--overwrite", "crd", "chatclusters.chat.gochat.io", "meta.helm.sh/release-name="+rel, "meta.helm.sh/release-namespace="+ns)

	h.Must(t, append([]string{"upgrade", rel, filepath.Join(repoRoot(), "charts", "gochat-operator"), "--namespace", ns, "--wait", "--timeout", "5m"}, images...)...)
	k.Must(t, "-n", ns, "rollout", "status", "deployment/"+rel+"-gochat-operator", "--timeout=3m")

	// The CRD now comes from the release: the chart's schema, Helm's
	// ownership and the keep policy.
	got := k.Must(t, "get", "crd", "chatclusters.chat.gochat.io", "-o",
		`jsonpath={.metadata.annotations.meta\.helm\.sh/release-name} {.metadata.annotations.helm\.sh/resource-policy} {.metadata.labels.helm\.sh/chart}`)
	chart := k.Must(t, "-n", ns, "get", "deployment", rel+"-gochat-operator", "-o", `jsonpath={.metadata.labels.helm\.sh/chart}`)
	if want := rel + " keep " + chart; got != want {
		t.Errorf("CRD ownership %q, want %q", got, want)
	}
	var st struct {
		Version int `json:"version"`
		Info    struct {
			Status string `json:"status"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(h.Must(t, "status", rel, "--namespace", ns, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Version != 2 || st.Info.Status != "deployed" {
		t.Errorf("helm status: revision %d %s, want revision 2 deployed", st.Version, st.Info.Status)
	}

	// Uninstall keeps the CRD.
	h.Must(t, "uninstall", rel, "--namespace", ns, "--wait", "--timeout", "3m")
	utils.Eventually(t, time.Minute, "CRD kept", func() error {
		_, err := k.Run(context.Background(), "", "get", "crd", "chatclusters.chat.gochat.io")
		return err
	})
}
