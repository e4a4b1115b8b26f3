package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/clientapi"
)

// keepAlive renews the gateway's liveness in im-repo every third of
// --liveness-ttl until ctx ends. Session presence lives far longer (it is
// renewed in big batches); this small entry is what tells im-task within a
// few seconds that a gateway is dead or frozen, so that it stops dialling it
// and counts its users offline. A frozen process renews nothing, which is
// the point: no renewal means not alive.
//
// It is also how the gateway learns that Redis lost its data: a renewal
// that finds its entry gone after an earlier one found it means presence
// is gone too. Then the gateway registers its sessions again at once and
// tells them to resync (recoverPresence), instead of waiting up to a third
// of --presence-ttl while every push to them is missed.
func (g *Gateway) keepAlive(ctx context.Context) {
	ttl := g.cfg.LivenessTTL
	if ttl <= 0 {
		return
	}
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	var (
		wg         sync.WaitGroup
		recovering atomic.Bool
		lastKnown  time.Time // the last renewal that found the entry
	)
	defer wg.Wait()
	for {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, ttl/3)
		r, err := g.repo.GatewayAlive(cctx, &gochatv1.GatewayAliveRequest{Gateway: g.cfg.Advertise, TtlMs: ttl.Milliseconds()})
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				g.log.Warn("renew gateway liveness (im-task counts this gateway dead once it lapses)", "ttl", ttl, "err", err)
			}
		case r.Known:
			lastKnown = start
		case !lastKnown.IsZero():
			// Pushes may have been missed since the last renewal that found
			// the entry (and a little before: im-task may lag).
			since := lastKnown.Add(-presenceLossSlack)
			lastKnown = start
			g.log.Warn("presence was lost (Redis lost its data): registering every session again and asking for resyncs", "since", since)
			if recovering.CompareAndSwap(false, true) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer recovering.Store(false)
					g.recoverPresence(ctx, since)
				}()
			}
		default:
			lastKnown = start // the first renewal
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

const (
	// presenceLossSlack widens the window of conversations told to resync
	// after a presence loss, for pushes im-task made late.
	presenceLossSlack = 30 * time.Second
	// resyncLookups is how many users' conversation lists are read at
	// once during a recovery.
	resyncLookups = 4
)

// recoverPresence registers every session again, then sends each session a
// resync for every conversation of its user active since since: the pushes
// of that window may have found no session to reach.
func (g *Gateway) recoverPresence(ctx context.Context, since time.Time) {
	g.presence.renewAll(ctx)
	byUser := map[string][]*session{}
	g.hub.each(func(s *session) { byUser[s.userID] = append(byUser[s.userID], s) })
	sem := make(chan struct{}, resyncLookups)
	var wg sync.WaitGroup
	for user, sessions := range byUser {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, g.cfg.CallTimeout)
			r, err := g.logic.ListConversations(cctx, &gochatv1.ListConversationsRequest{UserId: user, Limit: int32(g.cfg.MaxPage)})
			cancel()
			if err != nil {
				g.log.Warn("list conversations to resync after a presence loss (the user's clients catch up on their next sync)", "user_id", user, "err", err)
				return
			}
			for _, c := range r.Conversations {
				if c.LastActivityMs < since.UnixMilli() {
					continue
				}
				frame := clientapi.Frame(clientapi.TypeResync, clientapi.ResyncData{ConversationID: c.Id})
				for _, s := range sessions {
					s.enqueue(frame)
					g.metrics.presenceResyncs.Inc()
				}
			}
		}()
	}
	wg.Wait()
}
