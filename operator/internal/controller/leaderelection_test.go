package controller_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	tc "github.com/gochat/gochat/services/testcluster"
)

// leaseName is the operator's leader election Lease (cmd/main.go).
const leaseName = "operator.chat.gochat.io"

// electingManager is an operator replica that runs with leader election,
// as cmd/main.go does, its Lease in the test's namespace.
type electingManager struct {
	mgr        ctrl.Manager
	reconciles *atomic.Int64 // Reconcile calls: each begins by reading its ChatCluster
	stop       func()
}

// startElectingManager runs a manager as cfg's user with leader election
// on. Its reconciler's client counts the ChatCluster reads, one per
// Reconcile call, so that a test sees which replica reconciles.
func startElectingManager(t *testing.T, cfg *rest.Config, ns string, opts ...func(*controller.Reconciler)) *electingManager {
	t.Helper()
	m := &electingManager{reconciles: &atomic.Int64{}}
	tm := runManager(t, cfg, ns, func(o *ctrl.Options) {
		o.LeaderElection, o.LeaderElectionID, o.LeaderElectionNamespace, o.LeaderElectionReleaseOnCancel = true, leaseName, ns, true
	}, func(c client.Client) client.Client {
		return countingClient{Client: c, reads: m.reconciles}
	}, opts...)
	m.mgr, m.stop = tm.mgr, tm.stop
	return m
}

// countingClient counts the ChatCluster reads.
type countingClient struct {
	client.Client
	reads *atomic.Int64
}

func (c countingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*chatv1.ChatCluster); ok {
		c.reads.Add(1)
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (m *electingManager) elected() bool {
	select {
	case <-m.mgr.Elected():
		return true
	default:
		return false
	}
}

func leaseHolder(t *testing.T, ns string) string {
	t.Helper()
	var l coordinationv1.Lease
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: leaseName}, &l); err != nil {
		return ""
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestLeaderElection runs two replicas of the operator: one leads and
// reconciles, the other reconciles nothing while it waits; when the leader
// stops, the other takes over and carries on.
func TestLeaderElection(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	a := startElectingManager(t, cfg, ns)
	eventually(t, 30*time.Second, "the first replica leads", func() error {
		if !a.elected() {
			return fmt.Errorf("not elected (lease held by %q)", leaseHolder(t, ns))
		}
		return nil
	})
	first := leaseHolder(t, ns)
	b := startElectingManager(t, cfg, ns)
	if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
		t.Fatal(err)
	}
	bringUp(t, ns)
	// Running takes many reconciles of the leader; none of them is the
	// standby's, and it is not elected.
	if a.reconciles.Load() == 0 || b.reconciles.Load() != 0 || b.elected() {
		t.Fatalf("leader %d reconciles, standby %d reconciles (elected %v): want only the leader's", a.reconciles.Load(), b.reconciles.Load(), b.elected())
	}
	if h := leaseHolder(t, ns); h != first {
		t.Fatalf("lease moved from %q to %q while its holder ran", first, h)
	}

	// The leader stops (it releases the Lease); the standby takes over.
	a.stop()
	stoppedAt := a.reconciles.Load()
	eventually(t, 60*time.Second, "the standby leads", func() error {
		if !b.elected() {
			return fmt.Errorf("not elected (lease held by %q)", leaseHolder(t, ns))
		}
		return nil
	})
	if h := leaseHolder(t, ns); h == first || h == "" {
		t.Fatalf("lease holder %q after the takeover, was %q", h, first)
	}
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(cc *chatv1.ChatCluster) { cc.Spec.Logic.Replicas = i32(3) })
	eventually(t, 30*time.Second, "the new leader applies the change", func() error {
		d := get(t, ns, "demo-logic", &appsv1.Deployment{})
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			return fmt.Errorf("demo-logic has %v replicas", d.Spec.Replicas)
		}
		return nil
	})
	if b.reconciles.Load() == 0 {
		t.Fatal("the new leader changed the Deployment without a reconcile counted")
	}
	if n := a.reconciles.Load(); n != stoppedAt {
		t.Fatalf("the stopped replica reconciled %d times after it stopped", n-stoppedAt)
	}
	// client-go records each election as a core/v1 Event on the Lease.
	var evs corev1.EventList
	if err := k8s.List(bg, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	elections := 0
	for _, e := range evs.Items {
		if e.Reason == "LeaderElection" && e.InvolvedObject.Name == leaseName {
			elections++
		}
	}
	if elections < 2 {
		t.Fatalf("%d LeaderElection events, want one per leader", elections)
	}
}
