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
			c := newRouteCache(2*time.Second, 30*time.Second)
			c.now = func() time.Time { return now }
			c.store(now, 0, []string{"u"}, map[string][]*gochatv1.Session{"u": tt.first}, nil)
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
			out := c.store(now, 0, []string{"u"}, map[string][]*gochatv1.Session{"u": tt.second}, nil)
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
			if out := c.store(now, 0, []string{"u"}, map[string][]*gochatv1.Session{"u": append(tt.second, s("z"))}, nil); len(out) != 0 {
				t.Fatalf("a read with nothing pushed since owes resyncs: %v", out)
			}
		})
	}
}

// TestRouteCacheKeepsTheLaterRead: a slower, older read must not replace a
// newer entry and lose what was pushed from it.
func TestRouteCacheKeepsTheLaterRead(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRouteCache(2*time.Second, 30*time.Second)
	c.now = func() time.Time { return now }
	c.store(now, 0, []string{"u"}, nil, map[string][]string{"u": {"c1"}})
	c.store(now.Add(-time.Second), 0, []string{"u"}, nil, nil)
	now = now.Add(3 * time.Second)
	out := c.store(now, 0, []string{"u"}, map[string][]*gochatv1.Session{"u": {{UserId: "u", SessionId: "a", Gateway: "gw"}}}, nil)
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
			c.store(*now, 0, []string{"u2"}, map[string][]*gochatv1.Session{"u2": {sess("u2", "c", "gw1"), sess("u2", "d", "gw2")}}, nil)
		}, 7, false},
		{"a gateway forgot sessions", func(c *routeCache, _ *time.Time) { c.forget(map[string]bool{"gw1/c": true}) }, 7, false},
		{"an entry pushed from too many conversations", func(c *routeCache, _ *time.Time) {
			many := map[string][]string{"u1": make([]string, maxRouteConvs)}
			c.hits([]string{"u1"}, many)
		}, 7, false},
		{"another user read", func(c *routeCache, now *time.Time) {
			c.store(*now, 0, []string{"x"}, nil, nil) // no entry before: in no route
		}, 7, true},
		{"an entry read again, the same sessions", func(c *routeCache, now *time.Time) {
			c.store(*now, 0, []string{"u2"}, map[string][]*gochatv1.Session{"u2": {sess("u2", "c", "gw1")}}, nil)
		}, 7, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := newRouteCache(2*time.Second, 30*time.Second)
			c.now = func() time.Time { return now }
			c.store(now.Add(-time.Second), 0, members, live, pushing)
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
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.store(c.now(), 0, members, live, map[string][]string{"u1": {"g"}, "u3": {"other"}})
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
		c2 := newRouteCache(2*time.Second, 30*time.Second)
		c2.store(c2.now(), 0, members, live, full)
		c2.keepRoute("g", 7, members)
		if c2.route("g", 7) != nil {
			t.Fatal("a route was made from an entry pushed from as many conversations as an entry may be")
		}
	})
	t.Run("the refresher makes again only the routes used", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		c.store(now, 0, members, live, pushing)
		c.keepRoute("g", 7, members)
		c.keepRoute("h", 3, members)
		c.route("g", 7)
		now = now.Add(time.Second)
		users, routes := c.due()
		if len(users) != 3 || len(routes) != 1 || routes["g"] != 7 {
			t.Fatalf("due: users %v routes %v, want the 3 users and route g at version 7", users, routes)
		}
	})
	t.Run("an entry renewed with the same sessions still owes its route's resync", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		c.store(now, 0, members, live, pushing)
		c.keepRoute("g", 7, members)
		now = now.Add(time.Second)
		c.store(now, 0, []string{"u2"}, map[string][]*gochatv1.Session{"u2": {sess("u2", "c", "gw1")}}, nil)
		if c.route("g", 7) == nil {
			t.Fatal("the route is no longer good after a read that changed nothing")
		}
		now = now.Add(time.Second)
		out := c.store(now, 0, []string{"u2"}, map[string][]*gochatv1.Session{"u2": {sess("u2", "c", "gw1"), sess("u2", "d", "gw2")}}, nil)
		if len(out["gw2"]) != 1 || out["gw2"][0].convID != "g" || out["gw2"][0].d.SessionIds[0] != "d" {
			t.Fatalf("resyncs %v, want g to the new session d: the route pushed from the renewed entry", out)
		}
		if c.route("g", 7) != nil {
			t.Fatal("the route is still used after an entry it was made from changed")
		}
	})
	t.Run("the sending session is left out", func(t *testing.T) {
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.store(c.now(), 0, members, live, pushing)
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

// TestRouteCacheChangeLog: while the presence change log is read, an entry
// is good until its user changes after the position its lookup read, or it
// reaches the max age; without the log it is good for the TTL only.
func TestRouteCacheChangeLog(t *testing.T) {
	sess := []*gochatv1.Session{{UserId: "u", SessionId: "a", Gateway: "gw"}}
	change := func(gen int64) []*gochatv1.PresenceChange {
		return []*gochatv1.PresenceChange{{UserId: "u", Gen: gen}}
	}
	tests := []struct {
		name   string
		pushed bool // the entry was pushed from (else a stale one is dropped)
		steps  func(c *routeCache, now *time.Time)
		good   bool
		due    bool // the refresher reads it again
	}{
		{"no change, past the TTL, the log read", true, func(c *routeCache, now *time.Time) {
			*now = now.Add(3 * time.Second)
			c.changes(*now, nil, 5, true)
		}, true, false},
		{"no change, the log not read within the TTL", true, func(c *routeCache, now *time.Time) {
			*now = now.Add(3 * time.Second)
		}, false, true},
		{"a change after the lookup's position", true, func(c *routeCache, now *time.Time) {
			c.changes(*now, change(6), 6, true)
		}, false, true},
		{"a change after the lookup's position, never pushed from", false, func(c *routeCache, now *time.Time) {
			c.changes(*now, change(6), 6, true)
		}, false, false},
		{"a change at the lookup's position", true, func(c *routeCache, now *time.Time) {
			c.changes(*now, change(5), 6, true)
		}, true, false},
		{"an incomplete read", true, func(c *routeCache, now *time.Time) {
			*now = now.Add(time.Millisecond)
			c.changes(*now, nil, 9, false)
		}, false, true},
		{"read again after Redis lost the log", true, func(c *routeCache, now *time.Time) {
			c.changes(*now, change(6), 6, true)
			*now = now.Add(time.Millisecond)
			c.changes(*now, nil, 1, false) // the log starts again from 0
			*now = now.Add(time.Millisecond)
			c.store(*now, 1, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, nil)
		}, true, false},
		{"half the max age, the log read", true, func(c *routeCache, now *time.Time) {
			*now = now.Add(15 * time.Second)
			c.changes(*now, nil, 5, true)
		}, true, true},
		{"the max age, the log read", true, func(c *routeCache, now *time.Time) {
			*now = now.Add(30 * time.Second)
			c.changes(*now, nil, 5, true)
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := newRouteCache(2*time.Second, 30*time.Second)
			c.now = func() time.Time { return now }
			c.changes(now, nil, 5, true)
			var pushing map[string][]string
			if tt.pushed {
				pushing = map[string][]string{"u": {"g"}}
			}
			c.store(now, 5, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, pushing)
			if tt.pushed {
				c.keepRoute("g", 1, []string{"u"})
				if c.route("g", 1) == nil {
					t.Fatal("no route made")
				}
			}
			tt.steps(c, &now)
			if got := len(c.hits([]string{"u"}, nil)) == 1; got != tt.good {
				t.Fatalf("entry good = %v, want %v", got, tt.good)
			}
			if tt.pushed && !tt.good && c.route("g", 1) != nil {
				t.Fatal("a route made from an entry no longer good is still used")
			}
			users, _ := c.due()
			if got := len(users) == 1; got != tt.due {
				t.Fatalf("read again by the refresher = %v, want %v", got, tt.due)
			}
		})
	}

	t.Run("a change read while the lookup was in flight", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		c.changes(now, change(6), 6, true)
		c.store(now, 5, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, map[string][]string{"u": {"g"}})
		if len(c.hits([]string{"u"}, nil)) != 0 {
			t.Fatal("an entry that read a position before a change already read is used")
		}
		c.store(now, 6, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, nil)
		if len(c.hits([]string{"u"}, nil)) != 1 {
			t.Fatal("an entry read after the change is not used")
		}
		now = now.Add(2 * changeMemory)
		c.changes(now, nil, 6, true)
		if len(c.changed) != 0 {
			t.Fatalf("changes kept past %s: %v", changeMemory, c.changed)
		}
	})
	t.Run("entries past half their age are read again over several ticks", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		c.changes(now, nil, 5, true)
		many := make([]string, 2500)
		live := map[string][]*gochatv1.Session{}
		pushing := map[string][]string{}
		for i := range many {
			many[i] = fmt.Sprint("m", i)
			live[many[i]] = []*gochatv1.Session{{UserId: many[i], SessionId: "s", Gateway: "gw"}}
			pushing[many[i]] = []string{"g"}
		}
		c.store(now, 5, many, live, pushing)
		now = now.Add(16 * time.Second)
		c.changes(now, []*gochatv1.PresenceChange{{UserId: "m0", Gen: 6}}, 6, true)
		users, _ := c.due()
		if len(users) != maxUsersPerLookup && len(users) != maxUsersPerLookup+1 {
			t.Fatalf("%d users read again in one tick, want %d (and the changed one)", len(users), maxUsersPerLookup)
		}
		hasChanged := false
		for _, u := range users {
			hasChanged = hasChanged || u == "m0"
		}
		if !hasChanged {
			t.Fatal("the changed user waits for a later tick")
		}
		c.store(now, 6, users, live, nil)
		for range 3 {
			users, _ = c.due()
			c.store(now, 6, users, live, nil)
		}
		if users, _ = c.due(); len(users) != 0 {
			t.Fatalf("%d users still due after four ticks", len(users))
		}
		if got := len(c.hits(many, nil)); got != len(many) {
			t.Fatalf("%d of %d entries good while they were read again", got, len(many))
		}
	})
	t.Run("a lookup in flight across an incomplete read", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		sent := now
		now = now.Add(time.Millisecond)
		c.changes(now, nil, 9, false)
		c.store(sent, 9, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, nil)
		if len(c.hits([]string{"u"}, nil)) != 0 {
			t.Fatal("an entry whose lookup was sent before an incomplete read of the log is used")
		}
		c.store(now.Add(time.Millisecond), 9, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, nil)
		if len(c.hits([]string{"u"}, nil)) != 1 {
			t.Fatal("an entry read after the incomplete read is not used")
		}
	})
	t.Run("more changes than are remembered", func(t *testing.T) {
		now := time.Unix(1000, 0)
		c := newRouteCache(2*time.Second, 30*time.Second)
		c.now = func() time.Time { return now }
		c.changes(now, nil, 5, true)
		c.store(now, 5, []string{"u"}, map[string][]*gochatv1.Session{"u": sess}, map[string][]string{"u": {"g"}})
		many := make([]*gochatv1.PresenceChange, maxRememberedChanges+1)
		for i := range many {
			many[i] = &gochatv1.PresenceChange{UserId: fmt.Sprint("x", i), Gen: 6}
		}
		now = now.Add(time.Millisecond)
		c.changes(now, many, 6, true)
		if len(c.changed) != 0 || len(c.hits([]string{"u"}, nil)) != 0 {
			t.Fatalf("%d changes remembered, entry of an unnamed user still used: want it read as incomplete", len(c.changed))
		}
	})
}
