package task

import (
	"fmt"
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
			users, _ := c.due()
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

// TestConvRoutes: a conversation's route is good only while it matches its
// member list's version, every entry it was made from is still the one in
// the cache, and the oldest of them is fresh; and it is made only from
// entries pushed from for that conversation.
func TestConvRoutes(t *testing.T) {
	sess := func(u, id, gw string) *gochatv1.Session {
		return &gochatv1.Session{UserId: u, SessionId: id, Gateway: gw}
	}
	members := []string{"u1", "u2", "u3"}
	live := map[string][]*gochatv1.Session{
		"u1": {sess("u1", "a", "gw1"), sess("u1", "b", "gw2")},
		"u2": {sess("u2", "c", "gw1")},
	}
	pushing := map[string][]string{"u1": {"g"}, "u2": {"g"}, "u3": {"g"}}
	tests := []struct {
		name    string
		change  func(c *routeCache, now *time.Time) // between making the route and using it
		version int64
		want    bool
	}{
		{"unchanged", func(*routeCache, *time.Time) {}, 7, true},
		{"members changed", func(*routeCache, *time.Time) {}, 8, false},
		{"oldest entry expired", func(_ *routeCache, now *time.Time) { *now = now.Add(2 * time.Second) }, 7, false},
		{"an entry read again", func(c *routeCache, now *time.Time) {
			c.store(*now, []string{"u2"}, map[string][]*gochatv1.Session{"u2": {sess("u2", "c", "gw1"), sess("u2", "d", "gw2")}}, nil)
		}, 7, false},
		{"a gateway forgot sessions", func(c *routeCache, _ *time.Time) { c.forget(map[string]bool{"gw1/c": true}) }, 7, false},
		{"an entry pushed from too many conversations", func(c *routeCache, _ *time.Time) {
			many := map[string][]string{"u1": make([]string, maxRouteConvs)}
			c.hits([]string{"u1"}, many)
		}, 7, false},
		{"another user read", func(c *routeCache, now *time.Time) {
			c.store(*now, []string{"x"}, nil, nil) // in no route of g, but the cache cannot tell cheaply
		}, 7, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := newRouteCache(2 * time.Second)
			c.now = func() time.Time { return now }
			c.store(now.Add(-time.Second), members, live, pushing)
			now = now.Add(500 * time.Millisecond)
			c.keepRoute("g", 7, members)
			r := c.route("g", 7)
			if r == nil {
				t.Fatal("no route right after it was made")
			}
			if got := len(r.perGateway["gw1"]) + len(r.perGateway["gw2"]); got != 3 || len(r.offline) != 1 || r.offline[0] != "u3" {
				t.Fatalf("route = %+v, want 3 sessions and u3 offline", r)
			}
			tt.change(c, &now)
			if got := c.route("g", tt.version) != nil; got != tt.want {
				t.Fatalf("route good = %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("made from entries it marks as pushed from, unless one is full", func(t *testing.T) {
		c := newRouteCache(2 * time.Second)
		c.store(c.now(), members, live, map[string][]string{"u1": {"g"}, "u3": {"other"}})
		c.keepRoute("g", 7, members)
		if c.route("g", 7) == nil {
			t.Fatal("no route made")
		}
		for _, u := range members {
			if !c.users[u].pushed["g"] {
				t.Fatalf("%s's entry is not marked as pushed from for g: a new session of its would miss g's resync", u)
			}
		}
		full := map[string][]string{"u1": {"g"}, "u2": {"g"}, "u3": make([]string, maxRouteConvs)}
		for i := range full["u3"] {
			full["u3"][i] = fmt.Sprint("c", i)
		}
		c2 := newRouteCache(2 * time.Second)
		c2.store(c2.now(), members, live, full)
		c2.keepRoute("g", 7, members)
		if c2.route("g", 7) != nil {
			t.Fatal("a route was made from an entry pushed from as many conversations as an entry may be")
		}
	})
	t.Run("the refresher makes again only the routes used", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2 * time.Second)
		c.now = func() time.Time { return now }
		c.store(now, members, live, pushing)
		c.keepRoute("g", 7, members)
		c.keepRoute("h", 3, members)
		c.route("g", 7)
		now = now.Add(time.Second)
		users, routes := c.due()
		if len(users) != 3 || len(routes) != 1 || routes["g"] != 7 {
			t.Fatalf("due: users %v routes %v, want the 3 users and route g at version 7", users, routes)
		}
	})
	t.Run("the sending session is left out", func(t *testing.T) {
		c := newRouteCache(2 * time.Second)
		c.store(c.now(), members, live, pushing)
		c.keepRoute("g", 7, members)
		r := c.route("g", 7)
		got := r.deliver(map[string][]delivery{}, item{convID: "g", skipSess: "a"})
		if ids := got["gw1"][0].d.SessionIds; len(ids) != 1 || ids[0] != "c" {
			t.Fatalf("gw1 pushes to %v, want [c]", ids)
		}
		if ids := r.perGateway["gw1"]; len(ids) != 2 {
			t.Fatalf("the route's own list changed to %v", ids)
		}
	})
}
