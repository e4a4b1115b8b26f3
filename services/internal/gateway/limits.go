package gateway

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// userLimits rate-limits HTTP sends per user, with the same rate and burst as
// a WebSocket connection has: HTTP must not be the way around the limit.
// Idle entries are forgotten, so the map holds only recently active users.
type userLimits struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	users map[string]*userLimit
}

type userLimit struct {
	lim  *rate.Limiter
	last time.Time
}

func newUserLimits(r float64, burst int) *userLimits {
	return &userLimits{rate: rate.Limit(r), burst: burst, users: map[string]*userLimit{}}
}

func (u *userLimits) allow(userID string, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	e, ok := u.users[userID]
	if !ok {
		e = &userLimit{lim: rate.NewLimiter(u.rate, u.burst)}
		u.users[userID] = e
	}
	e.last = now
	return e.lim.AllowN(now, 1)
}

// forget drops users idle since before cutoff; a refilled bucket is the same as a new one.
func (u *userLimits) forget(cutoff time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for id, e := range u.users {
		if e.last.Before(cutoff) {
			delete(u.users, id)
		}
	}
}

// sessionCounts caps the sessions one user holds on this gateway: a client
// that opens connections in a loop takes its own slots, not the gateway's.
type sessionCounts struct {
	max   int
	mu    sync.Mutex
	users map[string]int
}

func newSessionCounts(max int) *sessionCounts {
	return &sessionCounts{max: max, users: map[string]int{}}
}

// reserve takes a slot for the user, or reports that all are taken.
func (c *sessionCounts) reserve(userID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users[userID] >= c.max {
		return false
	}
	c.users[userID]++
	return true
}

func (c *sessionCounts) release(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users[userID] <= 1 {
		delete(c.users, userID)
		return
	}
	c.users[userID]--
}

// pendingConns bounds connections that have not finished their handshake,
// per source address and in total, so that opening sockets and sending
// nothing cannot use up the gateway's descriptors and memory.
type pendingConns struct {
	perAddr, total int
	mu             sync.Mutex
	byAddr         map[netip.Addr]int
	n              int
}

func newPendingConns(perAddr, total int) *pendingConns {
	return &pendingConns{perAddr: perAddr, total: total, byAddr: map[netip.Addr]int{}}
}

// peerAddr is a connection's peer address without its port. It is read,
// not formatted: formatting it was 3 % of the gateway's CPU per connect.
func peerAddr(conn net.Conn) netip.Addr {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{} // not an IP peer: all such share one allowance
}

func (p *pendingConns) acquire(addr netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n >= p.total || p.byAddr[addr] >= p.perAddr {
		return false
	}
	p.n++
	p.byAddr[addr]++
	return true
}

func (p *pendingConns) release(addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n--
	if p.byAddr[addr] <= 1 {
		delete(p.byAddr, addr)
		return
	}
	p.byAddr[addr]--
}

// frameBucket is one session's token bucket of frames. It lives inline in
// the session, 16 bytes, where a rate.Limiter was 80 more bytes on the heap
// for every session that ever sent a frame, idle ones included; only the
// session's reader touches it (under readMu).
type frameBucket struct {
	tokens float64
	last   time.Duration // since monoEpoch; 0: the bucket has not started (full)
}

// monoEpoch makes time.Since monotonic and small enough to keep in a field.
var monoEpoch = time.Now()

// allow takes a token if there is one, refilling at perSecond up to burst.
func (b *frameBucket) allow(now time.Duration, perSecond float64, burst int) bool {
	if b.last == 0 {
		b.tokens = float64(burst)
	} else if elapsed := now - b.last; elapsed > 0 {
		b.tokens = min(float64(burst), b.tokens+elapsed.Seconds()*perSecond)
	}
	b.last = max(now, 1)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
