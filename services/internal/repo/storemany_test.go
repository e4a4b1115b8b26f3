package repo_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/repo"
)

// testStoreMessages: StoreMessages answers each message at its index as
// StoreMessage alone would, stores each conversation's messages in the
// order given, and fails a bad message alone.
func testStoreMessages(t *testing.T, e *env) {
	a, b, outsider := user(t, e, "sa"), user(t, e, "sb"), user(t, e, "so")
	g1, g2 := group(t, e, a, b), group(t, e, a)
	msg := func(conv string, sender *gochatv1.User, cmid string) *gochatv1.StoreMessageRequest {
		return &gochatv1.StoreMessageRequest{ConversationId: conv, SenderId: sender.Id, ClientMsgId: cmid, ContentType: "text", Content: "c-" + cmid}
	}
	big := msg(g1.Id, a, "big")
	big.Content = strings.Repeat("x", repo.MaxContentBytes+1)
	bad := msg("not-an-id", a, "bad")
	noID := msg(g1.Id, a, "")
	in := []*gochatv1.StoreMessageRequest{
		msg(g1.Id, a, "m1"), msg(g2.Id, a, "n1"), msg(g1.Id, b, "m2"), big, msg(g1.Id, outsider, "x1"),
		bad, msg(g1.Id, a, "m1"), noID, msg(g1.Id, a, "m3"), msg(g2.Id, a, "n2"),
	}
	r, err := e.client.StoreMessages(ctx, &gochatv1.StoreMessagesRequest{Messages: in})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"seq 1", "seq 1", "seq 2", "payload_too_large", "not_found", "not_found", "seq 1 duplicate", "invalid_argument", "seq 3", "seq 2"}
	if len(r.Results) != len(want) {
		t.Fatalf("%d results for %d messages", len(r.Results), len(in))
	}
	for i, w := range want {
		res := r.Results[i]
		got := res.GetError().GetCode()
		if res.Error == nil {
			got = fmt.Sprintf("seq %d", res.Stored.Message.Seq)
			if res.Stored.Duplicate {
				got += " duplicate"
			}
			if res.Stored.Message.ConversationId != in[i].ConversationId || res.Stored.Message.ClientMsgId != in[i].ClientMsgId {
				t.Errorf("message %d answered with %v", i, res.Stored.Message)
			}
		}
		if got != w {
			t.Errorf("message %d (%s): %s, want %s", i, in[i].ClientMsgId, got, w)
		}
	}
	if seqs := allSeqs(t, e, g1.Id, a.Id); len(seqs) != 3 {
		t.Errorf("g1 holds seqs %v, want 1 to 3", seqs)
	}

	for _, tt := range []struct {
		name string
		n    int
	}{{"empty", 0}, {"over the limit", repo.MaxStoreBatch + 1}} {
		req := &gochatv1.StoreMessagesRequest{}
		for i := range tt.n {
			req.Messages = append(req.Messages, msg(g2.Id, a, fmt.Sprint("o", i)))
		}
		if _, err := e.client.StoreMessages(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tt.name, err)
		}
	}
}
