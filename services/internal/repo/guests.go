package repo

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var guestsExpired = promauto.NewCounter(prometheus.CounterOpts{
	Name: "gochat_repo_guests_expired_total", Help: "Unused guest accounts deleted after --guest-ttl.",
})

// unusedGuest is a guest who belongs to no conversation: they never
// chatted (or left everything), so deleting them orphans nothing.
const unusedGuest = "guest = ? AND NOT EXISTS (SELECT 1 FROM members AS m WHERE m.user_id = users.id)"

// ExpireGuests deletes up to limit unused guest accounts created before
// createdBeforeMs, oldest first, and returns how many it deleted.
func (s *Store) ExpireGuests(ctx context.Context, createdBeforeMs int64, limit int) (int, error) {
	var ids []string
	if err := s.db.WithContext(ctx).Model(&userRow{}).Where(unusedGuest+" AND created_at_ms < ?", true, createdBeforeMs).
		Order("created_at_ms").Limit(limit).Pluck("id", &ids).Error; err != nil {
		return 0, fmt.Errorf("find expired guests: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	// The conditions again: one of them may have joined a group meanwhile.
	res := s.db.WithContext(ctx).Where("id IN ? AND "+unusedGuest, ids, true).Delete(&userRow{})
	if res.Error != nil {
		return 0, fmt.Errorf("delete expired guests: %w", res.Error)
	}
	return int(res.RowsAffected), nil
}

// sweepGuests deletes expired unused guests every interval until ctx ends,
// in batches of batch, at most maxGuestBatches batches a round so that a
// big backlog is worked off over several rounds, never in one long burst.
func (s *Server) sweepGuests(ctx context.Context) {
	tick := time.NewTicker(s.guests.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		before := s.store.now().Add(-s.guests.ttl).UnixMilli()
		total := 0
		for i := 0; i < maxGuestBatches; i++ {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			n, err := s.store.ExpireGuests(cctx, before, s.guests.batch)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("expire unused guest accounts (tried again next round)", "err", err)
				}
				break
			}
			total += n
			guestsExpired.Add(float64(n))
			if n < s.guests.batch {
				break
			}
		}
		if total > 0 {
			s.log.Info("expired unused guest accounts", "count", total, "ttl", s.guests.ttl)
		}
	}
}

// maxGuestBatches bounds one sweep round.
const maxGuestBatches = 20

type guestExpiry struct {
	ttl      time.Duration // 0: guests never expire
	interval time.Duration
	batch    int
}
