package task

import (
	"testing"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// TestRouteCacheResyncsNewSessions: a session the cache did not hold when a
// conversation was pushed from it is owed a resync for that conversation
// when its user is read again, and only then.
func TestRouteCacheResyncsNewSessions(t *testing.T) {
	s := func(id string) *gochatv1.Session { return &gochatv1.Session{UserId: "u", SessionId: id, Gateway: "gw"} }
	tests := []struct {
		name       string
		pushed     []string // conversations pushed from the first read
		first      []*gochatv1.Session
		second     []*gochatv1.Session
		wantResync map[string][]string // conversation -> sessions
	}{
		{"new session after a push", []string{"c1"}, nil, []*gochatv1.Session{s("a")}, map[string][]string{"c1": {"a"}}},
		{"new session, nothing pushed", nil, nil, []*gochatv1.Session{s("a")}, nil},
		{"same sessions", []string{"c1"}, []*gochatv1.Session{s("a")}, []*gochatv1.Session{s("a")}, nil},
		{"one new of two, two conversations", []string{"c1", "c2"}, []*gochatv1.Session{s("a")}, []*gochatv1.Session{s("a"), s("b")},
			map[string][]string{"c1": {"b"}, "c2": {"b"}}},
		{"session gone", []string{"c1"}, []*gochatv1.Session{s("a")}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := newRouteCache(2 * time.Second)
			c.now = func() time.Time { return now }
			c.store(now, []string{"u"}, map[string][]*gochatv1.Session{"u": tt.first}, nil)
			got := c.hits([]string{"u"}, map[string][]string{"u": tt.pushed})
			if len(got["u"]) != len(tt.first) || got == nil {
				t.Fatalf("fresh entry: hits %v, want %d sessions", got, len(tt.first))
			}
			if _, ok := got["u"]; !ok {
				t.Fatal("fresh entry not hit")
			}
			now = now.Add(2 * time.Second)
			if got := c.hits([]string{"u"}, nil); len(got) != 0 {
				t.Fatalf("expired entry hit: %v", got)
			}
			users, _ := c.expired()
			if (len(users) == 1) != (len(tt.pushed) > 0) {
				t.Fatalf("expired users to read again %v, pushed %v", users, tt.pushed)
			}
			out := c.store(now, []string{"u"}, map[string][]*gochatv1.Session{"u": tt.second}, nil)
			got2 := map[string][]string{}
			for gw, ds := range out {
				if gw != "gw" {
					t.Fatalf("resync to gateway %q", gw)
				}
				for _, d := range ds {
					got2[d.convID] = append(got2[d.convID], d.d.SessionIds...)
				}
			}
			if len(got2) != len(tt.wantResync) {
				t.Fatalf("resyncs %v, want %v", got2, tt.wantResync)
			}
			for conv, ids := range tt.wantResync {
				if len(got2[conv]) != len(ids) || got2[conv][0] != ids[0] {
					t.Fatalf("resyncs %v, want %v", got2, tt.wantResync)
				}
			}
			// What was resynced is not owed again.
			now = now.Add(3 * time.Second)
			if out := c.store(now, []string{"u"}, map[string][]*gochatv1.Session{"u": append(tt.second, s("z"))}, nil); len(out) != 0 {
				t.Fatalf("a read with nothing pushed since owes resyncs: %v", out)
			}
		})
	}
}

// TestRouteCacheKeepsTheLaterRead: a slower, older read must not replace a
// newer entry and lose what was pushed from it.
func TestRouteCacheKeepsTheLaterRead(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRouteCache(2 * time.Second)
	c.now = func() time.Time { return now }
	c.store(now, []string{"u"}, nil, map[string][]string{"u": {"c1"}})
	c.store(now.Add(-time.Second), []string{"u"}, nil, nil)
	now = now.Add(3 * time.Second)
	out := c.store(now, []string{"u"}, map[string][]*gochatv1.Session{"u": {{UserId: "u", SessionId: "a", Gateway: "gw"}}}, nil)
	if len(out["gw"]) != 1 || out["gw"][0].convID != "c1" {
		t.Fatalf("resyncs %v, want c1 to session a", out)
	}
}
