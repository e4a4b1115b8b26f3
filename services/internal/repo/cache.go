package repo

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// memberCache keeps conversation member lists in Redis for fan-out. MySQL is
// the truth: a lost or stale entry costs one query, and every membership
// change deletes the entry after its transaction commits.
type memberCache struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	log    *slog.Logger
}

func (c *memberCache) key(convID string) string { return c.prefix + "members:" + convID }

// get returns the cached lists and the ids it did not find.
func (c *memberCache) get(ctx context.Context, convIDs []string) (map[string][]*gochatv1.Member, []string) {
	keys := make([]string, len(convIDs))
	for i, id := range convIDs {
		keys[i] = c.key(id)
	}
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		c.log.Warn("member cache read failed, using the database", "err", err)
		return map[string][]*gochatv1.Member{}, convIDs
	}
	hits := make(map[string][]*gochatv1.Member, len(convIDs))
	var misses []string
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			misses = append(misses, convIDs[i])
			continue
		}
		var list gochatv1.MemberList
		if err := proto.Unmarshal([]byte(s), &list); err != nil {
			misses = append(misses, convIDs[i])
			continue
		}
		hits[convIDs[i]] = list.Members
	}
	return hits, misses
}

func (c *memberCache) put(ctx context.Context, lists map[string][]*gochatv1.Member) {
	pipe := c.rdb.Pipeline()
	for id, members := range lists {
		b, err := proto.Marshal(&gochatv1.MemberList{ConversationId: id, Members: members})
		if err != nil {
			continue
		}
		pipe.Set(ctx, c.key(id), b, c.ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		c.log.Warn("member cache write failed", "err", err)
	}
}

func (c *memberCache) invalidate(ctx context.Context, convID string) error {
	if err := c.rdb.Del(ctx, c.key(convID)).Err(); err != nil {
		return fmt.Errorf("invalidate member cache of %s: %w", convID, err)
	}
	return nil
}
