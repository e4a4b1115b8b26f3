package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/ids"
	tc "github.com/gochat/gochat/services/testcluster"
)

// uniqueSeqs collects (conversation_id, seq) pairs: delivery is counted by
// what arrived, never by how many frames did.
type uniqueSeqs map[string]map[int64]bool

func (u uniqueSeqs) add(m clientapi.Message) {
	if u[m.ConversationID] == nil {
		u[m.ConversationID] = map[int64]bool{}
	}
	u[m.ConversationID][m.Seq] = true
}

func (u uniqueSeqs) count() int {
	n := 0
	for _, s := range u {
		n += len(s)
	}
	return n
}

// fillGroup adds members to a group straight in the database (registering
// thousands of users through argon2id would take minutes), and drops the
// group's cached member list so that fan-out reads them.
func fillGroup(t *testing.T, c *tc.Cluster, convID string, n int) {
	t.Helper()
	db, err := sql.Open("mysql", c.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UnixMilli()
	for start := 0; start < n; start += 500 {
		var rows []string
		var args []any
		for i := start; i < min(start+500, n); i++ {
			rows = append(rows, "(?, ?, 0, 0, ?)")
			args = append(args, convID, ids.New(), now)
		}
		if _, err := db.Exec("INSERT INTO members (conversation_id, user_id, role, read_seq, joined_at_ms) VALUES "+strings.Join(rows, ","), args...); err != nil {
			t.Fatalf("add members: %v", err)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: c.RedisAddr})
	defer rdb.Close()
	if err := rdb.Del(context.Background(), c.RedisPrefix+"members:"+convID).Err(); err != nil {
		t.Fatal(err)
	}
}

// Six busy 1,000-member groups in one poll ask presence about 6,000 users,
// over im-repo's 5,000-id limit: im-task used to retry that batch forever
// (and again after every restart). Now every request is chunked and the
// online members get every message.
func TestSixThousandMemberFanOut(t *testing.T) {
	c := tc.StartCluster(t, tc.Options{})
	const groups = 6
	type group struct {
		owner, reader *tc.API
		ws            *tc.WS
		id            string
	}
	var gs []group
	for i := 0; i < groups; i++ {
		owner, reader := register(t, c, "own"), register(t, c, "rd")
		w := tc.DialWS(t, c.WSURL(), reader.Token)
		var conv clientapi.Conversation
		if st := owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": fmt.Sprintf("big%d", i), "member_ids": []string{reader.User.ID}}, &conv); st != 201 {
			t.Fatalf("create group: %d", st)
		}
		w.Next(t, "event", wait) // group_created: im-task runs
		fillGroup(t, c, conv.ID, 998)
		gs = append(gs, group{owner: owner, reader: reader, ws: w, id: conv.ID})
	}
	// With im-task stopped, the six messages wait in Kafka and come back in one poll.
	c.Task.Stop()
	for i, g := range gs {
		var m clientapi.Message
		if st := g.owner.Must(t, http.MethodPost, "/v1/conversations/"+g.id+"/messages", map[string]any{"client_msg_id": fmt.Sprintf("big-%d", i), "content": "to a thousand"}, &m); st != 201 {
			t.Fatalf("send: %d", st)
		}
	}
	c.Task.Restart()
	got := uniqueSeqs{}
	for _, g := range gs {
		for _, m := range g.ws.Messages(t, 1, 30*time.Second) {
			got.add(m)
		}
	}
	if got.count() != groups {
		t.Fatalf("%d unique (conversation, seq) pairs delivered, want %d", got.count(), groups)
	}
}
