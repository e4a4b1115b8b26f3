package gateway

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

const hubShards = 64

// hub is the set of sessions a gateway holds, sharded so that connects,
// disconnects and pushes on different sessions do not contend on one lock.
type hub struct {
	seed   maphash.Seed
	shards [hubShards]struct {
		mu       sync.RWMutex
		sessions map[string]*session
	}
	count atomic.Int64
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].sessions = map[string]*session{}
	}
	return h
}

func (h *hub) shard(id string) int { return int(maphash.String(h.seed, id) % hubShards) }

func (h *hub) add(s *session) {
	sh := &h.shards[h.shard(s.id)]
	sh.mu.Lock()
	sh.sessions[s.id] = s
	sh.mu.Unlock()
	h.count.Add(1)
}

func (h *hub) remove(s *session) {
	sh := &h.shards[h.shard(s.id)]
	sh.mu.Lock()
	if sh.sessions[s.id] == s {
		delete(sh.sessions, s.id)
		h.count.Add(-1)
	}
	sh.mu.Unlock()
}

func (h *hub) get(id string) *session {
	sh := &h.shards[h.shard(id)]
	sh.mu.RLock()
	s := sh.sessions[id]
	sh.mu.RUnlock()
	return s
}

// each calls fn for every session. It copies each shard before calling fn, so
// fn may close sessions (and so remove them from the hub).
func (h *hub) each(fn func(*session)) {
	for i := range h.shards {
		h.eachIn(i, fn)
	}
}

// eachIn calls fn for every session of shard i, as each does.
func (h *hub) eachIn(i int, fn func(*session)) {
	sh := &h.shards[i]
	sh.mu.RLock()
	list := make([]*session, 0, len(sh.sessions))
	for _, s := range sh.sessions {
		list = append(list, s)
	}
	sh.mu.RUnlock()
	for _, s := range list {
		fn(s)
	}
}
