package task

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/clientapi"
)

var routeLookups = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "gochat_task_route_lookups_total", Help: "Recipients routed for a large conversation, by where their sessions came from (cache or presence).",
}, []string{"source"})

const (
	// RouteCacheMinMembers: only conversations with at least this many
	// members are routed from the cache. Direct conversations and small
	// groups keep reading presence for every push, so their offline
	// notifications are exact.
	RouteCacheMinMembers = 100
	// maxRouteConvs bounds the conversations an entry remembers having
	// been pushed; past it the entry is expired, so it is looked up again
	// (and its new sessions resynced) at its next use.
	maxRouteConvs = 32
	// lookupParallel is how many presence lookups of one batch run at
	// once: their round trips, not Redis, set a large group's latency.
	lookupParallel = 4
)

// routeCache keeps, for a short TTL, the live sessions of the members of
// large conversations, so that a 10,000-member group costs one presence
// lookup per member per TTL instead of one per message.
//
// A session that comes online after its user's entry was read misses the
// pushes made from that entry. So each entry remembers the conversations
// pushed from it; when it is read again (at its next use, or by refresh
// once it has expired), every session the new read holds and the old did
// not is sent a resync for each of those conversations, and syncs from its
// last seq. No message is lost; such a session may get one up to about two
// TTLs late.
type routeCache struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	users map[string]*routeEntry
}

type routeEntry struct {
	read     time.Time // when the lookup that filled it was sent
	sessions []*gochatv1.Session
	pushed   map[string]bool // conversations pushed from it since read
}

func newRouteCache(ttl time.Duration) *routeCache {
	return &routeCache{ttl: ttl, now: time.Now, users: map[string]*routeEntry{}}
}

// hits returns the sessions of the users whose entry is still fresh, and
// notes that convs[user] are about to be pushed from it. Users it returns
// nothing for must be looked up.
func (c *routeCache) hits(users []string, convs map[string][]string) map[string][]*gochatv1.Session {
	out := map[string][]*gochatv1.Session{}
	if c == nil {
		return out
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, u := range users {
		e := c.users[u]
		if e == nil || now.Sub(e.read) >= c.ttl {
			continue
		}
		if len(e.pushed)+len(convs[u]) > maxRouteConvs {
			e.read = time.Time{} // looked up now; resynced below by store
			continue
		}
		for _, conv := range convs[u] {
			e.pushed[conv] = true
		}
		out[u] = e.sessions
	}
	return out
}

// store records fresh lookups of users (sent at read) and returns the
// resyncs owed to the sessions that the previous entries did not hold, for
// the conversations pushed from them. pushing[user] are the conversations
// about to be pushed from the new entry.
func (c *routeCache) store(read time.Time, users []string, sessions map[string][]*gochatv1.Session, pushing map[string][]string) map[string][]delivery {
	if c == nil {
		return nil
	}
	resync := map[string]map[string][]string{} // gateway -> conversation -> sessions
	c.mu.Lock()
	for _, u := range users {
		old := c.users[u]
		if old != nil && old.read.After(read) {
			continue // a later read is already there, with what was pushed from it
		}
		if old != nil && len(old.pushed) > 0 {
			held := make(map[string]bool, len(old.sessions))
			for _, s := range old.sessions {
				held[s.Gateway+"/"+s.SessionId] = true
			}
			for _, s := range sessions[u] {
				if held[s.Gateway+"/"+s.SessionId] {
					continue
				}
				for conv := range old.pushed {
					if resync[s.Gateway] == nil {
						resync[s.Gateway] = map[string][]string{}
					}
					resync[s.Gateway][conv] = append(resync[s.Gateway][conv], s.SessionId)
				}
			}
		}
		e := &routeEntry{read: read, sessions: sessions[u], pushed: map[string]bool{}}
		for _, conv := range pushing[u] {
			e.pushed[conv] = true
		}
		c.users[u] = e
	}
	c.mu.Unlock()
	out := map[string][]delivery{}
	for gw, byConv := range resync {
		for conv, ids := range byConv {
			out[gw] = append(out[gw], delivery{convID: conv, d: &gochatv1.Delivery{SessionIds: ids,
				Frame: clientapi.Frame(clientapi.TypeResync, clientapi.ResyncData{ConversationID: conv})}})
		}
	}
	return out
}

// forget drops sessions a gateway said it does not hold.
func (c *routeCache) forget(gone map[string]bool) {
	if c == nil || len(gone) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.users {
		kept := e.sessions[:0:0]
		for _, s := range e.sessions {
			if !gone[s.Gateway+"/"+s.SessionId] {
				kept = append(kept, s)
			}
		}
		e.sessions = kept
	}
}

// expired removes the expired entries and returns those that were pushed
// from: their users must be looked up again so that any new session of
// theirs is resynced.
func (c *routeCache) expired() (users []string, pushedFrom map[string]*routeEntry) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	pushedFrom = map[string]*routeEntry{}
	for u, e := range c.users {
		if now.Sub(e.read) < c.ttl {
			continue
		}
		if len(e.pushed) > 0 {
			users = append(users, u)
			pushedFrom[u] = e
			continue
		}
		delete(c.users, u)
	}
	return users, pushedFrom
}

// lookup reads the live sessions of users from presence, in chunks, a few
// at a time.
func (t *Task) lookup(ctx context.Context, users []string) ([]*gochatv1.Session, error) {
	chunks := (len(users) + maxUsersPerLookup - 1) / maxUsersPerLookup
	parts := make([][]*gochatv1.Session, chunks)
	errs := make([]error, chunks)
	sem := make(chan struct{}, lookupParallel)
	var wg sync.WaitGroup
	for i := 0; i < chunks; i++ {
		batch := users[i*maxUsersPerLookup : min((i+1)*maxUsersPerLookup, len(users))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			pr, err := t.repo.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: batch})
			if err != nil {
				errs[i] = fmt.Errorf("get presence: %w", err)
				return
			}
			parts[i] = pr.Sessions
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // one error, as it came: its code says whether to retry forever
		}
	}
	var out []*gochatv1.Session
	for _, p := range parts {
		out = append(out, p...)
	}
	return out, nil
}

// refreshRoutes looks up, every TTL, the users whose entries expired after
// something was pushed from them, and resyncs their new sessions: a user
// who came online just after a group's last message still gets it.
func (t *Task) refreshRoutes(ctx context.Context) {
	tick := time.NewTicker(t.routes.ttl)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		users, _ := t.routes.expired()
		if len(users) == 0 {
			continue
		}
		read := t.routes.now()
		live, err := t.lookup(ctx, users)
		if err != nil {
			// The entries stay expired and pushed from: the next tick tries again.
			t.log.Warn("refresh routes of large conversations", "users", len(users), "err", err)
			continue
		}
		routeLookups.WithLabelValues("refresh").Add(float64(len(users)))
		sessions := map[string][]*gochatv1.Session{}
		for _, s := range live {
			sessions[s.UserId] = append(sessions[s.UserId], s)
		}
		if resync := t.routes.store(read, users, sessions, nil); len(resync) > 0 {
			t.pushResyncs(ctx, resync)
		}
	}
}

// pushResyncs sends the resyncs owed to sessions the cache did not hold.
func (t *Task) pushResyncs(ctx context.Context, perGateway map[string][]delivery) {
	n := 0
	for _, ds := range perGateway {
		for _, d := range ds {
			n += len(d.d.SessionIds)
		}
	}
	if _, err := t.pushAll(ctx, perGateway); err != nil {
		t.log.Warn("resync sessions that came online in a large conversation", "sessions", n, "err", err)
		return
	}
	resyncs.Add(float64(n))
}
