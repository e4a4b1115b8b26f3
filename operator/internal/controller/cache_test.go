package controller

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// An apply tells created, updated and unchanged apart from the cached copy,
// also while the cache has not seen the operator's own last apply yet.
func TestAppliedOutcome(t *testing.T) {
	var a applied
	steps := []struct {
		name             string
		cached           bool
		cachedRV, uid    string
		afterRV          string
		created, updated bool
	}{
		{"first apply creates", false, "", "u1", "1", true, false},
		{"the cache has not seen the creation yet", false, "", "u1", "1", false, false},
		{"the cache caught up", true, "1", "u1", "1", false, false},
		{"a change", true, "1", "u1", "2", false, true},
		{"the cache still shows the version before that change", true, "1", "u1", "2", false, false},
		{"someone else changed it, the cache saw it, nothing to put back", true, "3", "u1", "3", false, false},
		{"someone else changed a field the operator sets: put back", true, "4", "u1", "5", false, true},
		{"deleted by hand and created again", false, "", "u2", "9", true, false},
		{"created, then changed before the cache saw it", false, "", "u2", "10", false, true},
	}
	for _, s := range steps {
		created, updated := a.outcome(s.cached, s.cachedRV, types.UID(s.uid), s.afterRV)
		if created != s.created || updated != s.updated {
			t.Errorf("%s: created %v updated %v, want %v %v", s.name, created, updated, s.created, s.updated)
		}
	}
	// Objects the cache is in step with are forgotten.
	a.outcome(true, "10", types.UID("u2"), "10")
	a.outcome(true, "5", types.UID("u1"), "5")
	if len(a.rv) != 0 {
		t.Errorf("still remembered: %v", a.rv)
	}
	// So are objects not applied for a while (deleted ones, for instance).
	now := time.Now()
	a.now = func() time.Time { return now }
	a.outcome(false, "", types.UID("gone"), "1")
	now = now.Add(appliedMemory + time.Second)
	a.outcome(true, "7", types.UID("other"), "7")
	if _, ok := a.rv["gone"]; ok || len(a.rv) != 0 {
		t.Errorf("still remembered: %v", a.rv)
	}
}
