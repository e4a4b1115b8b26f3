package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestFaults breaks real processes under two gateways, two im-logic and two
// im-task replicas, with clients spread over the gateways, on a Redis and a
// MariaDB of the test's own (the shared ones are never flushed or stopped).
// Delivery is counted by unique (conversation_id, seq).
func TestFaults(t *testing.T) {
	_, redisAddr := tc.OwnRedis(t)
	mysqlProc, mysqlDSN := tc.OwnMariaDB(t)
	c := tc.StartCluster(t, tc.Options{
		Replicas: 2, RedisAddr: redisAddr, MySQLServerDSN: mysqlDSN,
		GatewayFlags: []string{"--liveness-ttl=3s", "--max-user-sessions=1000", "--send-rate=1000", "--send-burst=1000"},
		TaskEnv:      []string{"GOCHAT_PUSH_TIMEOUT=2s"},
	})
	ws1, ws2 := c.WSURL(), "ws://"+c.MoreHTTP[0]+"/v1/ws"
	t.Run("Redis FLUSHALL with live sessions", func(t *testing.T) { testFlushAll(t, c, ws1, ws2) })
	t.Run("MariaDB stopped and restarted", func(t *testing.T) { testDatabaseRestart(t, c, mysqlProc, ws1, ws2) })
	t.Run("200 x 4 KiB escaped-character sync", func(t *testing.T) { testBigEscapedSync(t, c, ws1, ws2) })
	t.Run("600 half-frame connections while a healthy client pings", func(t *testing.T) { testHalfFrames(t, c, ws1) })
	t.Run("im-task kill -9 while messages flow", func(t *testing.T) { testTaskCrash(t, c, ws1, ws2) })
}

// pair is a direct conversation between a sender on gateway 1 and a
// receiver on gateway 2.
func pair(t *testing.T, c *tc.Cluster, ws1, ws2, name string) (*tc.WS, *tc.API, *tc.WS, string) {
	t.Helper()
	a, b := register(t, c, name+"a"), register(t, c, name+"b")
	conv := direct(t, a, b)
	return tc.DialWS(t, ws1, a.Token), b, tc.DialWS(t, ws2, b.Token), conv.ID
}

// collect gathers what w holds for conv: pushed messages, and the answers of
// the syncs it makes whenever the server asks for a resync.
func collect(t *testing.T, w *tc.WS, conv string, got uniqueSeqs) {
	t.Helper()
	for _, f := range w.Drain("message") {
		var m clientapi.Message
		f.Decode(t, &m)
		if m.ConversationID == conv {
			got.add(m)
		}
	}
	for _, f := range w.Drain("resync") {
		var r clientapi.ResyncData
		f.Decode(t, &r)
		if r.ConversationID == conv {
			syncAll(t, w, conv, got)
		}
	}
}

// syncAll syncs conv from the last seq got holds without a gap before it
// (as a client does: a pushed seq past a gap does not move its pointer)
// until has_more is false.
func syncAll(t *testing.T, w *tc.WS, conv string, got uniqueSeqs) {
	t.Helper()
	after := int64(0)
	for got[conv][after+1] {
		after++
	}
	for {
		if err := w.Send("sync", map[string]any{"conversation_id": conv, "after_seq": after}); err != nil {
			t.Fatal(err)
		}
		var r clientapi.SyncResult
		w.Next(t, "sync", wait).Decode(t, &r)
		for _, m := range r.Messages {
			got.add(m)
			after = max(after, m.Seq)
		}
		if !r.HasMore {
			return
		}
	}
}

// waitAll waits until got holds every seq in want for conv, collecting
// pushes and answering resyncs.
func waitAll(t *testing.T, w *tc.WS, conv string, want map[int64]bool, got uniqueSeqs, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		collect(t, w, conv, got)
		missing := 0
		for seq := range want {
			if !got[conv][seq] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acked seqs never reached the client (pushed or resynced)", missing, len(want))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testFlushAll: Redis loses everything (presence included) while clients
// are connected. The gateways notice within a liveness renewal, register
// their sessions again and send resync for the conversations active since;
// every acked message reaches the receiver, pushed or synced.
func testFlushAll(t *testing.T, c *tc.Cluster, ws1, ws2 string) {
	wa, _, wb, conv := pair(t, c, ws1, ws2, "fl")
	want := map[int64]bool{}
	got := uniqueSeqs{}
	ack := send(t, wa, map[string]any{"client_msg_id": "f-warm", "conversation_id": conv, "content": "before"})
	want[ack.Message.Seq] = true
	waitAll(t, wb, conv, want, got, wait) // positive control: pushes work

	rdb := redis.NewClient(&redis.Options{Addr: c.RedisAddr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := rdb.FlushAll(ctx).Err()
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		ack := send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("f", i), "conversation_id": conv, "content": fmt.Sprint("after ", i)})
		want[ack.Message.Seq] = true
		time.Sleep(100 * time.Millisecond)
	}
	waitAll(t, wb, conv, want, got, 30*time.Second)
	// And pushes flow again (not only syncs): a message sent now is pushed.
	collect(t, wb, conv, got)
	last := send(t, wa, map[string]any{"client_msg_id": "f-last", "conversation_id": conv, "content": "pushed"})
	if m := wb.Messages(t, 1, wait)[0]; m.Seq != last.Message.Seq {
		t.Fatalf("pushed seq %d, want %d", m.Seq, last.Message.Seq)
	}
}

// sendResult sends and returns the ack, or the error frame's code.
func sendResult(t *testing.T, w *tc.WS, data map[string]any) (*clientapi.Ack, string) {
	t.Helper()
	if err := w.Send("send", data); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if f, ok := w.Wait("ack", 100*time.Millisecond); ok {
			var a clientapi.Ack
			f.Decode(t, &a)
			if a.ClientMsgID == data["client_msg_id"] {
				return &a, ""
			}
		}
		if f, ok := w.Wait("error", 100*time.Millisecond); ok {
			var e clientapi.ErrorData
			f.Decode(t, &e)
			if e.ClientMsgID == data["client_msg_id"] {
				return nil, e.Code
			}
		}
	}
	t.Fatalf("no answer to send %v within 30s", data["client_msg_id"])
	return nil, ""
}

// testDatabaseRestart: with MariaDB stopped, sends fail with unavailable
// (and are not acked); once it is back they resume, and every acked message
// is stored and reaches the receiver.
func testDatabaseRestart(t *testing.T, c *tc.Cluster, db *tc.Process, ws1, ws2 string) {
	wa, b, wb, conv := pair(t, c, ws1, ws2, "db")
	want := map[int64]bool{}
	for i := 0; i < 5; i++ {
		ack := send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("up", i), "conversation_id": conv, "content": "up"})
		want[ack.Message.Seq] = true
	}
	db.Stop()
	for i := 0; i < 3; i++ {
		a, code := sendResult(t, wa, map[string]any{"client_msg_id": fmt.Sprint("down", i), "conversation_id": conv, "content": "down"})
		if a != nil || code != "unavailable" {
			t.Fatalf("send with the database down: ack %v code %q, want unavailable", a, code)
		}
	}
	db.Restart()
	// The client retries its failed sends with the same client_msg_id until
	// they are acked, then goes on.
	retried := 0
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < 3; i++ {
		for {
			a, code := sendResult(t, wa, map[string]any{"client_msg_id": fmt.Sprint("down", i), "conversation_id": conv, "content": "down"})
			if a != nil {
				want[a.Message.Seq] = true
				break
			}
			if code != "unavailable" || time.Now().After(deadline) {
				t.Fatalf("send after the restart: %q", code)
			}
			retried++
			time.Sleep(500 * time.Millisecond)
		}
	}
	for i := 0; i < 5; i++ {
		ack := send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("again", i), "conversation_id": conv, "content": "again"})
		want[ack.Message.Seq] = true
	}
	got := uniqueSeqs{}
	waitAll(t, wb, conv, want, got, 60*time.Second)
	var h page
	b.Must(t, http.MethodGet, "/v1/conversations/"+conv+"/messages?after_seq=0&limit=100", nil, &h)
	if len(h.Messages) != len(want) {
		t.Fatalf("stored %d messages, acked %d", len(h.Messages), len(want))
	}
	t.Logf("%d sends were still unavailable right after the restart", retried)
}

// testTaskCrash: one of two im-task replicas is killed (SIGKILL, no
// shutdown code) while messages flow in eight conversations (spread over
// the partitions, so both replicas have some), then restarted; every acked
// message reaches its receiver, replayed by whichever replica owns its
// partition after the rebalance.
func testTaskCrash(t *testing.T, c *tc.Cluster, ws1, ws2 string) {
	type conv struct {
		wa, wb *tc.WS
		id     string
		want   map[int64]bool
	}
	var convs []*conv
	for i := 0; i < 8; i++ {
		wa, _, wb, id := pair(t, c, ws1, ws2, fmt.Sprint("tk", i))
		convs = append(convs, &conv{wa: wa, wb: wb, id: id, want: map[int64]bool{}})
	}
	sendAll := func(round string) {
		for _, cv := range convs {
			ack := send(t, cv.wa, map[string]any{"client_msg_id": round + cv.id, "conversation_id": cv.id, "content": round})
			cv.want[ack.Message.Seq] = true
		}
	}
	for i := 0; i < 10; i++ {
		if i == 5 {
			c.Task.Kill()
		}
		sendAll(fmt.Sprint("r", i))
	}
	c.Task.Restart()
	for i := 0; i < 5; i++ {
		sendAll(fmt.Sprint("after", i))
	}
	for _, cv := range convs {
		waitAll(t, cv.wb, cv.id, cv.want, uniqueSeqs{}, 120*time.Second)
	}
}

// testBigEscapedSync: 200 messages of 4 KiB of characters JSON would escape
// (<, &, ") are synced by a client on the other gateway: the answers are
// paged within the answer size, the session stays open, and all 200 arrive.
func testBigEscapedSync(t *testing.T, c *tc.Cluster, ws1, ws2 string) {
	a, b := register(t, c, "bga"), register(t, c, "bgb")
	conv := direct(t, a, b)
	wa := tc.DialWS(t, ws1, a.Token)
	content := strings.Repeat(`<&"`, 4096/3) + "<"
	const total = 200
	for i := 0; i < total; i++ {
		send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("big", i), "conversation_id": conv.ID, "content": content})
	}
	wb := tc.DialWS(t, ws2, b.Token)
	got := uniqueSeqs{}
	pages := 0
	after := int64(0)
	for {
		if err := wb.Send("sync", map[string]any{"conversation_id": conv.ID, "after_seq": after, "limit": 200}); err != nil {
			t.Fatal(err)
		}
		var r clientapi.SyncResult
		wb.Next(t, "sync", wait).Decode(t, &r)
		pages++
		for _, m := range r.Messages {
			if m.Content != content {
				t.Fatalf("seq %d came back changed (%d bytes)", m.Seq, len(m.Content))
			}
			got.add(m)
			after = max(after, m.Seq)
		}
		if !r.HasMore {
			break
		}
	}
	if got.count() != total {
		t.Fatalf("synced %d unique seqs of %d", got.count(), total)
	}
	// The session is still open and answers.
	if err := wb.Send("ping", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	wb.Next(t, "pong", wait)
	t.Logf("200 messages of %d bytes synced in %d pages", len(content), pages)
}

// testHalfFrames: 600 WebSocket sessions (more than --max-readers, 512)
// each send the first byte of a frame header and nothing more, while a
// healthy client on the same gateway pings: every ping is answered, and its
// messages keep coming.
func testHalfFrames(t *testing.T, c *tc.Cluster, ws1 string) {
	stuck := register(t, c, "hf")
	var conns []*tc.WS
	defer func() {
		for _, w := range conns {
			w.Close()
		}
	}()
	for i := 0; i < 600; i++ {
		// A whole session (hello received), then half a frame header: FIN +
		// text, and no length byte.
		w := tc.DialWS(t, ws1, stuck.Token)
		conns = append(conns, w)
		if _, err := w.Conn().Write([]byte{0x81}); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	a, b := register(t, c, "hfa"), register(t, c, "hfb")
	conv := direct(t, a, b)
	wa, wb := tc.DialWS(t, ws1, a.Token), tc.DialWS(t, ws1, b.Token)
	got := uniqueSeqs{}
	for i := 0; i < 20; i++ {
		if err := wb.Send("ping", map[string]any{}); err != nil {
			t.Fatal(err)
		}
		wb.Next(t, "pong", wait)
		send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("hf", i), "conversation_id": conv.ID, "content": "still here"})
		for _, m := range wb.Messages(t, 1, wait) {
			got.add(m)
		}
	}
	if got.count() != 20 {
		t.Fatalf("%d unique seqs of 20 reached the healthy client", got.count())
	}
}
