package controller_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestRBAC runs the operator as a ServiceAccount bound to nothing but the
// ClusterRole in config/rbac/role.yaml and the leader election Role in
// config/rbac/leader_election_role.yaml (what the install ships), with
// leader election on, and brings a cluster to Running: a missing permission
// fails a reconcile and the test, and the election's own core/v1 Event must
// be recorded.
func TestRBAC(t *testing.T) {
	ns := newNamespace(t)
	as := asOperator(t, ns)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	startElectingManager(t, as, ns)
	cc := newCluster(ns, "demo")
	cc.Spec.Kafka.DeleteTopicsOnDelete = true
	cc.Spec.Kafka.TopicPrefix = "rbac-" + ns
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	// A failed migration: its pod's log is read (pods/log), the failure is
	// recorded on the Job (patch), and a fixed Secret reruns it (delete).
	failMigration(t, ns)
	if c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated); !strings.Contains(c.Message, "'s log is empty") {
		t.Fatalf("the log was not read: %s", c.Message)
	}
	edit(t, ns, "mysql", &corev1.Secret{}, func(s *corev1.Secret) { s.Data["dsn"] = []byte(tc.MySQLServerDSN() + "?timeout=5s") })
	waitEvent(t, ns, "MigrationStarted", "a Secret it reads changed")
	bringUp(t, ns)
	// The roll patches (drain annotations) and deletes gateway pods.
	cc = getCluster(t, ns, "demo")
	patch := client.MergeFrom(cc.DeepCopy())
	cc.Spec.Gateway.Image = "ghcr.io/gochat/gochat:0.1.1"
	cc.Spec.Gateway.Drain.Timeout = &metav1.Duration{Duration: time.Second}
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	rollWithFakeKubelet(t, ns, "ghcr.io/gochat/gochat:0.1.1")
	// Deleting goes through the finalizer (topic deletion, then its removal).
	if err := k8s.Delete(bg, getCluster(t, ns, "demo")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "deleted", func() error {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo"}, &chatv1.ChatCluster{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	// client-go's leader election records a core/v1 Event: without the
	// Role's grant it is refused ("events is forbidden") and only logged.
	var evs corev1.EventList
	if err := k8s.List(bg, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Reason == "LeaderElection" && e.InvolvedObject.Name == leaseName {
			return
		}
	}
	t.Fatal("no LeaderElection event: the leader election Role does not let the operator record it")
}

// asOperator is cfg acting as a ServiceAccount bound to nothing but the
// generated ClusterRole.
func asOperator(t *testing.T, ns string) *rest.Config {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		t.Fatal(err)
	}
	role.ObjectMeta = metav1.ObjectMeta{Name: "gochat-manager-" + ns}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gochat-operator"}}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "gochat-manager-" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa.Name}},
	}
	if err := k8s.Create(bg, &role); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(bg, sa); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(bg, binding); err != nil {
		t.Fatal(err)
	}
	raw, err = os.ReadFile(filepath.Join(repoRoot(), "config", "rbac", "leader_election_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var election rbacv1.Role
	if err := yaml.UnmarshalStrict(raw, &election); err != nil {
		t.Fatal(err)
	}
	election.ObjectMeta = metav1.ObjectMeta{Namespace: ns, Name: "leader-election"}
	if err := k8s.Create(bg, &election); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(bg, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "leader-election"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: election.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa.Name}},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = k8s.Delete(bg, binding)
		_ = k8s.Delete(bg, &role)
	})
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa.Name}
	return as
}
