package repo

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// memberCache keeps conversation member lists in Redis for fan-out. MySQL is
// the truth: each entry carries the conversation's member list version, and
// an entry whose version is not the database's is a miss. So a fill racing a
// membership change, or an invalidation that failed, can never serve a
// removed member; deleting entries on change only saves memory.
type memberCache struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	log    *slog.Logger
}

func (c *memberCache) key(convID string) string { return c.prefix + "members:" + convID }

// get returns the cached lists whose version matches want, and the ids it
// did not find (or found stale).
func (c *memberCache) get(ctx context.Context, convIDs []string, want map[string]int64) (map[string][]*gochatv1.Member, []string) {
	if len(convIDs) == 0 {
		return map[string][]*gochatv1.Member{}, nil
	}
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
		verStr, body, ok := strings.Cut(s, ":")
		ver, err := strconv.ParseInt(verStr, 10, 64)
		if !ok || err != nil || ver != want[convIDs[i]] {
			misses = append(misses, convIDs[i])
			continue
		}
		var list gochatv1.MemberList
		if err := proto.Unmarshal([]byte(body), &list); err != nil {
			misses = append(misses, convIDs[i])
			continue
		}
		hits[convIDs[i]] = list.Members
	}
	return hits, misses
}

// put caches lists read at the given versions (read before the lists).
func (c *memberCache) put(ctx context.Context, lists map[string][]*gochatv1.Member, versions map[string]int64) {
	pipe := c.rdb.Pipeline()
	for id, members := range lists {
		b, err := proto.Marshal(&gochatv1.MemberList{ConversationId: id, Members: members})
		if err != nil {
			continue
		}
		pipe.Set(ctx, c.key(id), strconv.FormatInt(versions[id], 10)+":"+string(b), c.ttl)
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
