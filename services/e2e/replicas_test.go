package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestReplicas runs two gateways, two im-logic and two im-task replicas,
// with clients spread over the gateways.
func TestReplicas(t *testing.T) {
	c := tc.StartCluster(t, tc.Options{Replicas: 2})
	ws1, ws2 := c.WSURL(), "ws://"+c.MoreHTTP[0]+"/v1/ws"
	t.Run("routing across gateways", func(t *testing.T) {
		a, b := register(t, c, "ra"), register(t, c, "rb")
		wa, wb := tc.DialWS(t, ws1, a.Token), tc.DialWS(t, ws2, b.Token)
		ack := send(t, wa, map[string]any{"client_msg_id": "r1", "to_user_id": b.User.ID, "content": "across"})
		if m := wb.Messages(t, 1, wait)[0]; m.ID != ack.Message.ID {
			t.Fatalf("gateway 2 got %+v", m)
		}
		back := send(t, wb, map[string]any{"client_msg_id": "r2", "conversation_id": ack.Message.ConversationID, "content": "back"})
		if m := wa.Messages(t, 1, wait)[0]; m.ID != back.Message.ID {
			t.Fatalf("gateway 1 got %+v", m)
		}
	})
	t.Run("kill -9 of a gateway while messages flow", func(t *testing.T) {
		owner, stay, gone := register(t, c, "ko"), register(t, c, "ks"), register(t, c, "kg")
		var g clientapi.Conversation
		if st := owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": "kill", "member_ids": []string{stay.User.ID, gone.User.ID}}, &g); st != 201 {
			t.Fatalf("create group: %d", st)
		}
		wo, ws, wg := tc.DialWS(t, ws1, owner.Token), tc.DialWS(t, ws1, stay.Token), tc.DialWS(t, ws2, gone.Token)
		const total = 40
		acked := map[int64]bool{}
		arrived := map[int64]time.Time{}
		goneGot := uniqueSeqs{}
		for i := 0; i < total; i++ {
			if i == total/2 {
				c.MoreGateways[0].Kill()
			}
			ack := send(t, wo, map[string]any{"client_msg_id": fmt.Sprint("k", i), "conversation_id": g.ID, "content": fmt.Sprint("m", i)})
			acked[ack.Message.Seq] = true
			for _, m := range ws.Messages(t, 1, wait) {
				if _, dup := arrived[m.Seq]; !dup {
					arrived[m.Seq] = time.Now()
				}
			}
			if i < total/2 {
				for _, m := range wg.Messages(t, 1, wait) {
					goneGot.add(m)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(arrived) != total {
			t.Fatalf("the healthy gateway's client got %d unique seqs of %d", len(arrived), total)
		}
		var prev time.Time
		for seq := int64(1); seq <= total; seq++ {
			at, ok := arrived[seq]
			if !ok {
				t.Fatalf("seq %d never reached the healthy gateway's client", seq)
			}
			if !prev.IsZero() && at.Sub(prev) > 2*time.Second {
				t.Fatalf("the healthy gateway's client stalled %s before seq %d", at.Sub(prev), seq)
			}
			prev = at
		}
		// The killed gateway's client reconnects elsewhere and syncs from its last seq.
		re := tc.DialWS(t, ws1, gone.Token)
		after := int64(0)
		for seq := range goneGot[g.ID] {
			after = max(after, seq)
		}
		for {
			if err := re.Send("sync", map[string]any{"conversation_id": g.ID, "after_seq": after}); err != nil {
				t.Fatal(err)
			}
			var r clientapi.SyncResult
			re.Next(t, "sync", wait).Decode(t, &r)
			for _, m := range r.Messages {
				goneGot.add(m)
				after = max(after, m.Seq)
			}
			if !r.HasMore {
				break
			}
		}
		for seq := range acked {
			if !goneGot[g.ID][seq] {
				t.Fatalf("acked seq %d never reached the killed gateway's client, pushed or synced (%d of %d)", seq, goneGot.count(), len(acked))
			}
		}
	})
}
