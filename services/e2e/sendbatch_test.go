package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	tc "github.com/gochat/gochat/services/testcluster"
)

// testSendBatch calls im-logic's SendBatch as the gateway does, with sends
// of several users in one call: each is answered at its index as Send alone
// would answer it, a refused one fails alone, a conversation's messages
// are stored in the order given, and the stored ones reach their recipients.
func testSendBatch(t *testing.T, c *tc.Cluster) {
	a, b, eve := register(t, c, "ba"), register(t, c, "bb"), register(t, c, "be")
	conv := direct(t, a, b)
	bws := tc.DialWS(t, c.WSURL(), b.Token)
	logic := gochatv1.NewLogicServiceClient(c.Dial(t, c.LogicGRPC, pki.Gateway, pki.Logic))

	sends := []*gochatv1.SendRequest{
		{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: "b1", Content: "one"},
		{CallerId: eve.User.ID, ConversationId: conv.ID, ClientMsgId: "b2", Content: "not a member"},
		{CallerId: b.User.ID, ConversationId: conv.ID, ClientMsgId: "b3", Content: "two"},
		{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: "", Content: "no id"},
		{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: "b1", Content: "one, again"},
		{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: "b5", Content: strings.Repeat("x", 70000)},
		{CallerId: eve.User.ID, ToUserId: a.User.ID, ClientMsgId: "b6", Content: "first contact"},
		{CallerId: a.User.ID, ConversationId: conv.ID, ToUserId: b.User.ID, ClientMsgId: "b7", Content: "both"},
		{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: "b8", Content: "three"},
	}
	r, err := logic.SendBatch(ctx5(t), &gochatv1.SendBatchRequest{Sends: sends})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Results) != len(sends) {
		t.Fatalf("%d results for %d sends", len(r.Results), len(sends))
	}
	want := []struct {
		code string // "" when stored
		seq  int64
		dup  bool
	}{
		{"", 1, false}, {"not_found", 0, false}, {"", 2, false}, {"invalid_argument", 0, false},
		{"", 1, true}, {"payload_too_large", 0, false}, {"", 1, false}, {"invalid_argument", 0, false}, {"", 3, false},
	}
	for i, w := range want {
		res := r.Results[i]
		switch {
		case w.code != "":
			if res.Error.GetCode() != w.code || res.Error.GetMessage() == "" || res.Sent != nil {
				t.Errorf("send %d (%s): %v, want %s", i, sends[i].ClientMsgId, res, w.code)
			}
		case res.Error != nil || res.Sent.GetMessage().GetSeq() != w.seq || res.Sent.Duplicate != w.dup:
			t.Errorf("send %d (%s): %v, want seq %d duplicate %v", i, sends[i].ClientMsgId, res, w.seq, w.dup)
		}
	}
	if r.Results[6].Sent.GetMessage().GetConversationId() == conv.ID {
		t.Errorf("the first contact went to the existing conversation")
	}
	// b receives all three, counted by unique seq: its own send named no
	// session of origin, so every session of b has it too.
	got := map[int64]string{}
	for _, m := range bws.Messages(t, 3, wait) {
		got[m.Seq] = m.Content
	}
	if got[1] != "one" || got[2] != "two" || got[3] != "three" || len(got) != 3 {
		t.Fatalf("b received %v, want seqs 1 to 3", got)
	}
	var h page
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID+"/messages?after_seq=0", nil, &h)
	var seqs []string
	for _, m := range h.Messages {
		seqs = append(seqs, fmt.Sprintf("%d:%s", m.Seq, m.Content))
	}
	if strings.Join(seqs, ",") != "1:one,2:two,3:three" {
		t.Fatalf("stored %v", seqs)
	}

	for _, tt := range []struct {
		name string
		n    int
	}{{"empty", 0}, {"over the limit", 1001}} {
		req := &gochatv1.SendBatchRequest{}
		for i := range tt.n {
			req.Sends = append(req.Sends, &gochatv1.SendRequest{CallerId: a.User.ID, ConversationId: conv.ID, ClientMsgId: fmt.Sprint("x", i), Content: "x"})
		}
		if _, err := logic.SendBatch(ctx5(t), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s batch: %v, want InvalidArgument", tt.name, err)
		}
	}
}
