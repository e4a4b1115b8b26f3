package controller_test

import (
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestCacheScope: the operator's cache holds only what it made; a user's
// Secret is read from the API server, and a change to it is still seen (by
// the metadata watch: the resync is an hour here) and rolls the pods that
// read it.
func TestCacheScope(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	createSecret(t, ns, "unrelated", map[string]string{"k": "v"})
	if err := k8s.Create(bg, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unrelated"}, Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	m := startElectingManager(t, cfg, ns, func(r *controller.Reconciler) { r.Resync = time.Hour })
	if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
		t.Fatal(err)
	}
	cc := bringUp(t, ns)

	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }
	c := m.mgr.GetCache()
	for _, tt := range []struct {
		obj    client.Object
		name   string
		cached bool
	}{
		{&corev1.Secret{}, "mysql", false},
		{&corev1.Secret{}, "unrelated", false},
		{&corev1.ConfigMap{}, "unrelated", false},
		{&corev1.Secret{}, resources.CASecretName(cc), true},
		{&corev1.Secret{}, resources.JWTSecretName(cc), true},
		{&corev1.ConfigMap{}, resources.ConfigMapName(cc), true},
		{&appsv1.Deployment{}, "demo-logic", true},
	} {
		err := c.Get(bg, key(tt.name), tt.obj)
		if tt.cached && err != nil || !tt.cached && !apierrors.IsNotFound(err) {
			t.Errorf("%T %s in the cache: %v, want cached %v", tt.obj, tt.name, err, tt.cached)
		}
	}
	var secrets corev1.SecretList
	if err := c.List(bg, &secrets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		if s.Labels[resources.LabelManagedBy] != resources.ManagedBy || len(s.ManagedFields) != 0 {
			t.Errorf("cached Secret %s: labels %v, %d managedFields", s.Name, s.Labels, len(s.ManagedFields))
		}
	}
	// The reconciler's client still reads a user's Secret, from the server.
	var mysql corev1.Secret
	if err := m.mgr.GetClient().Get(bg, key("mysql"), &mysql); err != nil || string(mysql.Data["dsn"]) == "" {
		t.Fatalf("the manager's client reads the mysql Secret: %v", err)
	}

	hash := func() string {
		return get(t, ns, "demo-repo", &appsv1.Deployment{}).Spec.Template.Annotations[resources.AnnotationSecretHash]
	}
	before := hash()
	mysql.Data["dsn"] = []byte("gochat:new-pw@tcp(mysql:3306)/gochat")
	if err := k8s.Update(bg, &mysql); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the repo pods roll for the new DSN", func() error {
		if h := hash(); h == before {
			return fmt.Errorf("secret hash still %s", h)
		}
		return nil
	})
}
