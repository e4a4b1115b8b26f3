package controller_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
)

const foreignFinalizer = "example.com/keep"

func waitFinalizers(t *testing.T, ns string, want ...string) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("finalizers %v", want), func() error {
		got := getCluster(t, ns, "demo").Finalizers
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
			return fmt.Errorf("finalizers %v", got)
		}
		return nil
	})
}

func waitEvent(t *testing.T, ns, reason, noteHas string) {
	t.Helper()
	eventually(t, 20*time.Second, "event "+reason, func() error {
		evs, err := kubernetes.NewForConfigOrDie(cfg).EventsV1().Events(ns).List(bg, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == reason && strings.Contains(e.Note, noteHas) {
				return nil
			}
		}
		return fmt.Errorf("no %s event with %q among %d", reason, noteHas, len(evs.Items))
	})
}

// TestFinalizerFollowsSpec: the topics finalizer is there exactly while
// deleteTopicsOnDelete is true, and another controller's finalizer survives
// every change.
func TestFinalizerFollowsSpec(t *testing.T) {
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
		c.Finalizers = []string{foreignFinalizer}
		c.Spec.Kafka.TopicPrefix = fmt.Sprintf("fin-%d", time.Now().UnixNano())
	})
	passMigration(t, ns)
	eventually(t, 30*time.Second, "reconciled", func() error {
		return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{})
	})
	waitFinalizers(t, ns, foreignFinalizer)
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) { c.Spec.Kafka.DeleteTopicsOnDelete = true })
	waitFinalizers(t, ns, foreignFinalizer, controller.Finalizer)
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) { c.Spec.Kafka.DeleteTopicsOnDelete = false })
	waitFinalizers(t, ns, foreignFinalizer)
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) { c.Finalizers = nil })
}

func waitGone(t *testing.T, ns string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, within, "cluster gone", func() error {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo"}, &chatv1.ChatCluster{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	return time.Since(start)
}

// TestDeleteNeverHangs: with topic deletion asked for, an unreachable Kafka
// holds the cluster only for its bound, gone credentials and the skip
// annotation not at all; the workloads are stopped first.
func TestDeleteNeverHangs(t *testing.T) {
	t.Run("unreachable Kafka", func(t *testing.T) {
		const bound = 8 * time.Second
		ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
			c.Spec.Kafka.DeleteTopicsOnDelete = true
			c.Spec.Kafka.BootstrapServers = []string{closedPort(t)}
		}, func(r *controller.Reconciler) { r.TopicDeletionTimeout = bound })
		passMigration(t, ns)
		eventually(t, 30*time.Second, "workloads", func() error {
			return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{})
		})
		waitFinalizers(t, ns, controller.Finalizer)
		if err := k8s.Delete(bg, getCluster(t, ns, "demo")); err != nil {
			t.Fatal(err)
		}
		// The garbage collector leaves dependents alone while the owner
		// waits on a finalizer: a Deployment gone now was stopped by the operator.
		eventually(t, 5*time.Second, "workloads stopped while the cluster waits", func() error {
			if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo"}, &chatv1.ChatCluster{}); err != nil {
				return fmt.Errorf("cluster: %w", err)
			}
			if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
				return errors.New("demo-logic still there")
			}
			return nil
		})
		took := waitGone(t, ns, bound+25*time.Second)
		t.Logf("deletion took %s with a bound of %s", took, bound)
		waitEvent(t, ns, "TopicDeletionFailed", "")
		waitEvent(t, ns, "TopicDeletionAbandoned", "delete them by hand")
	})
	t.Run("credentials already deleted", func(t *testing.T) {
		ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
			c.Spec.Kafka.DeleteTopicsOnDelete = true
			c.Spec.Kafka.BootstrapServers = []string{closedPort(t)}
			c.Spec.Kafka.CredentialsSecretRef = &corev1.LocalObjectReference{Name: "kafka-creds"}
		})
		createSecret(t, ns, "kafka-creds", map[string]string{"username": "u", "password": "p"})
		waitFinalizers(t, ns, controller.Finalizer)
		deleteSecret(t, ns, "kafka-creds")
		if err := k8s.Delete(bg, getCluster(t, ns, "demo")); err != nil {
			t.Fatal(err)
		}
		waitGone(t, ns, 30*time.Second) // the default bound is 5m
		waitEvent(t, ns, "TopicDeletionAbandoned", "kafka-creds")
	})
	t.Run("skip annotation", func(t *testing.T) {
		ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
			c.Spec.Kafka.DeleteTopicsOnDelete = true
			c.Spec.Kafka.BootstrapServers = []string{closedPort(t)}
			c.Annotations = map[string]string{controller.AnnotationSkipTopicDeletion: "true"}
		})
		waitFinalizers(t, ns, controller.Finalizer)
		if err := k8s.Delete(bg, getCluster(t, ns, "demo")); err != nil {
			t.Fatal(err)
		}
		waitGone(t, ns, 30*time.Second)
		waitEvent(t, ns, "TopicDeletionSkipped", controller.AnnotationSkipTopicDeletion)
	})
}

func deleteSecret(t *testing.T, ns, name string) {
	t.Helper()
	if err := k8s.Delete(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatal(err)
	}
}
