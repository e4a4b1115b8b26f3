// Package e2e drives the four services, each a process of its own, through
// the public client API only: HTTP and WebSocket, against MariaDB, Redis and
// a Kafka broker process.
package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/task"
	tc "github.com/gochat/gochat/services/testcluster"
)

const wait = 15 * time.Second

func TestChat(t *testing.T) {
	hook := newWebhook(t)
	c := tc.StartCluster(t, tc.Options{
		TaskEnv:    []string{"GOCHAT_WEBHOOK_URL=" + hook.srv.URL, "GOCHAT_WEBHOOK_SECRET=" + hook.secret},
		LogicFlags: []string{"--kafka-delivery-timeout=3s", "--outbox-relay-after=2s"},
	})
	t.Run("auth", func(t *testing.T) { testAuth(t, c) })
	t.Run("direct message reaches every device", func(t *testing.T) { testDirect(t, c) })
	t.Run("group of five in seq order", func(t *testing.T) { testGroup(t, c) })
	t.Run("retried send is stored and delivered once", func(t *testing.T) { testRetry(t, c) })
	t.Run("offline user catches up by sync and history", func(t *testing.T) { testOffline(t, c) })
	t.Run("read pointer", func(t *testing.T) { testRead(t, c) })
	t.Run("non-member", func(t *testing.T) { testNonMember(t, c) })
	t.Run("bad input keeps the connection usable", func(t *testing.T) { testBadInput(t, c) })
	t.Run("group membership changes", func(t *testing.T) { testMembership(t, c) })
	t.Run("presence and typing across two gateways", func(t *testing.T) { testPresenceTwoGateways(t, c) })
	t.Run("offline users are notified", func(t *testing.T) { testNotify(t, c, hook) })
	t.Run("internal gRPC is mutual TLS", func(t *testing.T) { testInternalAuth(t, c) })
	t.Run("a batch of sends is answered send by send", func(t *testing.T) { testSendBatch(t, c) })
	t.Run("sends survive outages", func(t *testing.T) { testOutages(t, c) })
	t.Run("group events and read receipts survive a Kafka outage and an im-logic crash", func(t *testing.T) { testEventOutage(t, c) })
}

var userSeq int

func uniq(name string) string {
	userSeq++
	return fmt.Sprintf("%s%d-%s", name, userSeq, tc.RandomName("")[:6])
}

func register(t *testing.T, c *tc.Cluster, name string) *tc.API {
	return tc.Register(t, c.URL(), uniq(name))
}

func testAuth(t *testing.T, c *tc.Cluster) {
	name := uniq("ann")
	a := tc.Register(t, c.URL(), name)
	if a.User.Username != name || a.User.Guest || a.User.ID == "" {
		t.Fatalf("registered user = %+v", a.User)
	}
	anon := &tc.API{Base: c.URL()}
	tests := []struct {
		name       string
		path       string
		body       any
		wantStatus int
		wantCode   string
	}{
		{"taken username", "/v1/auth/register", map[string]string{"username": name, "password": "whatever-long"}, 409, "already_exists"},
		{"short username", "/v1/auth/register", map[string]string{"username": "ab", "password": "whatever-long"}, 400, "invalid_argument"},
		{"bad characters", "/v1/auth/register", map[string]string{"username": "Ann!", "password": "whatever-long"}, 400, "invalid_argument"},
		{"short password", "/v1/auth/register", map[string]string{"username": uniq("bo"), "password": "short"}, 400, "invalid_argument"},
		{"malformed json", "/v1/auth/register", []byte(`{"username":`), 400, "invalid_argument"},
		{"wrong password", "/v1/auth/login", map[string]string{"username": name, "password": "not-the-password"}, 401, "unauthenticated"},
		{"unknown user", "/v1/auth/login", map[string]string{"username": uniq("nobody"), "password": "not-the-password"}, 401, "unauthenticated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := anon.Do(http.MethodPost, tt.path, tt.body, nil)
			e, ok := err.(*tc.APIError)
			if !ok || st != tt.wantStatus || e.Code != tt.wantCode {
				t.Fatalf("status %d err %v, want %d %s", st, err, tt.wantStatus, tt.wantCode)
			}
		})
	}
	// The same answer whether or not the user exists.
	_, e1 := anon.Do(http.MethodPost, "/v1/auth/login", map[string]string{"username": name, "password": "not-the-password"}, nil)
	_, e2 := anon.Do(http.MethodPost, "/v1/auth/login", map[string]string{"username": uniq("ghost"), "password": "not-the-password"}, nil)
	if e1.Error() != e2.Error() {
		t.Fatalf("login answers differ: %v vs %v", e1, e2)
	}

	var login struct {
		User  clientapi.User `json:"user"`
		Token string         `json:"token"`
	}
	if st := anon.Must(t, http.MethodPost, "/v1/auth/login", map[string]string{"username": name, "password": "password-" + name}, &login); st != 200 {
		t.Fatalf("login status %d", st)
	}
	me := &tc.API{Base: c.URL(), Token: login.Token}
	var got clientapi.User
	me.Must(t, http.MethodGet, "/v1/me", nil, &got)
	if got.ID != a.User.ID {
		t.Fatalf("/v1/me = %+v, want %s", got, a.User.ID)
	}
	me.Must(t, http.MethodGet, "/v1/users?username="+name, nil, &got)
	if got.ID != a.User.ID {
		t.Fatalf("user by name = %+v", got)
	}
	if st, _ := me.Do(http.MethodGet, "/v1/users/"+strings.Repeat("0", 26), nil, nil); st != 404 {
		t.Fatalf("unknown user id status %d", st)
	}

	var guest struct {
		User  clientapi.User `json:"user"`
		Token string         `json:"token"`
	}
	if st := anon.Must(t, http.MethodPost, "/v1/auth/guest", map[string]string{"nickname": "Visitor"}, &guest); st != 200 {
		t.Fatalf("guest status %d", st)
	}
	if !guest.User.Guest || guest.User.Nickname != "Visitor" || guest.Token == "" {
		t.Fatalf("guest = %+v", guest.User)
	}
	if st, _ := (&tc.API{Base: c.URL(), Token: "garbage"}).Do(http.MethodGet, "/v1/me", nil, nil); st != 401 {
		t.Fatalf("bad token status %d", st)
	}
	if _, err := tc.TryDialWS(c.WSURL(), "garbage"); err == nil {
		t.Fatal("WebSocket accepted a bad token")
	}
}

func direct(t *testing.T, a, b *tc.API) clientapi.Conversation {
	t.Helper()
	var conv clientapi.Conversation
	a.Must(t, http.MethodPost, "/v1/conversations/direct", map[string]string{"user_id": b.User.ID}, &conv)
	return conv
}

func send(t *testing.T, w *tc.WS, data map[string]any) clientapi.Ack {
	t.Helper()
	if err := w.Send("send", data); err != nil {
		t.Fatal(err)
	}
	var ack clientapi.Ack
	w.Next(t, "ack", wait).Decode(t, &ack)
	if ack.ClientMsgID != data["client_msg_id"] {
		t.Fatalf("ack for %q, sent %q", ack.ClientMsgID, data["client_msg_id"])
	}
	return ack
}

func testDirect(t *testing.T, c *tc.Cluster) {
	alice, bob := register(t, c, "alice"), register(t, c, "bob")
	alice1 := tc.DialWS(t, c.WSURL(), alice.Token)
	alice2 := tc.DialWS(t, c.WSURL(), alice.Token)
	bob1 := tc.DialWS(t, c.WSURL(), bob.Token)
	bob2 := tc.DialWS(t, c.WSURL(), bob.Token)
	if alice1.Hello.User.ID != alice.User.ID || alice1.Hello.SessionID == alice2.Hello.SessionID || alice1.Hello.HeartbeatMs <= 0 {
		t.Fatalf("hello = %+v / %+v", alice1.Hello, alice2.Hello)
	}

	// First contact by user id creates the conversation.
	ack := send(t, alice1, map[string]any{"client_msg_id": "d1", "to_user_id": bob.User.ID, "content": "hi bob"})
	if ack.Message.Seq != 1 || ack.Message.SenderID != alice.User.ID || ack.Message.ContentType != "text" {
		t.Fatalf("ack = %+v", ack.Message)
	}
	for name, w := range map[string]*tc.WS{"bob1": bob1, "bob2": bob2, "alice2": alice2} {
		m := w.Messages(t, 1, wait)[0]
		if m.ID != ack.Message.ID || m.Content != "hi bob" {
			t.Fatalf("%s got %+v", name, m)
		}
	}
	// The sending device has its ack and gets no copy.
	if f, ok := alice1.Wait("message", 500*time.Millisecond); ok {
		t.Fatalf("sending session got its own message: %s", f.Data)
	}
	// The answer goes back on the same conversation, with the next seq.
	ack2 := send(t, bob2, map[string]any{"client_msg_id": "d2", "conversation_id": ack.Message.ConversationID, "content": "hi alice", "content_type": "custom"})
	if ack2.Message.Seq != 2 || ack2.Message.ContentType != "custom" {
		t.Fatalf("second ack = %+v", ack2.Message)
	}
	for _, w := range []*tc.WS{alice1, alice2, bob1} {
		if m := w.Messages(t, 1, wait)[0]; m.Seq != 2 {
			t.Fatalf("got %+v", m)
		}
	}
	// The direct conversation is the same one from either side.
	if conv := direct(t, bob, alice); conv.ID != ack.Message.ConversationID || conv.Type != "direct" || len(conv.Members) != 2 {
		t.Fatalf("direct conversation = %+v", conv)
	}
}

func testGroup(t *testing.T, c *tc.Cluster) {
	var users []*tc.API
	var conns []*tc.WS
	for i := 0; i < 5; i++ {
		u := register(t, c, "g")
		users = append(users, u)
		conns = append(conns, tc.DialWS(t, c.WSURL(), u.Token))
	}
	var ids []string
	for _, u := range users[1:] {
		ids = append(ids, u.User.ID)
	}
	var g clientapi.Conversation
	if st := users[0].Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": "five", "member_ids": ids}, &g); st != 201 {
		t.Fatalf("create group status %d", st)
	}
	if g.Type != "group" || g.OwnerID != users[0].User.ID || len(g.Members) != 5 {
		t.Fatalf("group = %+v", g)
	}
	for _, w := range conns {
		var ev clientapi.Event
		w.Next(t, "event", wait).Decode(t, &ev)
		if ev.Kind != "group_created" || ev.ConversationID != g.ID || ev.ActorID != users[0].User.ID {
			t.Fatalf("event = %+v", ev)
		}
	}
	// Every member sends 4 messages at once from their own connection.
	const each = 4
	for round := 0; round < each; round++ {
		for i, w := range conns {
			if err := w.Send("send", map[string]any{"client_msg_id": fmt.Sprintf("g%d-%d", i, round), "conversation_id": g.ID, "content": fmt.Sprintf("from %d round %d", i, round)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	total := each * len(conns)
	for i, w := range conns {
		for r := 0; r < each; r++ {
			w.Next(t, "ack", wait)
		}
		// Each member gets everyone else's messages, in seq order. (Its own
		// may come too, at least once being the contract: they are skipped.)
		last, others := int64(0), 0
		for others < total-each {
			m := w.Messages(t, 1, wait)[0]
			if m.SenderID == users[i].User.ID {
				continue
			}
			if m.Seq <= last {
				t.Fatalf("member %d: seq %d after %d", i, m.Seq, last)
			}
			last = m.Seq
			others++
		}
	}
	var hist struct {
		Messages []clientapi.Message `json:"messages"`
		HasMore  bool                `json:"has_more"`
	}
	users[3].Must(t, http.MethodGet, "/v1/conversations/"+g.ID+"/messages?after_seq=0&limit=200", nil, &hist)
	if len(hist.Messages) != total || hist.HasMore {
		t.Fatalf("history has %d messages (more %v), want %d", len(hist.Messages), hist.HasMore, total)
	}
	for i, m := range hist.Messages {
		if m.Seq != int64(i+1) {
			t.Fatalf("history seq %d at %d: seqs must be 1..n with no gap", m.Seq, i)
		}
	}
}

func testRetry(t *testing.T, c *tc.Cluster) {
	a, b := register(t, c, "ret"), register(t, c, "rec")
	conv := direct(t, a, b)
	wa := tc.DialWS(t, c.WSURL(), a.Token)
	wb := tc.DialWS(t, c.WSURL(), b.Token)
	first := send(t, wa, map[string]any{"client_msg_id": "same", "conversation_id": conv.ID, "content": "once"})
	again := send(t, wa, map[string]any{"client_msg_id": "same", "conversation_id": conv.ID, "content": "once"})
	if again.Message.ID != first.Message.ID || again.Message.Seq != first.Message.Seq {
		t.Fatalf("retry gave %+v, first was %+v", again.Message, first.Message)
	}
	// Over HTTP too, however late.
	var viaHTTP clientapi.Message
	a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": "same", "content": "once"}, &viaHTTP)
	if viaHTTP.ID != first.Message.ID {
		t.Fatalf("HTTP retry gave %+v", viaHTTP)
	}
	next := send(t, wa, map[string]any{"client_msg_id": "other", "conversation_id": conv.ID, "content": "twice"})
	if next.Message.Seq != first.Message.Seq+1 {
		t.Fatalf("next seq %d after %d: a retry must not use a seq", next.Message.Seq, first.Message.Seq)
	}
	got := wb.Messages(t, 2, wait)
	if got[0].ID != first.Message.ID || got[1].ID != next.Message.ID {
		t.Fatalf("recipient got %+v", got)
	}
	if f, ok := wb.Wait("message", time.Second); ok {
		t.Fatalf("duplicate delivered: %s", f.Data)
	}
	// Positive control: pushes still flow, and the next frame is the next message.
	last := send(t, wa, map[string]any{"client_msg_id": "control", "conversation_id": conv.ID, "content": "control"})
	if m := wb.Messages(t, 1, wait)[0]; m.ID != last.Message.ID {
		t.Fatalf("after the quiet second the recipient got seq %d, want the control message's seq %d", m.Seq, last.Message.Seq)
	}
}

type page struct {
	Messages []clientapi.Message `json:"messages"`
	HasMore  bool                `json:"has_more"`
}

func testOffline(t *testing.T, c *tc.Cluster) {
	a, b := register(t, c, "on"), register(t, c, "off")
	conv := direct(t, a, b)
	wa := tc.DialWS(t, c.WSURL(), a.Token)
	wb := tc.DialWS(t, c.WSURL(), b.Token)
	send(t, wa, map[string]any{"client_msg_id": "before", "conversation_id": conv.ID, "content": "seen live"})
	held := wb.Messages(t, 1, wait)[0].Seq
	wb.Close()
	for i := 0; i < 20; i++ {
		send(t, wa, map[string]any{"client_msg_id": fmt.Sprintf("while-%d", i), "conversation_id": conv.ID, "content": fmt.Sprintf("missed %d", i)})
	}
	wb = tc.DialWS(t, c.WSURL(), b.Token)
	if err := wb.Send("sync", map[string]any{"conversation_id": conv.ID, "after_seq": held, "limit": 15}); err != nil {
		t.Fatal(err)
	}
	var s1 clientapi.SyncResult
	wb.Next(t, "sync", wait).Decode(t, &s1)
	if len(s1.Messages) != 15 || !s1.HasMore || s1.Messages[0].Seq != held+1 {
		t.Fatalf("first sync page: %d messages, more %v", len(s1.Messages), s1.HasMore)
	}
	if err := wb.Send("sync", map[string]any{"conversation_id": conv.ID, "after_seq": s1.Messages[14].Seq}); err != nil {
		t.Fatal(err)
	}
	var s2 clientapi.SyncResult
	wb.Next(t, "sync", wait).Decode(t, &s2)
	if len(s2.Messages) != 5 || s2.HasMore || s2.Messages[4].Content != "missed 19" {
		t.Fatalf("second sync page: %+v", s2)
	}

	// HTTP history, backwards from the newest, then forwards.
	var back page
	b.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?before_seq=%d&limit=8", conv.ID, 22), nil, &back)
	if len(back.Messages) != 8 || !back.HasMore || back.Messages[0].Seq != 14 || back.Messages[7].Seq != 21 {
		t.Fatalf("before_seq page: %d messages from %d, more %v", len(back.Messages), back.Messages[0].Seq, back.HasMore)
	}
	var older page
	b.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?before_seq=%d&limit=100", conv.ID, back.Messages[0].Seq), nil, &older)
	if len(older.Messages) != 13 || older.HasMore || older.Messages[0].Seq != 1 {
		t.Fatalf("oldest page: %d messages, more %v", len(older.Messages), older.HasMore)
	}
	var fwd page
	b.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?after_seq=%d&limit=5", conv.ID, 18), nil, &fwd)
	if len(fwd.Messages) != 3 || fwd.HasMore || fwd.Messages[0].Seq != 19 {
		t.Fatalf("after_seq page: %+v", fwd)
	}
	for _, bad := range []string{"after_seq=-1", "limit=0", "limit=201", "after_seq=x", "after_seq=1&before_seq=5"} {
		if st, err := b.Do(http.MethodGet, "/v1/conversations/"+conv.ID+"/messages?"+bad, nil, nil); st != 400 {
			t.Fatalf("?%s: status %d %v, want 400", bad, st, err)
		}
	}
}

func testRead(t *testing.T, c *tc.Cluster) {
	a, b := register(t, c, "reader"), register(t, c, "writer")
	conv := direct(t, a, b)
	wa := tc.DialWS(t, c.WSURL(), a.Token)
	wb := tc.DialWS(t, c.WSURL(), b.Token)
	for i := 0; i < 3; i++ {
		send(t, wb, map[string]any{"client_msg_id": fmt.Sprint("r", i), "conversation_id": conv.ID, "content": "read me"})
	}
	wa.Messages(t, 3, wait)
	var got clientapi.Conversation
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID, nil, &got)
	if got.MaxSeq != 3 || got.ReadSeq != 0 || got.Unread != 3 {
		t.Fatalf("before reading: %+v", got)
	}
	b.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID, nil, &got)
	if got.Unread != 0 {
		t.Fatalf("own messages must count as read: unread %d", got.Unread)
	}
	if err := wa.Send("read", map[string]any{"conversation_id": conv.ID, "seq": 2}); err != nil {
		t.Fatal(err)
	}
	var rd clientapi.ReadData
	wb.Next(t, "read", wait).Decode(t, &rd)
	if rd.ConversationID != conv.ID || rd.UserID != a.User.ID || *rd.Seq != 2 {
		t.Fatalf("read frame %+v", rd)
	}
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID, nil, &got)
	if got.ReadSeq != 2 || got.Unread != 1 {
		t.Fatalf("after reading to 2: %+v", got)
	}
	// Backwards is ignored; forwards over HTTP.
	if st := a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/read", map[string]int{"seq": 1}, nil); st != 204 {
		t.Fatalf("read status %d", st)
	}
	a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/read", map[string]int{"seq": 99}, nil)
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID, nil, &got)
	if got.ReadSeq != 3 || got.Unread != 0 {
		t.Fatalf("read pointer must stop at max_seq: %+v", got)
	}
	var list struct {
		Conversations []clientapi.Conversation `json:"conversations"`
	}
	a.Must(t, http.MethodGet, "/v1/conversations", nil, &list)
	if len(list.Conversations) != 1 || list.Conversations[0].LastMessage == nil || list.Conversations[0].LastMessage.Seq != 3 {
		t.Fatalf("conversation list %+v", list)
	}
}

func testNonMember(t *testing.T, c *tc.Cluster) {
	a, b, eve := register(t, c, "m1"), register(t, c, "m2"), register(t, c, "eve")
	conv := direct(t, a, b)
	for _, path := range []string{"/v1/conversations/" + conv.ID, "/v1/conversations/" + conv.ID + "/messages?after_seq=0", "/v1/conversations/nonexistent"} {
		if st, err := eve.Do(http.MethodGet, path, nil, nil); st != 404 {
			t.Fatalf("GET %s as non-member: %d %v", path, st, err)
		}
	}
	if st, _ := eve.Do(http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": "x", "content": "let me in"}, nil); st != 404 {
		t.Fatalf("POST message as non-member: %d", st)
	}
	we := tc.DialWS(t, c.WSURL(), eve.Token)
	if err := we.Send("send", map[string]any{"client_msg_id": "sneak", "conversation_id": conv.ID, "content": "let me in"}); err != nil {
		t.Fatal(err)
	}
	var e clientapi.ErrorData
	we.Next(t, "error", wait).Decode(t, &e)
	if e.Code != "not_found" || e.ClientMsgID != "sneak" {
		t.Fatalf("error frame %+v", e)
	}
	var h page
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID+"/messages?after_seq=0", nil, &h)
	if len(h.Messages) != 0 {
		t.Fatalf("a refused send was stored: %+v", h.Messages)
	}
}

func testBadInput(t *testing.T, c *tc.Cluster) {
	a, b := register(t, c, "bad"), register(t, c, "good")
	conv := direct(t, a, b)
	w := tc.DialWS(t, c.WSURL(), a.Token)
	tests := []struct {
		name  string
		frame string
		code  string
	}{
		{"malformed json", `{"type":"send",`, "invalid_argument"},
		{"not an object", `[1,2,3]`, "invalid_argument"},
		{"unknown type", `{"type":"teleport","data":{}}`, "invalid_argument"},
		{"no type", `{"data":{}}`, "invalid_argument"},
		{"send without client_msg_id", `{"type":"send","data":{"conversation_id":"` + conv.ID + `","content":"x"}}`, "invalid_argument"},
		{"send without content", `{"type":"send","data":{"client_msg_id":"e1","conversation_id":"` + conv.ID + `"}}`, "invalid_argument"},
		{"send without target", `{"type":"send","data":{"client_msg_id":"e2","content":"x"}}`, "invalid_argument"},
		{"oversized content", `{"type":"send","data":{"client_msg_id":"e3","conversation_id":"` + conv.ID + `","content":"` + strings.Repeat("x", 4097) + `"}}`, "payload_too_large"},
		{"bad content type", `{"type":"send","data":{"client_msg_id":"e4","conversation_id":"` + conv.ID + `","content":"x","content_type":"NOT A TOKEN"}}`, "invalid_argument"},
		{"sync without after_seq", `{"type":"sync","data":{"conversation_id":"` + conv.ID + `"}}`, "invalid_argument"},
		{"read without seq", `{"type":"read","data":{"conversation_id":"` + conv.ID + `"}}`, "invalid_argument"},
		{"oversized frame", `{"type":"ping","data":{"pad":"` + strings.Repeat("y", 70<<10) + `"}}`, "payload_too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := w.SendRaw([]byte(tt.frame)); err != nil {
				t.Fatal(err)
			}
			var e clientapi.ErrorData
			w.Next(t, "error", wait).Decode(t, &e)
			if e.Code != tt.code {
				t.Fatalf("error code %q (%s), want %q", e.Code, e.Message, tt.code)
			}
			// The same connection still works.
			if err := w.Send("ping", map[string]any{}); err != nil {
				t.Fatal(err)
			}
			w.Next(t, "pong", wait)
		})
	}
	// A binary frame is refused the same way.
	if err := wsutil.WriteClientBinary(w.Conn(), []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	w.Next(t, "error", wait)
	ack := send(t, w, map[string]any{"client_msg_id": "fine", "conversation_id": conv.ID, "content": "still here"})
	if ack.Message.Seq != 1 {
		t.Fatalf("nothing bad may be stored: first good message has seq %d", ack.Message.Seq)
	}

	// A flood beyond the rate limit is refused with rate_limited. A client
	// that goes on flooding after being told is abusing the protocol, and
	// the gateway may close it (1008): the writes then stop, and what it
	// was sent before the close is still read.
	flood := tc.DialWS(t, c.WSURL(), b.Token)
	const floodSize = 300 // well past the burst of 100, however fast the backend answers
	for i := 0; i < floodSize; i++ {
		if err := flood.Send("send", map[string]any{"client_msg_id": fmt.Sprint("f", i), "conversation_id": conv.ID, "content": "flood"}); err != nil {
			break
		}
	}
	limited := false
	for !limited {
		f, ok := flood.Wait("error", wait)
		if !ok {
			break
		}
		var e clientapi.ErrorData
		f.Decode(t, &e)
		limited = e.Code == "rate_limited"
	}
	if !limited {
		t.Fatalf("%d sends at once were not rate limited", floodSize)
	}

	// HTTP sends have the same limit, per user.
	httpLimited := false
	for i := 0; i < floodSize && !httpLimited; i++ {
		st, err := b.Do(http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": fmt.Sprint("h", i), "content": "flood"}, nil)
		if st == http.StatusTooManyRequests {
			if e, ok := err.(*tc.APIError); !ok || e.Code != "rate_limited" {
				t.Fatalf("429 without a rate_limited body: %v", err)
			}
			httpLimited = true
		}
	}
	if !httpLimited {
		t.Fatalf("%d HTTP sends at once were not rate limited", floodSize)
	}

	// Repeated abuse closes the connection with 1008; the gateway carries on.
	abuser := tc.DialWS(t, c.WSURL(), b.Token)
	for i := 0; i < 40; i++ {
		if err := abuser.SendRaw([]byte("nonsense")); err != nil {
			break
		}
	}
	if code, ok := abuser.Closed(wait); !ok || code != ws.StatusPolicyViolation {
		t.Fatalf("abuser closed with %d (closed %v), want 1008", code, ok)
	}
	if err := w.Send("ping", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	w.Next(t, "pong", wait)
}

func testMembership(t *testing.T, c *tc.Cluster) {
	owner, m1, m2, outsider := register(t, c, "own"), register(t, c, "mem"), register(t, c, "mem"), register(t, c, "out")
	var g clientapi.Conversation
	owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": "club", "member_ids": []string{m1.User.ID}}, &g)
	w1 := tc.DialWS(t, c.WSURL(), m1.Token)
	w2 := tc.DialWS(t, c.WSURL(), m2.Token)
	// Only owners and admins add members.
	if st, err := m1.Do(http.MethodPost, "/v1/groups/"+g.ID+"/members", map[string]any{"user_ids": []string{m2.User.ID}}, nil); st != 403 {
		t.Fatalf("member adding: %d %v", st, err)
	}
	if st, _ := outsider.Do(http.MethodPost, "/v1/groups/"+g.ID+"/members", map[string]any{"user_ids": []string{outsider.User.ID}}, nil); st != 404 {
		t.Fatalf("outsider adding: %d", st)
	}
	owner.Must(t, http.MethodPost, "/v1/groups/"+g.ID+"/members", map[string]any{"user_ids": []string{m2.User.ID}}, &g)
	if len(g.Members) != 3 {
		t.Fatalf("members after add: %+v", g.Members)
	}
	for _, w := range []*tc.WS{w1, w2} {
		if ev := nextEvent(t, w, "member_added"); ev.UserIDs[0] != m2.User.ID || ev.ConversationID != g.ID {
			t.Fatalf("event %+v", ev)
		}
	}
	if st, _ := owner.Do(http.MethodPost, "/v1/groups/"+g.ID+"/members", map[string]any{"user_ids": []string{strings.Repeat("z", 26)}}, nil); st != 404 {
		t.Fatalf("adding a user who does not exist: %d", st)
	}
	if st := owner.Must(t, http.MethodDelete, "/v1/groups/"+g.ID+"/members/"+m1.User.ID, nil, nil); st != 204 {
		t.Fatalf("remove status %d", st)
	}
	// The removed member is told too.
	if ev := nextEvent(t, w1, "member_removed"); ev.UserIDs[0] != m1.User.ID || ev.ActorID != owner.User.ID {
		t.Fatalf("event %+v", ev)
	}
	if st, _ := m1.Do(http.MethodGet, "/v1/conversations/"+g.ID, nil, nil); st != 404 {
		t.Fatalf("removed member still sees the group: %d", st)
	}
	if st := m2.Must(t, http.MethodPost, "/v1/groups/"+g.ID+"/leave", nil, nil); st != 204 {
		t.Fatalf("leave status %d", st)
	}
	if ev := nextEvent(t, w2, "member_left"); ev.UserIDs[0] != m2.User.ID {
		t.Fatalf("event %+v", ev)
	}
	// The owner leaving hands the group on; with nobody left it stays empty.
	owner.Must(t, http.MethodPost, "/v1/groups/"+g.ID+"/leave", nil, nil)
	if st, _ := owner.Do(http.MethodGet, "/v1/conversations/"+g.ID, nil, nil); st != 404 {
		t.Fatalf("owner still sees the group after leaving: %d", st)
	}
}

// nextEvent skips events of other kinds (a group_created that was still on
// its way when the client connected) until one of kind arrives.
func nextEvent(t *testing.T, w *tc.WS, kind string) clientapi.Event {
	t.Helper()
	return nextEventWithin(t, w, kind, wait)
}

// nextEventWithin is nextEvent with a timeout for each frame.
func nextEventWithin(t *testing.T, w *tc.WS, kind string, timeout time.Duration) clientapi.Event {
	t.Helper()
	for {
		var ev clientapi.Event
		w.Next(t, "event", timeout).Decode(t, &ev)
		if ev.Kind == kind {
			return ev
		}
	}
}

// webhook is a push relay stand-in: it checks each body's signature and keeps
// the notifications.
type webhook struct {
	srv    *httptest.Server
	secret string
	mu     sync.Mutex
	got    []task.Notification
	bad    int
}

func newWebhook(t *testing.T) *webhook {
	h := &webhook{secret: "relay-shared-secret"}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		if r.Header.Get("X-GoChat-Signature") != task.Sign([]byte(h.secret), r.Header.Get("X-GoChat-Timestamp"), body) {
			h.bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var b struct {
			Notifications []task.Notification `json:"notifications"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			h.bad++
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.got = append(h.got, b.Notifications...)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *webhook) forUser(id string) []task.Notification {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []task.Notification
	for _, n := range h.got {
		if n.UserID == id {
			out = append(out, n)
		}
	}
	return out
}

func testNotify(t *testing.T, c *tc.Cluster, hook *webhook) {
	a, b := register(t, c, "online"), register(t, c, "away")
	conv := direct(t, a, b)
	wa := tc.DialWS(t, c.WSURL(), a.Token)
	send(t, wa, map[string]any{"client_msg_id": "n1", "conversation_id": conv.ID, "content": "are you there?"})
	send(t, wa, map[string]any{"client_msg_id": "n2", "conversation_id": conv.ID, "content": "hello?"})
	deadline := time.Now().Add(wait)
	for len(hook.forUser(b.User.ID)) < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	got := hook.forUser(b.User.ID)
	if len(got) != 2 {
		t.Fatalf("offline user got %d notifications, want 2", len(got))
	}
	last := got[1]
	if last.ConversationID != conv.ID || last.Message.Content != "hello?" || last.Unread != 2 {
		t.Fatalf("notification %+v", last)
	}
	if n := hook.forUser(a.User.ID); len(n) != 0 {
		t.Fatalf("the sender, who is online, was notified: %+v", n)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.bad != 0 {
		t.Fatalf("%d webhook calls had a bad signature or body", hook.bad)
	}
}

// testOutages: while a piece of the push path is down, sends are still acked
// and stored but not pushed; once it is back, every one is delivered, in
// order. Kafka stays down past the producer's retries (--kafka-delivery-timeout
// 3s), so its messages come back through the outbox relay.
func testOutages(t *testing.T, c *tc.Cluster) {
	tests := []struct {
		name  string
		down  *tc.Process
		sends int
		pause time.Duration
	}{
		{"im-task stopped", c.Task, 10, 2 * time.Second},
		{"Kafka down", c.Kafka, 5, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := register(t, c, "up"), register(t, c, "wait")
			conv := direct(t, a, b)
			wa := tc.DialWS(t, c.WSURL(), a.Token)
			wb := tc.DialWS(t, c.WSURL(), b.Token)
			tt.down.Stop()
			var acked []clientapi.Message
			for i := 0; i < tt.sends; i++ {
				acked = append(acked, send(t, wa, map[string]any{"client_msg_id": fmt.Sprint("down-", i), "conversation_id": conv.ID, "content": fmt.Sprint("queued ", i)}).Message)
			}
			if f, ok := wb.Wait("message", tt.pause); ok {
				t.Fatalf("pushed while down: %s", f.Data)
			}
			var h page
			b.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID+"/messages?after_seq=0", nil, &h)
			if len(h.Messages) != tt.sends {
				t.Fatalf("stored %d of %d acked messages", len(h.Messages), tt.sends)
			}
			tt.down.Restart()
			got := wb.Messages(t, tt.sends, 60*time.Second)
			for i, m := range got {
				if m.ID != acked[i].ID {
					t.Fatalf("message %d: got seq %d, want seq %d", i, m.Seq, acked[i].Seq)
				}
			}
		})
	}
}

// testEventOutage changes a group and moves a read pointer while Kafka is
// down for longer than im-logic's delivery timeout (3s here), then kills
// im-logic before Kafka is back: the outbox relay of the restarted im-logic
// publishes them, each conversation's events in the order of their changes.
func testEventOutage(t *testing.T, c *tc.Cluster) {
	owner, m1, m2 := register(t, c, "evown"), register(t, c, "evmem"), register(t, c, "evnew")
	var g clientapi.Conversation
	owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": "outage", "member_ids": []string{m1.User.ID}}, &g)
	wo := tc.DialWS(t, c.WSURL(), owner.Token)
	w1 := tc.DialWS(t, c.WSURL(), m1.Token)
	ack := send(t, wo, map[string]any{"client_msg_id": "ev-1", "conversation_id": g.ID, "content": "read me"})
	w1.Messages(t, 1, wait)
	w1.Drain("event") // group_created, if it came after the connect

	c.Kafka.Stop()
	owner.Must(t, http.MethodPost, "/v1/groups/"+g.ID+"/members", map[string]any{"user_ids": []string{m2.User.ID}}, nil)
	if st := owner.Must(t, http.MethodDelete, "/v1/groups/"+g.ID+"/members/"+m2.User.ID, nil, nil); st != 204 {
		t.Fatalf("remove status %d", st)
	}
	if st := m1.Must(t, http.MethodPost, "/v1/conversations/"+g.ID+"/read", map[string]int64{"seq": ack.Message.Seq}, nil); st != 204 {
		t.Fatalf("read status %d", st)
	}
	// Past the producer's delivery timeout: the direct publishes have failed
	// (and none reached anyone meanwhile, or Kafka was not really down).
	for until := time.Now().Add(6 * time.Second); time.Now().Before(until); {
		f, ok := w1.Wait("event", time.Until(until))
		if !ok {
			break
		}
		var ev clientapi.Event
		f.Decode(t, &ev)
		if ev.Kind != "group_created" { // that one may still have been on its way
			t.Fatalf("an event arrived while Kafka was down: %s", f.Data)
		}
	}
	if f, ok := wo.Wait("read", 0); ok {
		t.Fatalf("a read receipt arrived while Kafka was down: %s", f.Data)
	}
	// im-logic dies with the three events still in its producer's buffer
	// (franz-go keeps records for a broker it cannot reach, and may produce
	// or fail them when it is back, so a Kafka outage alone loses them only
	// sometimes). Only what the changes committed to MySQL can bring them
	// back.
	c.Logic.Kill()
	c.Kafka.Restart()
	tc.WaitTCP(t, c.KafkaAddr, c.Kafka)
	c.Logic.Restart()
	tc.WaitHTTP(t, "http://"+c.LogicMetrics+"/healthz", c.Logic)

	// In order: a removal that came first would be skipped while waiting
	// for the addition, and then never come.
	added := nextEventWithin(t, w1, "member_added", 60*time.Second)
	removed := nextEventWithin(t, w1, "member_removed", wait)
	if added.UserIDs[0] != m2.User.ID || removed.UserIDs[0] != m2.User.ID || added.ConversationID != g.ID {
		t.Fatalf("events after the outage: %+v then %+v", added, removed)
	}
	var rd clientapi.ReadData
	wo.Next(t, "read", 60*time.Second).Decode(t, &rd)
	if rd.UserID != m1.User.ID || rd.Seq == nil || *rd.Seq != ack.Message.Seq {
		t.Fatalf("read receipt after the outage: %+v", rd)
	}
}
