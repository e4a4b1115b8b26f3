package controller_test

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// rendered runs an install tool from bin/ (make tools) and splits its output by kind.
func rendered(t *testing.T, tool string, args ...string) (roles []rbacv1.Role, deps []appsv1.Deployment) {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(), "bin", tool), args...)
	cmd.Dir = repoRoot()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v (make tools installs it): %v", tool, args, err)
	}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatal(err)
		}
		switch head.Kind {
		case "Role":
			var r rbacv1.Role
			if err := yaml.Unmarshal(doc, &r); err != nil {
				t.Fatal(err)
			}
			roles = append(roles, r)
		case "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal(doc, &d); err != nil {
				t.Fatal(err)
			}
			deps = append(deps, d)
		}
	}
	return roles, deps
}

// TestInstallManifests: both installs (kustomize and the chart) run the
// operator as a numeric non-root user whatever the image says, and their
// leader-election Role lets client-go record its core/v1 Event (checked by
// the API server, as the ServiceAccount bound to that Role alone).
func TestInstallManifests(t *testing.T) {
	installs := map[string][]string{
		"kustomize": {"build", "config/default"},
		"helm":      {"template", "t", "charts/gochat-operator", "--namespace", "gochat-system", "--kube-version", "1.37.0"},
	}
	for tool, args := range installs {
		t.Run(tool, func(t *testing.T) {
			roles, deps := rendered(t, tool, args...)
			if len(deps) != 1 {
				t.Fatalf("%d Deployments", len(deps))
			}
			sc := deps[0].Spec.Template.Spec.SecurityContext
			if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 65532 || sc.RunAsGroup == nil || *sc.RunAsGroup != 65532 || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Fatalf("pod securityContext %+v", sc)
			}
			var le *rbacv1.Role
			for i := range roles {
				if strings.Contains(roles[i].Name, "leader-election") {
					le = &roles[i]
				}
			}
			if le == nil {
				t.Fatalf("no leader-election Role among %d", len(roles))
			}
			ns := newNamespace(t)
			le.ObjectMeta = metav1.ObjectMeta{Namespace: ns, Name: "leader-election"}
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "operator"}}
			binding := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "leader-election"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: le.Name},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa.Name}},
			}
			if err := k8s.Create(bg, le); err != nil {
				t.Fatal(err)
			}
			if err := k8s.Create(bg, sa); err != nil {
				t.Fatal(err)
			}
			if err := k8s.Create(bg, binding); err != nil {
				t.Fatal(err)
			}
			as := rest.CopyConfig(cfg)
			as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa.Name}
			cs := kubernetes.NewForConfigOrDie(as)
			ev := &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{Namespace: ns, GenerateName: "lease-"},
				InvolvedObject: corev1.ObjectReference{Kind: "Lease", Namespace: ns, Name: "operator.chat.gochat.io"},
				Reason:         "LeaderElection", Message: "became leader", Type: corev1.EventTypeNormal,
			}
			// The API server's authorizer learns of a new RoleBinding from
			// its informers, a moment after the create returns: a denial is
			// only final once it has had time to see it.
			var err error
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				_, err = cs.CoreV1().Events(ns).Create(bg, ev, metav1.CreateOptions{})
				if err == nil || !apierrors.IsForbidden(err) || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatalf("leader election cannot record its core/v1 Event: %v", err)
			}
		})
	}
}
