package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestGatewayLiveness freezes one of two gateways (SIGSTOP: its sockets stay
// open, nothing answers). Its liveness lapses within --liveness-ttl, after
// which im-task no longer dials it: the other gateway's clients get every
// message, and the frozen gateway's users count as offline, so their
// webhook fires. The push timeout is a minute here, so a push to the frozen
// gateway would hold the batches up for longer than the test waits: only
// not dialling it passes.
func TestGatewayLiveness(t *testing.T) {
	hook := newWebhook(t)
	c := tc.StartCluster(t, tc.Options{
		Replicas:     2,
		GatewayFlags: []string{"--liveness-ttl=3s"},
		TaskEnv:      []string{"GOCHAT_PUSH_TIMEOUT=60s", "GOCHAT_WEBHOOK_URL=" + hook.srv.URL, "GOCHAT_WEBHOOK_SECRET=" + hook.secret},
	})
	ws1, ws2 := c.WSURL(), "ws://"+c.MoreHTTP[0]+"/v1/ws"
	owner, stay, held := register(t, c, "lo"), register(t, c, "ls"), register(t, c, "lh")
	var g clientapi.Conversation
	if st := owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": "live", "member_ids": []string{stay.User.ID, held.User.ID}}, &g); st != 201 {
		t.Fatalf("create group: %d", st)
	}
	wo, wst, wh := tc.DialWS(t, ws1, owner.Token), tc.DialWS(t, ws1, stay.Token), tc.DialWS(t, ws2, held.Token)
	// Positive control: both gateways get pushes, and nobody is offline.
	send(t, wo, map[string]any{"client_msg_id": "warm", "conversation_id": g.ID, "content": "warm-up"})
	wst.Messages(t, 1, wait)
	wh.Messages(t, 1, wait)
	// The client may hold its frame before im-task holds the push's
	// answer; a freeze in between would be a push in flight, not a dial.
	c.WaitDispatched(t)

	frozen := c.MoreGateways[0]
	frozen.Pause()
	defer frozen.Resume()
	waitLapsed(t, c, c.MoreGRPC[0])

	const total = 10
	got := uniqueSeqs{}
	for i := 0; i < total; i++ {
		send(t, wo, map[string]any{"client_msg_id": fmt.Sprint("l", i), "conversation_id": g.ID, "content": fmt.Sprint("m", i)})
		for _, m := range wst.Messages(t, 1, wait) {
			got.add(m)
		}
	}
	if got.count() != total {
		t.Fatalf("the live gateway's client got %d unique seqs of %d", got.count(), total)
	}
	notified := func() map[int64]bool {
		seqs := map[int64]bool{}
		for _, n := range hook.forUser(held.User.ID) {
			if n.ConversationID == g.ID {
				seqs[n.Message.Seq] = true
			}
		}
		return seqs
	}
	deadline := time.Now().Add(wait)
	for len(notified()) < total && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := notified(); len(n) != total {
		t.Fatalf("the frozen gateway's user was notified of %d unique seqs of %d", len(n), total)
	}
	for seq := range got[g.ID] {
		if !notified()[seq] {
			t.Fatalf("seq %d reached the live client but its offline notification never came", seq)
		}
	}
	if n := hook.forUser(stay.User.ID); len(n) != 0 {
		t.Fatalf("a user on the live gateway was notified as offline: %+v", n)
	}

	// Back from the freeze, it renews its liveness and gets pushes again.
	frozen.Resume()
	back := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		send(t, wo, map[string]any{"client_msg_id": fmt.Sprint("back", i), "conversation_id": g.ID, "content": "back"})
		if _, ok := wh.Wait("message", 2*time.Second); ok {
			break
		}
		if time.Now().After(back) {
			t.Fatal("the gateway back from its freeze never got pushes again")
		}
	}
}

// waitLapsed waits until gateway's liveness in Redis has lapsed.
func waitLapsed(t *testing.T, c *tc.Cluster, gateway string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: c.RedisAddr})
	defer rdb.Close()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		score, err := rdb.ZScore(ctx, c.RedisPrefix+"gateways", gateway).Result()
		cancel()
		if err == nil && score < float64(time.Now().UnixMilli()) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the liveness of gateway %s never lapsed (or was never recorded)", gateway)
}
