package repo

import (
	"context"
	"errors"
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
//
// Every session that comes or goes is also written to a change log: a
// counter, <prefix>presence-changes:gen, and a sorted set,
// <prefix>presence-changes, of the users changed, each scored by the
// counter's value at its latest change. The set keeps the
// maxPresenceChanges users changed last; <prefix>presence-changes:floor is
// the highest position trimmed away. A reader that keeps routes of many
// users (im-task) reads again only the users changed since its position
// instead of every user at every expiry. Renewals are not changes; a
// session that expires because its gateway died is not either (its pushes
// fail, and the reader's own expiry catches it).
type Presence struct {
	rdb        redis.UniversalClient
	prefix     string
	now        func() time.Time
	maxChanges int // the change log's bound
}

// NewPresence returns presence on the given Redis with a key prefix.
func NewPresence(rdb redis.UniversalClient, prefix string) *Presence {
	return &Presence{rdb: rdb, prefix: prefix, now: time.Now, maxChanges: maxPresenceChanges}
}

func (p *Presence) key(userID string) string { return p.prefix + "presence:" + userID }

func member(s *gochatv1.Session) string { return s.SessionId + "@" + s.Gateway }

// seenTTL is how long a user's last-seen time is kept after their last session.
const seenTTL = 90 * 24 * time.Hour

func (p *Presence) seenKey(userID string) string { return p.prefix + "seen:" + userID }

func (p *Presence) changesKey() string { return p.prefix + "presence-changes" }
func (p *Presence) genKey() string     { return p.prefix + "presence-changes:gen" }
func (p *Presence) floorKey() string   { return p.prefix + "presence-changes:floor" }

// maxPresenceChanges bounds the change log: the users changed in the last
// few seconds even in a reconnect storm of a large deployment. A reader
// further behind than that reads everything again.
const maxPresenceChanges = 100_000

// recordChanges appends users to the change log at a new position, trims
// the log to its bound (keeping the highest position trimmed, so that a
// reader behind it knows), and returns the position. One script, so that a
// position's users are all in the log before a reader can see it.
var recordChanges = redis.NewScript(`
local g = redis.call('INCR', KEYS[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[2], g, ARGV[i]) end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if over > 0 then
  local cut = redis.call('ZRANGE', KEYS[2], over - 1, over - 1, 'WITHSCORES')
  redis.call('SET', KEYS[3], cut[2])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return g
`)

// changed writes users whose sessions changed to the change log.
func (p *Presence) changed(ctx context.Context, users []string) error {
	if len(users) == 0 {
		return nil
	}
	args := make([]any, 0, len(users)+1)
	args = append(args, p.maxChanges)
	for _, u := range users {
		args = append(args, u)
	}
	if err := recordChanges.Run(ctx, p.rdb, []string{p.genKey(), p.changesKey(), p.floorKey()}, args...).Err(); err != nil {
		return fmt.Errorf("%w: %d users: %w", ErrChangeLog, len(users), err)
	}
	return nil
}

// ErrChangeLog is a change that happened but could not be written to the
// change log. The call's own change stands; a reader sees the user again
// only when it reads everyone (its entries' expiry).
var ErrChangeLog = errors.New("record presence changes")

// PresenceChanges is what the change log holds after a position.
type PresenceChanges struct {
	Changes []*gochatv1.PresenceChange // oldest first
	Gen     int64                      // the log's position now
	// Complete is false when the log cannot say everything that changed
	// after the position: more than the limit, trimmed past it, or lost
	// (Redis restarted without its data: the position is behind it).
	Complete bool
}

// Changes returns the users changed after position after, at most limit,
// read in one transaction.
func (p *Presence) Changes(ctx context.Context, after int64, limit int) (PresenceChanges, error) {
	pipe := p.rdb.TxPipeline()
	gen := pipe.Get(ctx, p.genKey())
	floor := pipe.Get(ctx, p.floorKey())
	rows := pipe.ZRangeByScoreWithScores(ctx, p.changesKey(), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(after, 10), Max: "+inf", Count: int64(limit) + 1})
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return PresenceChanges{}, fmt.Errorf("read presence changes: %w", err)
	}
	out := PresenceChanges{}
	out.Gen, _ = strconv.ParseInt(gen.Val(), 10, 64)
	trimmed, _ := strconv.ParseInt(floor.Val(), 10, 64)
	zs := rows.Val()
	out.Complete = after <= out.Gen && after >= trimmed && len(zs) <= limit
	if len(zs) > limit {
		zs = zs[:limit]
	}
	out.Changes = make([]*gochatv1.PresenceChange, len(zs))
	for i, z := range zs {
		u, _ := z.Member.(string)
		out.Changes[i] = &gochatv1.PresenceChange{UserId: u, Gen: int64(z.Score)}
	}
	return out, nil
}

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
	added := make([]*redis.IntCmd, len(sessions))
	for i, s := range sessions {
		added[i] = pipe.ZAdd(ctx, p.key(s.UserId), redis.Z{Score: exp, Member: member(s)})
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
	// A renewal adds nothing; a new session (or one renewed after it
	// expired) is a change.
	var changed []string
	marked := map[string]bool{}
	for i, s := range sessions {
		if added[i].Val() > 0 && !marked[s.UserId] {
			marked[s.UserId] = true
			changed = append(changed, s.UserId)
		}
	}
	return came, p.changed(ctx, changed)
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
	var gone, changed []string
	seen := p.rdb.Pipeline()
	for _, u := range users {
		if lost[u] {
			changed = append(changed, u)
		}
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
	return gone, p.changed(ctx, changed)
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

// Lookup returns the live sessions of the users, in one pipeline, and the
// change log's position read before them: a change at or before it is in
// what they say.
func (p *Presence) Lookup(ctx context.Context, userIDs []string) ([]*gochatv1.Session, int64, error) {
	now := strconv.FormatInt(p.now().UnixMilli(), 10)
	pipe := p.rdb.Pipeline()
	gen := pipe.Get(ctx, p.genKey())
	cmds := make([]*redis.StringSliceCmd, len(userIDs))
	for i, u := range userIDs {
		cmds[i] = pipe.ZRangeByScore(ctx, p.key(u), &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, 0, fmt.Errorf("look up presence of %d users: %w", len(userIDs), err)
	}
	g, _ := strconv.ParseInt(gen.Val(), 10, 64)
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
	return out, g, nil
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
