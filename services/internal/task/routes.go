package task

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/clientapi"
)

var (
	routeLookups = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_task_route_lookups_total", Help: "Recipients routed for a large conversation, by where their sessions came from: the route cache (cache), presence read for a push (presence) or again after a change or ahead of expiry (refresh), or a conversation route (route).",
	}, []string{"source"})
	changeReads = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_task_presence_change_reads_total", Help: "Reads of im-repo's presence change log, by result: complete, incomplete (every cached user read again), or error (entries expire after --route-cache-ttl until it is read again).",
	}, []string{"result"})
)

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
	// changePoll is how often the presence change log is read: about how
	// late a session that comes online in a large group gets its resync.
	changePoll = 500 * time.Millisecond
	// maxChangesPerRead is the most changes read at once; more, and every
	// cached user is read again.
	maxChangesPerRead = 5000
	// changeMemory is how long a change is remembered for entries whose
	// lookup was in flight when it was read: longer than any lookup.
	changeMemory = time.Minute
	// maxRememberedChanges bounds the changes remembered; past it (a
	// reconnect storm) the log's read counts as incomplete.
	maxRememberedChanges = 100_000
	// changeReadTimeout bounds one read of the log: a hung im-repo must not
	// stop the refresher.
	changeReadTimeout = 2 * time.Second
)

// routeCache keeps the live sessions of the members of large
// conversations, so that a 10,000-member group does not cost a presence
// lookup per member per message.
//
// An entry is good until its user's sessions change. im-repo's presence
// change log names the users whose sessions came or went (GetPresenceChanges),
// read every changePoll; an entry whose user changed after its lookup is read
// again, and only those are. Each entry is also read again once it is maxAge
// old, which catches what the log does not say (a session that expired with
// its gateway). While the log cannot be read (an im-repo without it, Redis
// down), entries are good for ttl only, as before the log.
//
// A session that comes online after its user's entry was read misses the
// pushes made from that entry. So each entry remembers the conversations
// pushed from it; when it is read again (after a change, or at its age), every
// session the new read holds and the old did not is sent a resync for each of
// those conversations, and syncs from its last seq. No message is lost; such
// a session gets one about a changePoll late, or up to two TTLs late
// without the log.
type routeCache struct {
	ttl    time.Duration // an entry's life while the change log is not read
	maxAge time.Duration // and while it is
	now    func() time.Time

	mu sync.Mutex
	// The change log's reader's state: the position read up to, when it
	// was last read completely (zero: never), and the changes read in the
	// last changeMemory, by user: an entry filled by a lookup that was in
	// flight when a change was read is stale if it read an older position.
	// An entry read before staleBefore (a read of the log that could not
	// say everything) is stale too.
	cursor      int64
	feedAt      time.Time
	changed     map[string]seenChange
	staleBefore time.Time

	users map[string]*routeEntry
	// gen counts the changes of users: a conversation route is good only
	// while no entry it was made from has been replaced or trimmed.
	gen   uint64
	convs map[string]*convRoute
}

// convRoute is a large conversation's recipients, made from its members'
// entries: pushing a message to it costs a copy of its session lists, not
// a map lookup per member. It is used only while every entry it was made
// from is still the one in the cache (gen) and fresh (read), so it reaches
// exactly the sessions those entries would, and the entries, marked at its
// making, owe the same resyncs.
type convRoute struct {
	version    int64 // the member list's
	gen        uint64
	read       time.Time           // the oldest entry's read: the route expires with it
	perGateway map[string][]string // session ids by gateway
	sessions   []*gochatv1.Session // the same, with their users
	offline    []string            // members with no session
	members    int
	used       bool // since it was made: the refresher makes it again only then
}

// maxConvRoutes bounds the conversation routes kept; past it no more are
// made until some expire.
const maxConvRoutes = 1024

type routeEntry struct {
	read     time.Time // when the lookup that filled it was sent
	gen      int64     // the change log's position that lookup read before the sessions
	stale    bool      // its user changed after gen: read again before use
	sessions []*gochatv1.Session
	pushed   map[string]bool // conversations pushed from it since read
}

type seenChange struct {
	gen int64
	at  time.Time
}

func newRouteCache(ttl, maxAge time.Duration) *routeCache {
	return &routeCache{ttl: ttl, maxAge: max(maxAge, ttl), now: time.Now, users: map[string]*routeEntry{},
		convs: map[string]*convRoute{}, changed: map[string]seenChange{}}
}

// life is how long an entry is good for now: maxAge while the change log
// has been read within a TTL, ttl otherwise. Caller holds c.mu.
func (c *routeCache) life(now time.Time) time.Duration {
	if !c.feedAt.IsZero() && now.Sub(c.feedAt) < c.ttl {
		return c.maxAge
	}
	return c.ttl
}

// fresh reports whether an entry may be used now. Caller holds c.mu.
func (c *routeCache) fresh(e *routeEntry, now time.Time) bool {
	return e != nil && !e.stale && now.Sub(e.read) < c.life(now)
}

// changes applies a read of the change log. complete false means anything
// may have changed up to gen: every entry is stale. Entries of changed users
// that were never pushed from are dropped; the others are read again by the
// refresher (due), with their resyncs.
func (c *routeCache) changes(read time.Time, changes []*gochatv1.PresenceChange, gen int64, complete bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for u, ch := range c.changed {
		if now.Sub(ch.at) > changeMemory {
			delete(c.changed, u)
		}
	}
	marked := false
	mark := func(u string, e *routeEntry) {
		if len(e.pushed) == 0 {
			delete(c.users, u)
		} else {
			e.stale = true
		}
		marked = true
	}
	if complete && len(c.changed)+len(changes) > maxRememberedChanges {
		complete = false // too many to remember one by one: as if unknown
	}
	if complete {
		for _, ch := range changes {
			if ch.Gen > c.changed[ch.UserId].gen {
				c.changed[ch.UserId] = seenChange{gen: ch.Gen, at: now}
			}
			if e := c.users[ch.UserId]; e != nil && e.gen < ch.Gen {
				mark(ch.UserId, e)
			}
		}
	} else {
		// After a loss of Redis the log starts again from 0: positions
		// remembered from before it mean nothing. Whatever was read before
		// this read of the log, held now or stored by a lookup still in
		// flight, may be out of date.
		c.changed = map[string]seenChange{}
		c.staleBefore = read
		for u, e := range c.users {
			if e.read.Before(read) || e.gen < gen {
				mark(u, e)
			}
		}
	}
	if marked {
		c.gen++ // the routes made from them are no longer good
	}
	c.cursor, c.feedAt = gen, read
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
		if !c.fresh(e, now) {
			continue
		}
		if len(e.pushed)+len(convs[u]) > maxRouteConvs {
			e.read = time.Time{} // looked up now; resynced below by store
			c.gen++
			continue
		}
		for _, conv := range convs[u] {
			e.pushed[conv] = true
		}
		out[u] = e.sessions
	}
	return out
}

// store records fresh lookups of users (sent at read, having read the change
// log's position gen) and returns the resyncs owed to the sessions that the
// previous entries did not hold, for the conversations pushed from them.
// pushing[user] are the conversations about to be pushed from the new entry.
func (c *routeCache) store(read time.Time, gen int64, users []string, sessions map[string][]*gochatv1.Session, pushing map[string][]string) map[string][]delivery {
	if c == nil {
		return nil
	}
	resync := map[string]map[string][]string{} // gateway -> conversation -> sessions
	c.mu.Lock()
	replaced := false
	for _, u := range users {
		old := c.users[u]
		if old != nil && old.read.After(read) {
			continue // a later read is already there, with what was pushed from it
		}
		if old != nil && c.renew(u, old, read, gen, sessions[u], pushing[u]) {
			continue
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
		// A change read while this lookup was in flight, after the
		// position it read: what it found may already be out of date.
		e := &routeEntry{read: read, gen: gen, stale: c.outdated(u, read, gen), sessions: sessions[u], pushed: map[string]bool{}}
		for _, conv := range pushing[u] {
			e.pushed[conv] = true
		}
		// A user with no entry is in no route: only a replaced entry
		// makes the routes made from it no longer good.
		replaced = replaced || old != nil
		c.users[u] = e
	}
	if replaced {
		c.gen++
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

// renew updates an entry in place when a new read of its user finds the same
// sessions, so that the routes made from it stay good: a read at an
// entry's age, with nothing changed, must not send the next messages of
// every large group down the member-by-member path. The entry keeps its
// marks for the conversations that have a route (pushes along a route do
// not mark again); the others are settled, since there is no new session to
// resync. Too many marks, and it is replaced instead. Caller holds c.mu.
func (c *routeCache) renew(user string, e *routeEntry, read time.Time, gen int64, sessions []*gochatv1.Session, pushing []string) bool {
	if !sameSessions(e.sessions, sessions) {
		return false
	}
	kept := 0
	for conv := range e.pushed {
		if c.convs[conv] != nil {
			kept++
		}
	}
	if kept+len(pushing) > maxRouteConvs {
		return false
	}
	for conv := range e.pushed {
		if c.convs[conv] == nil {
			delete(e.pushed, conv)
		}
	}
	for _, conv := range pushing {
		e.pushed[conv] = true
	}
	e.read, e.gen = read, gen
	e.stale = c.outdated(user, read, gen)
	return true
}

// outdated reports whether a lookup of user sent at read, having read the
// log's position gen, may have missed a change already known: one read
// after that position, or an incomplete read of the log after it was sent.
// Caller holds c.mu.
func (c *routeCache) outdated(user string, read time.Time, gen int64) bool {
	return c.changed[user].gen > gen || read.Before(c.staleBefore)
}

// sameSessions reports whether two reads of a user found the same sessions
// (a user has a few: no map).
func sameSessions(a, b []*gochatv1.Session) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y *gochatv1.Session) bool { return x.SessionId == y.SessionId && x.Gateway == y.Gateway }) {
			return false
		}
	}
	return true
}

// forget drops sessions a gateway said it does not hold.
func (c *routeCache) forget(gone map[string]bool) {
	if c == nil || len(gone) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
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

// due removes the expired entries never pushed from, and the routes gone
// bad or stale, and returns what the refresher must read again: the users
// whose entries were pushed from and are stale, or past half their life, and
// the routes used since they were made (by conversation, with their member
// list's version). Entries past half their life are spread over the ticks
// of a quarter of it (at least maxUsersPerLookup a tick): the entries of a
// large group were all read at once, and reading them all again at once is
// a burst of presence reads that the messages of that moment wait behind.
func (c *routeCache) due() ([]string, map[string]int64) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	life := c.life(now)
	var users, aged []string
	for u, e := range c.users {
		age := now.Sub(e.read)
		switch {
		case len(e.pushed) > 0 && (e.stale || age >= life):
			users = append(users, u) // not to be used until read again
		case len(e.pushed) > 0 && age >= life/2:
			aged = append(aged, u)
		case e.stale || age >= life:
			delete(c.users, u) // never pushed from, so in no route
		}
	}
	ticks := max(1, int(life/4/changePoll))
	users = append(users, aged[:min(len(aged), max(maxUsersPerLookup, (len(aged)+ticks-1)/ticks))]...)
	routes := map[string]int64{}
	for conv, r := range c.convs {
		if r.gen != c.gen || now.Sub(r.read) >= life {
			delete(c.convs, conv)
		} else if r.used {
			// Kept meanwhile: the reads take a while, and messages go
			// along it until they replace its entries.
			routes[conv] = r.version
			r.used = false
		}
	}
	return users, routes
}

// route returns the route of conversation conv if it is still good for
// its member list at version, or nil.
func (c *routeCache) route(conv string, version int64) *convRoute {
	if c == nil {
		return nil
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.convs[conv]
	if r == nil || r.version != version || r.gen != c.gen || now.Sub(r.read) >= c.life(now) {
		return nil
	}
	r.used = true
	return r
}

// keepRoute makes the route of conversation conv (its member list at
// version) from its members' fresh entries, and marks them as pushed from
// for conv: pushes along the route are pushes from them, and a session they
// did not hold is owed a resync for conv when they are read again. No route
// is made if a member has no fresh entry (looked up exactly for this batch)
// or one that may not be pushed from for more conversations.
func (c *routeCache) keepRoute(conv string, version int64, members []string) {
	if c == nil {
		return
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.convs) >= maxConvRoutes && c.convs[conv] == nil {
		return
	}
	for _, u := range members {
		e := c.users[u]
		if !c.fresh(e, now) || (!e.pushed[conv] && len(e.pushed) >= maxRouteConvs) {
			return
		}
	}
	r := &convRoute{version: version, gen: c.gen, read: now, perGateway: map[string][]string{}, members: len(members)}
	for _, u := range members {
		e := c.users[u]
		e.pushed[conv] = true
		if e.read.Before(r.read) {
			r.read = e.read
		}
		if len(e.sessions) == 0 {
			r.offline = append(r.offline, u)
		}
		for _, s := range e.sessions {
			r.perGateway[s.Gateway] = append(r.perGateway[s.Gateway], s.SessionId)
		}
		r.sessions = append(r.sessions, e.sessions...)
	}
	c.convs[conv] = r
}

// deliver adds an item's pushes along the route, leaving out the session
// it came from. The route's lists are shared, never changed.
func (r *convRoute) deliver(perGateway map[string][]delivery, it item) map[string][]delivery {
	for gw, sids := range r.perGateway {
		if it.skipSess != "" {
			if i := slices.Index(sids, it.skipSess); i >= 0 {
				sids = slices.Delete(slices.Clone(sids), i, i+1)
			}
		}
		if len(sids) > 0 {
			perGateway[gw] = append(perGateway[gw], delivery{convID: it.convID, d: &gochatv1.Delivery{SessionIds: sids, Frame: it.frame}})
		}
	}
	return perGateway
}

// anyDown reports whether a gateway of the route is cooling down after a
// failed push: its sessions' users then count as offline, which only the
// member-by-member path works out.
func (t *Task) anyDown(r *convRoute) bool {
	for gw := range r.perGateway {
		if t.gateways.isDown(gw) {
			return true
		}
	}
	return false
}

// lookup reads the live sessions of users from presence, in chunks, a few
// at a time, and returns them with the oldest change log position the
// chunks read.
func (t *Task) lookup(ctx context.Context, users []string) ([]*gochatv1.Session, int64, error) {
	chunks := (len(users) + maxUsersPerLookup - 1) / maxUsersPerLookup
	parts := make([][]*gochatv1.Session, chunks)
	gens := make([]int64, chunks)
	errs := make([]error, chunks)
	sem := make(chan struct{}, lookupParallel)
	var wg sync.WaitGroup
	for i := 0; i < chunks; i++ {
		batch := users[i*maxUsersPerLookup : min((i+1)*maxUsersPerLookup, len(users))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			pr, err := t.repo.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: batch, SessionsOnly: true})
			if err != nil {
				errs[i] = fmt.Errorf("get presence: %w", err)
				return
			}
			parts[i], gens[i] = pr.Sessions, pr.ChangeGen
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, 0, err // one error, as it came: its code says whether to retry forever
		}
	}
	var out []*gochatv1.Session
	for _, p := range parts {
		out = append(out, p...)
	}
	if chunks == 0 {
		return out, 0, nil
	}
	return out, slices.Min(gens), nil
}

// The change log reader's state, logged when it changes.
const (
	changeLogUnread int32 = iota
	changeLogWorks
	changeLogFails
)

// readChanges reads the presence change log after the cache's position
// and applies it. An error leaves the cache's entries to expire by their
// TTL until a read succeeds.
func (t *Task) readChanges(ctx context.Context) {
	t.routes.mu.Lock()
	after := t.routes.cursor
	t.routes.mu.Unlock()
	read := t.routes.now()
	rctx, cancel := context.WithTimeout(ctx, changeReadTimeout)
	r, err := t.repo.GetPresenceChanges(rctx, &gochatv1.GetPresenceChangesRequest{AfterGen: after, Limit: maxChangesPerRead})
	cancel()
	if err != nil {
		changeReads.WithLabelValues("error").Inc()
		if ctx.Err() == nil && t.changeLog.Swap(changeLogFails) != changeLogFails {
			t.log.Warn("reading presence changes failed: routes of large groups expire by --route-cache-ttl until it works", "err", err)
		}
		return
	}
	if t.changeLog.Swap(changeLogWorks) != changeLogWorks {
		t.log.Info("reading presence changes: routes of large groups are read again when their users change", "max_age", t.routes.maxAge)
	}
	if r.Complete {
		changeReads.WithLabelValues("complete").Inc()
	} else {
		changeReads.WithLabelValues("incomplete").Inc()
	}
	t.routes.changes(read, r.Changes, r.Gen, r.Complete)
}

// refreshRoutes reads again, every half TTL, the users whose entries were
// pushed from before they expire, and resyncs their new sessions: a user
// who came online just after a group's last message still gets it. It then
// makes again the routes used since the last time, so that a busy large
// conversation is always pushed along a fresh route and no message waits
// for its members' presence to be read.
func (t *Task) refreshRoutes(ctx context.Context) {
	tick := time.NewTicker(min(changePoll, t.routes.ttl/2))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.readChanges(ctx)
		users, routes := t.routes.due()
		if len(users) > 0 {
			read := t.routes.now()
			live, gen, err := t.lookup(ctx, users)
			if err != nil {
				// The entries stay pushed from: the next tick tries again.
				t.log.Warn("refresh routes of large conversations", "users", len(users), "err", err)
				continue
			}
			routeLookups.WithLabelValues("refresh").Add(float64(len(users)))
			sessions := map[string][]*gochatv1.Session{}
			for _, s := range live {
				sessions[s.UserId] = append(sessions[s.UserId], s)
			}
			if resync := t.routes.store(read, gen, users, sessions, nil); len(resync) > 0 {
				t.pushResyncs(ctx, resync)
			}
		}
		for conv, version := range routes {
			if l := t.lists.at(conv, version); l != nil {
				ids := make([]string, len(l.Members))
				for i, m := range l.Members {
					ids[i] = m.UserId
				}
				t.routes.keepRoute(conv, version, ids)
			}
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

// maxHeldLists bounds the member lists held; past it one is dropped for each
// new one (and read again in full when next needed).
const maxHeldLists = 256

// memberLists holds the member lists of large conversations by version, so
// that GetMembers sends a 10,000-member list only when it changed.
type memberLists struct {
	mu    sync.Mutex
	lists map[string]*gochatv1.MemberList
}

func newMemberLists() *memberLists {
	return &memberLists{lists: map[string]*gochatv1.MemberList{}}
}

// known returns the lists held for convIDs.
func (m *memberLists) known(convIDs []string) map[string]*gochatv1.MemberList {
	out := map[string]*gochatv1.MemberList{}
	if m == nil {
		return out
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range convIDs {
		if l := m.lists[id]; l != nil {
			out[id] = l
		}
	}
	return out
}

// at returns the list held for conv if it is at version.
func (m *memberLists) at(conv string, version int64) *gochatv1.MemberList {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.lists[conv]; l != nil && l.Version == version {
		return l
	}
	return nil
}

// resolve fills in the lists answered unchanged from held (what known
// returned for the request) and holds the large ones answered in full.
func (m *memberLists) resolve(answered []*gochatv1.MemberList, held map[string]*gochatv1.MemberList) ([]*gochatv1.MemberList, error) {
	out := make([]*gochatv1.MemberList, len(answered))
	for i, l := range answered {
		if l.Unchanged {
			h := held[l.ConversationId]
			if h == nil || h.Version != l.Version {
				return nil, fmt.Errorf("get members: conversation %s answered unchanged at version %d, which is not held", l.ConversationId, l.Version)
			}
			out[i] = h
			continue
		}
		out[i] = l
	}
	if m == nil {
		return out, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range answered {
		if l.Unchanged {
			continue
		}
		if len(l.Members) < RouteCacheMinMembers {
			delete(m.lists, l.ConversationId)
			continue
		}
		if len(m.lists) >= maxHeldLists && m.lists[l.ConversationId] == nil {
			for id := range m.lists {
				delete(m.lists, id)
				break
			}
		}
		m.lists[l.ConversationId] = l
	}
	return out, nil
}
