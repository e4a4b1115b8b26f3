package controller

import (
	"errors"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/status"
)

// DefaultMaxConcurrentReconciles is how many ChatClusters reconcile at once.
const DefaultMaxConcurrentReconciles = 4

// The requeue of a cluster that is not Running: while only a person can
// end its state (status.Blocked), from blockedBase doubling to blockedMax;
// while it progresses or waits on something that may come back by itself
// (pods starting, a Kafka or Redis not answering), from waitingBase doubling
// to the resync period. The watches wake it earlier when the spec, a Secret
// it reads or an object it owns changes.
const (
	blockedBase = 5 * time.Second
	blockedMax  = 5 * time.Minute
	waitingBase = 2 * time.Second
)

func (r *Reconciler) maxConcurrentReconciles() int {
	if r.MaxConcurrentReconciles > 0 {
		return r.MaxConcurrentReconciles
	}
	return DefaultMaxConcurrentReconciles
}

// stepError is a step of the reconcile that failed, with what it was about.
type stepError struct {
	reason  string // empty: derived from the API error
	action  string
	related client.Object
	err     error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// refusalReason names why the API server refused a step, for the
// Reconciled condition and the Warning event.
func refusalReason(err error) string {
	var se *stepError
	if errors.As(err, &se) && se.reason != "" {
		return se.reason
	}
	msg := err.Error()
	switch {
	case apierrors.IsForbidden(err) && strings.Contains(msg, "exceeded quota"):
		return status.ReasonQuota
	case apierrors.IsForbidden(err):
		return status.ReasonForbidden
	case apierrors.IsInvalid(err) && strings.Contains(msg, "Only one reference can have Controller set to true"):
		// Not in the cache (another controller's object carries none of
		// the operator's labels), so only the API server saw the owner.
		return status.ReasonOwnedByOther
	case apierrors.IsInvalid(err):
		return status.ReasonInvalid
	case apierrors.IsConflict(err):
		return status.ReasonConflict
	}
	return status.ReasonAPIError
}

// refused reports a failed reconcile on the cluster: a Warning event for
// each failed step, naming the object it was about, and the check that
// becomes the Reconciled condition.
func (r *Reconciler) refused(cc *chatv1.ChatCluster, err error) status.Check {
	var steps []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		steps = joined.Unwrap()
	} else {
		steps = []error{err}
	}
	reason := ""
	for _, e := range steps {
		rs := refusalReason(e)
		if reason == "" {
			reason = rs
		}
		action := "Reconcile"
		var related client.Object
		var se *stepError
		if errors.As(e, &se) {
			action, related = se.action, se.related
		}
		r.eventAbout(cc, related, corev1.EventTypeWarning, rs, action, "%v", e)
	}
	return status.Check{Reason: reason, Err: err}
}

// onlyConflicts reports a pass that failed only because an object changed
// while it ran: retried at once, it is no news for the cluster's status.
func onlyConflicts(err error) bool {
	steps := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		steps = joined.Unwrap()
	}
	for _, e := range steps {
		var se *stepError
		if (errors.As(e, &se) && se.reason != "") || !apierrors.IsConflict(e) {
			return false
		}
	}
	return true
}

// backoffState remembers, per cluster, how long the state that keeps it
// from Running has lasted, so that retries space out. It is forgotten when
// the state changes or the cluster goes.
type backoffState struct {
	why  string
	next time.Duration
}

func (r *Reconciler) forgetBackoff(key types.NamespacedName) {
	r.backoffMu.Lock()
	defer r.backoffMu.Unlock()
	delete(r.backoff, key)
}

// delay returns the wait before the next retry of the state why: base the
// first time, then twice the last, up to most.
func (r *Reconciler) delay(key types.NamespacedName, why string, base, most time.Duration) time.Duration {
	r.backoffMu.Lock()
	defer r.backoffMu.Unlock()
	if r.backoff == nil {
		r.backoff = map[types.NamespacedName]backoffState{}
	}
	st := r.backoff[key]
	if st.why != why {
		st = backoffState{why: why, next: base}
	}
	d := min(st.next, most)
	st.next = min(2*d, most)
	r.backoff[key] = st
	return d
}

// requeueAfter decides when to look at a cluster again.
func (r *Reconciler) requeueAfter(key types.NamespacedName, st chatv1.ChatClusterStatus, busy time.Duration) time.Duration {
	resync := r.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	switch blocked := status.Blocked(st); {
	case busy > 0:
		// A roll in progress keeps its pace (drain deadlines) whatever else holds.
		return busy
	case blocked != "":
		return r.delay(key, "blocked:"+blocked, blockedBase, blockedMax)
	case st.Phase != chatv1.PhaseRunning:
		ready := condition(st.Conditions, chatv1.ConditionReady)
		return r.delay(key, "waiting:"+ready.Reason, waitingBase, max(resync, waitingBase))
	}
	r.forgetBackoff(key)
	return resync
}
