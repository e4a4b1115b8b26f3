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

// seenTTL is how long a user's last-seen time is kept after their last session.
const seenTTL = 90 * 24 * time.Hour

func (p *Presence) seenKey(userID string) string { return p.prefix + "seen:" + userID }

// Register adds or renews sessions for ttl, in one transaction, and returns
// the users who had no live session before: they just came online. Every
// renewal also records the user as seen now, so last-seen stays right within
// a renewal period even when a gateway dies without unregistering.
func (p *Presence) Register(ctx context.Context, sessions []*gochatv1.Session, ttl time.Duration) ([]string, error) {
	now := p.now().UnixMilli()
	exp := float64(now + ttl.Milliseconds())
	pipe := p.rdb.TxPipeline()
	var users []string
	before := map[string]*redis.IntCmd{}
	for _, s := range sessions {
		k := p.key(s.UserId)
		if before[s.UserId] == nil {
			users = append(users, s.UserId)
			pipe.ZRemRangeByScore(ctx, k, "-inf", strconv.FormatInt(now, 10))
			before[s.UserId] = pipe.ZCard(ctx, k)
		}
	}
	for _, s := range sessions {
		pipe.ZAdd(ctx, p.key(s.UserId), redis.Z{Score: exp, Member: member(s)})
	}
	for _, u := range users {
		pipe.PExpire(ctx, p.key(u), ttl)
		pipe.Set(ctx, p.seenKey(u), now, seenTTL)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("register %d sessions: %w", len(sessions), err)
	}
	var came []string
	for _, u := range users {
		if before[u].Val() == 0 {
			came = append(came, u)
		}
	}
	return came, nil
}

// Unregister removes sessions, in one transaction, and returns the users who
// lost a session and are left with none live: they just went offline, and
// are recorded as seen now.
func (p *Presence) Unregister(ctx context.Context, sessions []*gochatv1.Session) ([]string, error) {
	now := p.now().UnixMilli()
	pipe := p.rdb.TxPipeline()
	var users []string
	left := map[string]*redis.IntCmd{}
	removed := make([]*redis.IntCmd, len(sessions))
	for i, s := range sessions {
		removed[i] = pipe.ZRem(ctx, p.key(s.UserId), member(s))
	}
	for _, s := range sessions {
		if left[s.UserId] == nil {
			users = append(users, s.UserId)
			left[s.UserId] = pipe.ZCount(ctx, p.key(s.UserId), "("+strconv.FormatInt(now, 10), "+inf")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("unregister %d sessions: %w", len(sessions), err)
	}
	// Only a user who lost a session here went offline here: removing a
	// session that was already gone changes nothing.
	lost := map[string]bool{}
	for i, s := range sessions {
		if removed[i].Val() > 0 {
			lost[s.UserId] = true
		}
	}
	var gone []string
	seen := p.rdb.Pipeline()
	for _, u := range users {
		if lost[u] && left[u].Val() == 0 {
			gone = append(gone, u)
			seen.Set(ctx, p.seenKey(u), now, seenTTL)
		}
	}
	if len(gone) > 0 {
		if _, err := seen.Exec(ctx); err != nil {
			return gone, fmt.Errorf("record last seen of %d users: %w", len(gone), err)
		}
	}
	return gone, nil
}

// Status says, for each user in order, whether they have a live session and
// when they were last seen (0: never), in one pipeline.
func (p *Presence) Status(ctx context.Context, userIDs []string) ([]*gochatv1.UserPresence, error) {
	now := "(" + strconv.FormatInt(p.now().UnixMilli(), 10)
	pipe := p.rdb.Pipeline()
	live := make([]*redis.IntCmd, len(userIDs))
	seen := make([]*redis.StringCmd, len(userIDs))
	for i, u := range userIDs {
		live[i] = pipe.ZCount(ctx, p.key(u), now, "+inf")
		seen[i] = pipe.Get(ctx, p.seenKey(u))
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("presence status of %d users: %w", len(userIDs), err)
	}
	out := make([]*gochatv1.UserPresence, len(userIDs))
	for i, u := range userIDs {
		ms, _ := strconv.ParseInt(seen[i].Val(), 10, 64)
		out[i] = &gochatv1.UserPresence{UserId: u, Online: live[i].Val() > 0, LastSeenMs: ms}
	}
	return out, nil
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

func (p *Presence) gatewaysKey() string { return p.prefix + "gateways" }

// gatewayForget is how long a lapsed gateway stays known as dead; after it
// (long after its sessions have expired) it is dropped from the set.
const gatewayForget = time.Hour

// GatewayAlive records that a gateway is alive for ttl (0: gone now), in the
// sorted set <prefix>gateways, scored by the expiry (Unix ms).
// It reports whether the gateway was recorded before (false: a first call,
// or Redis lost its data).
func (p *Presence) GatewayAlive(ctx context.Context, gateway string, ttl time.Duration) (bool, error) {
	now := p.now()
	pipe := p.rdb.TxPipeline()
	pipe.ZRemRangeByScore(ctx, p.gatewaysKey(), "-inf", strconv.FormatInt(now.Add(-gatewayForget).UnixMilli(), 10))
	added := pipe.ZAdd(ctx, p.gatewaysKey(), redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: gateway})
	if _, err := pipe.Exec(ctx); err != nil {
		return false, fmt.Errorf("renew liveness of gateway %s: %w", gateway, err)
	}
	return added.Val() == 0, nil
}

// DeadGateways returns which of the gateways have let their liveness lapse.
// A gateway that never recorded any (one from before liveness existed, or
// after Redis lost its data) is not dead: its sessions' own TTL still rules.
func (p *Presence) DeadGateways(ctx context.Context, gateways []string) (map[string]bool, error) {
	dead := map[string]bool{}
	if len(gateways) == 0 {
		return dead, nil
	}
	scores, err := p.rdb.ZMScore(ctx, p.gatewaysKey(), gateways...).Result()
	if err != nil {
		return nil, fmt.Errorf("look up gateway liveness: %w", err)
	}
	now := float64(p.now().UnixMilli())
	for i, gw := range gateways {
		// ZMSCORE answers 0 for a member it does not hold; a real expiry
		// is a Unix time in ms, never 0.
		if scores[i] != 0 && scores[i] <= now {
			dead[gw] = true
		}
	}
	return dead, nil
}
