package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

// registrar keeps this gateway's sessions in im-repo's presence. Registrations
// and removals are batched: whatever piles up while one call is in flight
// goes in the next, so 10,000 clients connecting at once cost a handful of
// calls. A new session waits for its registration before its hello, so that
// no message pushed after the hello can miss it. The same call tells which
// of the new sessions' users no longer exist (a removed account, a swept
// guest): their sessions are refused, as a user lookup at connect would.
type registrar struct {
	repo    gochatv1.RepoServiceClient
	gateway string
	ttl     time.Duration
	log     *slog.Logger
	hub     *hub
	// changed hears of users who came online or went offline.
	changed func([]string)
	// addCalls counts the calls that register new sessions.
	addCalls prometheus.Counter

	mu      sync.Mutex
	adds    []*gochatv1.Session
	waiters []chan error
	removes []*gochatv1.Session
	kick    chan struct{}
}

const presenceBatch = 2000

func newRegistrar(repo gochatv1.RepoServiceClient, gateway string, ttl time.Duration, h *hub, log *slog.Logger) *registrar {
	return &registrar{repo: repo, gateway: gateway, ttl: ttl, hub: h, log: log, kick: make(chan struct{}, 1)}
}

func (r *registrar) notify(users []string) {
	if r.changed != nil {
		r.changed(users)
	}
}

func (r *registrar) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// errUserGone refuses a session whose user no longer exists, with what a
// lookup of that user answers.
func errUserGone() error { return apierror.New(apierror.NotFound, "user not found") }

// register adds a session and waits until presence has it. It fails with
// errUserGone when the session's user does not exist.
func (r *registrar) register(ctx context.Context, s *session) error {
	done := make(chan error, 1)
	r.mu.Lock()
	r.adds = append(r.adds, &gochatv1.Session{UserId: s.userID, SessionId: s.id, Gateway: r.gateway})
	r.waiters = append(r.waiters, done)
	r.mu.Unlock()
	r.wake()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unregister removes a session soon, without waiting.
func (r *registrar) unregister(s *session) {
	r.mu.Lock()
	r.removes = append(r.removes, &gochatv1.Session{UserId: s.userID, SessionId: s.id, Gateway: r.gateway})
	r.mu.Unlock()
	r.wake()
}

// run flushes batches as they come and renews every session's TTL every
// third of the TTL, until ctx ends; then it removes what is left. The
// renewals go one hub shard at a time, spread over that third: renewing
// every session at once was a burst of presence writes (5 Redis commands a
// session, 50,000 for 10,000 sessions) that the messages of that moment
// waited behind.
func (r *registrar) run(ctx context.Context) {
	renew := time.NewTicker(r.ttl / 3 / hubShards)
	defer renew.Stop()
	next := 0
	for {
		select {
		case <-ctx.Done():
			r.finalFlush()
			return
		case <-r.kick:
			if ctx.Err() != nil {
				// Shutdown may wake us and cancel ctx at once: a flush under
				// the cancelled ctx would take the removals off the queue and
				// then fail, leaving the sessions in presence for their TTL.
				r.finalFlush()
				return
			}
			r.flush(ctx)
		case <-renew.C:
			r.renew(ctx, func(fn func(*session)) { r.hub.eachIn(next, fn) })
			next = (next + 1) % hubShards
		}
	}
}

// finalFlush removes what is left under a context of its own, bounded, since
// the gateway's context is already cancelled when it runs.
func (r *registrar) finalFlush() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.flush(ctx)
}

func (r *registrar) call(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return f(ctx)
}

func (r *registrar) flush(ctx context.Context) {
	for {
		r.mu.Lock()
		n := min(len(r.adds), presenceBatch)
		adds, waiters := r.adds[:n:n], r.waiters[:n:n]
		r.adds, r.waiters = r.adds[n:], r.waiters[n:]
		m := min(len(r.removes), presenceBatch)
		removes := r.removes[:m:m]
		r.removes = r.removes[m:]
		r.mu.Unlock()
		if n == 0 && m == 0 {
			return
		}
		if n > 0 {
			var unknown []string
			if r.addCalls != nil {
				r.addCalls.Inc()
			}
			err := r.call(ctx, func(ctx context.Context) error {
				resp, err := r.repo.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: adds, TtlMs: r.ttl.Milliseconds(), CheckUsers: true})
				if err == nil {
					r.notify(resp.CameOnline)
					unknown = resp.UnknownUsers
				}
				return err
			})
			if err != nil {
				r.log.Error("register sessions in presence", "count", n, "err", err)
			}
			gone := make(map[string]bool, len(unknown))
			for _, id := range unknown {
				gone[id] = true
			}
			for i, w := range waiters {
				if err == nil && gone[adds[i].UserId] {
					w <- errUserGone()
					continue
				}
				w <- err
			}
		}
		if m > 0 {
			err := r.call(ctx, func(ctx context.Context) error {
				resp, err := r.repo.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: removes})
				if err == nil {
					r.notify(resp.WentOffline)
				}
				return err
			})
			if err != nil && ctx.Err() != nil {
				// Stopping: put them back for the final flush, which has a
				// context of its own.
				r.mu.Lock()
				r.removes = append(removes, r.removes...)
				r.mu.Unlock()
				return
			}
			if err != nil {
				// They expire with their TTL anyway.
				r.log.Warn("unregister sessions from presence", "count", m, "err", err)
			}
		}
	}
}

// renewAll renews every session's TTL at once (after Redis lost presence).
func (r *registrar) renewAll(ctx context.Context) { r.renew(ctx, r.hub.each) }

// renew renews the TTL of the sessions each visits, in batches.
func (r *registrar) renew(ctx context.Context, each func(func(*session))) {
	var batch []*gochatv1.Session
	send := func() {
		if len(batch) == 0 {
			return
		}
		err := r.call(ctx, func(ctx context.Context) error {
			resp, err := r.repo.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: batch, TtlMs: r.ttl.Milliseconds()})
			if err == nil {
				r.notify(resp.CameOnline) // their presence had expired
			}
			return err
		})
		if err != nil {
			r.log.Error("renew sessions in presence", "count", len(batch), "err", err)
		}
		batch = batch[:0]
	}
	each(func(s *session) {
		batch = append(batch, &gochatv1.Session{UserId: s.userID, SessionId: s.id, Gateway: r.gateway})
		if len(batch) == presenceBatch {
			send()
		}
	})
	send()
}
