package gateway

import (
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
