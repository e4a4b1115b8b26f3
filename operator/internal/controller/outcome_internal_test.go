package controller

import (
	"errors"
	"fmt"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/status"
)

func statusWith(phase chatv1.Phase, typ, reason string) chatv1.ChatClusterStatus {
	return chatv1.ChatClusterStatus{Phase: phase, Conditions: []metav1.Condition{
		{Type: typ, Status: metav1.ConditionFalse, Reason: reason},
		{Type: chatv1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason},
	}}
}

// TestRequeueBacksOff: a state only a person can end is retried at growing
// intervals up to a cap, a new state starts over, a roll keeps its pace,
// and a Running cluster is looked at every resync.
func TestRequeueBacksOff(t *testing.T) {
	r := &Reconciler{Resync: 30 * time.Second}
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	failed := statusWith(chatv1.PhaseDegraded, chatv1.ConditionDatabaseMigrated, status.ReasonMigrationFailed)
	var got []time.Duration
	for range 9 {
		got = append(got, r.requeueAfter(a, failed, 0))
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("MigrationFailed retried after %v, want %v", got, want)
	}
	if d := r.requeueAfter(b, failed, 0); d != 5*time.Second {
		t.Fatalf("another cluster starts at %s", d)
	}
	if d := r.requeueAfter(a, failed, 300*time.Millisecond); d != 300*time.Millisecond {
		t.Fatalf("a roll in progress waits %s", d)
	}
	forbidden := statusWith(chatv1.PhaseDegraded, chatv1.ConditionReconciled, status.ReasonForbidden)
	if d := r.requeueAfter(a, forbidden, 0); d != 5*time.Second {
		t.Fatalf("a new blocking state waits %s, want to start over at 5s", d)
	}
	// Waiting on what may come back by itself: faster, capped at the resync.
	unreachable := statusWith(chatv1.PhaseProvisioning, chatv1.ConditionRedisReachable, status.ReasonUnreachable)
	got = nil
	for range 6 {
		got = append(got, r.requeueAfter(a, unreachable, 0))
	}
	if fmt.Sprint(got) != fmt.Sprint([]time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}) {
		t.Fatalf("Unreachable retried after %v", got)
	}
	running := chatv1.ChatClusterStatus{Phase: chatv1.PhaseRunning}
	if d := r.requeueAfter(a, running, 0); d != 30*time.Second {
		t.Fatalf("Running resyncs after %s", d)
	}
	if d := r.requeueAfter(a, failed, 0); d != 5*time.Second {
		t.Fatalf("after Running, a failure starts over at %s", d)
	}
}

func TestRefusalReason(t *testing.T) {
	gr := schema.GroupResource{Resource: "configmaps"}
	tests := []struct {
		err  error
		want string
	}{
		{apierrors.NewForbidden(gr, "demo-config", errors.New("denied by policy")), status.ReasonForbidden},
		{apierrors.NewForbidden(gr, "demo-config", errors.New("exceeded quota: q, requested: count/configmaps=1")), status.ReasonQuota},
		{apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "demo-repo", field.ErrorList{field.Invalid(field.NewPath("spec", "clusterIP"), "x", "field is immutable")}), status.ReasonInvalid},
		{apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "demo-repo", field.ErrorList{field.Invalid(field.NewPath("metadata", "ownerReferences"), "x", "Only one reference can have Controller set to true")}), status.ReasonOwnedByOther},
		{&stepError{reason: status.ReasonOwnedByOther, err: errors.New("controlled by another")}, status.ReasonOwnedByOther},
		{fmt.Errorf("apply ConfigMap demo-config: %w", apierrors.NewConflict(gr, "demo-config", errors.New("changed"))), status.ReasonConflict},
		{apierrors.NewTimeoutError("slow", 1), status.ReasonAPIError},
	}
	for _, tt := range tests {
		if got := refusalReason(tt.err); got != tt.want {
			t.Errorf("%v: %s, want %s", tt.err, got, tt.want)
		}
	}
	conflict := apierrors.NewConflict(gr, "demo-config", errors.New("changed"))
	if !onlyConflicts(errors.Join(conflict, fmt.Errorf("wrapped: %w", conflict))) || onlyConflicts(errors.Join(conflict, tests[0].err)) {
		t.Error("onlyConflicts")
	}
}
