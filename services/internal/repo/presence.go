package repo

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// Presence records which gateway holds which session, in Redis.
//
// Each user has one sorted set, <prefix>presence:<user_id>, whose members are
// "<session_id>@<gateway address>" scored by the session's expiry (Unix ms).
// Gateways renew their sessions in batches; a session whose gateway died
// simply expires. Lookups read only unexpired members, and every renewal
// trims expired ones, so the set stays small without a sweeper.
type Presence struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
}

// NewPresence returns presence on the given Redis with a key prefix.
func NewPresence(rdb redis.UniversalClient, prefix string) *Presence {
	return &Presence{rdb: rdb, prefix: prefix, now: time.Now}
}

func (p *Presence) key(userID string) string { return p.prefix + "presence:" + userID }

func member(s *gochatv1.Session) string { return s.SessionId + "@" + s.Gateway }

// Register adds or renews sessions for ttl, in one pipeline.
func (p *Presence) Register(ctx context.Context, sessions []*gochatv1.Session, ttl time.Duration) error {
	now := p.now().UnixMilli()
	exp := float64(now + ttl.Milliseconds())
	pipe := p.rdb.Pipeline()
	seen := map[string]bool{}
	for _, s := range sessions {
		k := p.key(s.UserId)
		pipe.ZAdd(ctx, k, redis.Z{Score: exp, Member: member(s)})
		if !seen[k] {
			seen[k] = true
			pipe.ZRemRangeByScore(ctx, k, "-inf", strconv.FormatInt(now, 10))
			pipe.PExpire(ctx, k, ttl)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("register %d sessions: %w", len(sessions), err)
	}
	return nil
}

// Unregister removes sessions, in one pipeline.
func (p *Presence) Unregister(ctx context.Context, sessions []*gochatv1.Session) error {
	pipe := p.rdb.Pipeline()
	for _, s := range sessions {
		pipe.ZRem(ctx, p.key(s.UserId), member(s))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("unregister %d sessions: %w", len(sessions), err)
	}
	return nil
}

// Lookup returns the live sessions of the users, in one pipeline.
func (p *Presence) Lookup(ctx context.Context, userIDs []string) ([]*gochatv1.Session, error) {
	now := strconv.FormatInt(p.now().UnixMilli(), 10)
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(userIDs))
	for i, u := range userIDs {
		cmds[i] = pipe.ZRangeByScore(ctx, p.key(u), &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("look up presence of %d users: %w", len(userIDs), err)
	}
	var out []*gochatv1.Session
	for i, cmd := range cmds {
		for _, m := range cmd.Val() {
			sid, gw, ok := strings.Cut(m, "@")
			if !ok {
				continue
			}
			out = append(out, &gochatv1.Session{UserId: userIDs[i], SessionId: sid, Gateway: gw})
		}
	}
	return out, nil
}
