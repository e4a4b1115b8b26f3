package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/testcluster"
)

// TestSendContent holds the send frame's content to its size and its send
// time readable back from a message, whatever the size.
func TestSendContent(t *testing.T) {
	now := time.Date(2026, 11, 30, 15, 0, 0, 123456789, time.UTC)
	for _, size := range []int{0, 10, 100, 4096} {
		b := appendSend(nil, "06h2sv4nsk9rcjtz72xrd0awtc", 3, 7, now.UnixNano(), size)
		var f struct {
			Type string `json:"type"`
			Data struct {
				ClientMsgID    string `json:"client_msg_id"`
				ConversationID string `json:"conversation_id"`
				Content        string `json:"content"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("size %d: %v: %s", size, err, b)
		}
		if f.Type != "send" || f.Data.ClientMsgID != "p3-7" || f.Data.ConversationID != "06h2sv4nsk9rcjtz72xrd0awtc" {
			t.Errorf("size %d: %s", size, b)
		}
		if least := len("t:") + len("1796050800123456789") + 1; len(f.Data.Content) != max(size, least) {
			t.Errorf("size %d: content of %d bytes: %q", size, len(f.Data.Content), f.Data.Content)
		}
		m := sentMessage{Content: f.Data.Content}
		if at, ok := m.sentAt(); !ok || !at.Equal(now) {
			t.Errorf("size %d: sent at %v, %v; want %v", size, at, ok, now)
		}
	}
	for _, c := range []string{"", "x", "t:", "t:12ab x", "hello"} {
		m := sentMessage{Content: c}
		if _, ok := m.sentAt(); ok {
			t.Errorf("content %q read as a send time", c)
		}
	}
}

// TestSendGoChat runs the send path's load (make bench-send's tool) against
// GoChat as separate processes on MariaDB, Redis and Kafka: every message is
// acked and delivered once, counted by unique (conversation_id, seq), and
// the tool reports its latencies and its own cost.
func TestSendGoChat(t *testing.T) {
	c := testcluster.StartCluster(t, testcluster.Options{})
	r, err := runSend(sendOpts{base: c.URL(), pairs: 4, rate: 10, duration: 2 * time.Second, size: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d acked %d delivered %d frames %d tool CPU %s ack p50 %s delivery p50 %s",
		r.sent, r.acked, r.delivered, r.frames, r.toolCPU, r.ackLat.quantile(0.5), r.deliverLat.quantile(0.5))
	if r.sent < 4*10 || r.acked != r.sent || r.delivered != r.acked || r.errors != 0 || r.duplicates != 0 || r.missing != 0 {
		t.Errorf("sent %d, acked %d, delivered %d, errors %d, duplicates %d, missing %d: want every message acked and delivered once",
			r.sent, r.acked, r.delivered, r.errors, r.duplicates, r.missing)
	}
	if len(r.ackLat.d) != int(r.acked) || len(r.deliverLat.d) != int(r.delivered) || r.ackLat.quantile(0.5) <= 0 || r.deliverLat.quantile(0.5) <= 0 {
		t.Errorf("latencies: %d acks, %d deliveries timed", len(r.ackLat.d), len(r.deliverLat.d))
	}
	// Each message is an ack to its sender and a message to its recipient.
	if r.frames < r.acked+r.delivered || r.toolCPU <= 0 {
		t.Errorf("%d frames received, tool CPU %s", r.frames, r.toolCPU)
	}
}

// TestSendKeepsSessionsAlive runs the tool past three of the gateway's
// heartbeats: its recipients, which only read, must ping as the client API
// asks, or the gateway counts them gone and their deliveries stop (a
// 10-minute bench lost every delivery after 75 s to this).
func TestSendKeepsSessionsAlive(t *testing.T) {
	c := testcluster.StartCluster(t, testcluster.Options{GatewayFlags: []string{"--heartbeat", "1s"}})
	r, err := runSend(sendOpts{base: c.URL(), pairs: 2, rate: 10, duration: 5 * time.Second, size: 100, ping: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.sent < 2*10*4 || r.acked != r.sent || r.delivered != r.acked || r.missing != 0 {
		t.Fatalf("sent %d, acked %d, delivered %d, missing %d: want every message acked and delivered past 3 heartbeats",
			r.sent, r.acked, r.delivered, r.missing)
	}
}

// TestSendFrames reads the frames the gateway writes (built with the same
// encoder) and counts acks, deliveries and refusals. An error frame's
// "message" is text where an ack's is an object: a refusal must still
// count, or the tool waits for acks that never come and reports the wait
// as the path's rate.
func TestSendFrames(t *testing.T) {
	p := &sendPair{conv: "c1", acked: map[int64]bool{}, delivered: map[int64]bool{}}
	msg := clientapi.Message{ConversationID: "c1", Seq: 7, Content: "t:1 x"}
	tests := []struct {
		name               string
		frame              []byte
		sender             bool
		acked, errs, deliv int64
	}{
		{"ack", clientapi.Frame(clientapi.TypeAck, clientapi.Ack{ClientMsgID: "p0-0", Message: msg}), true, 1, 0, 0},
		{"the same ack again", clientapi.Frame(clientapi.TypeAck, clientapi.Ack{ClientMsgID: "p0-0", Message: msg}), true, 1, 0, 0},
		{"refused", clientapi.ErrorFrame("rate_limited", "32 requests in flight, wait for their answers", "p0-1"), true, 1, 1, 0},
		{"an error without a client_msg_id", clientapi.ErrorFrame("invalid_argument", "bad frame", ""), true, 1, 2, 0},
		{"delivered", clientapi.Frame(clientapi.TypeMessage, msg), false, 1, 2, 1},
		{"not JSON", []byte("{"), false, 1, 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if f, ok := decodeSendFrame(tt.frame); ok {
				if tt.sender {
					p.onSenderFrame(f)
				} else {
					p.onRecipientFrame(f)
				}
			}
			if a, e, d := p.counts(); a != tt.acked || e != tt.errs || d != tt.deliv {
				t.Fatalf("acked %d, errors %d, delivered %d; want %d, %d, %d", a, e, d, tt.acked, tt.errs, tt.deliv)
			}
		})
	}
	if p.errCodes["rate_limited"] != 1 || p.errCodes["invalid_argument"] != 1 {
		t.Fatalf("errors by code: %v", p.errCodes)
	}
}

// TestSendGoChatRefused drives the tool past the gateway's per-user send
// limit: the refusals are counted by code, every send is answered one way
// or the other, and the tool stops waiting once they are.
func TestSendGoChatRefused(t *testing.T) {
	c := testcluster.StartCluster(t, testcluster.Options{GatewayFlags: []string{"--send-rate=5", "--send-burst=5"}})
	r, err := runSend(sendOpts{base: c.URL(), pairs: 2, rate: 20, duration: 2 * time.Second, size: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d acked %d errors %v delivered %d, last ack %s, total %s", r.sent, r.acked, r.errCodes, r.delivered, r.lastAck, r.total)
	if r.errCodes["rate_limited"] == 0 || r.acked == 0 || r.acked+r.errors != r.sent || r.delivered != r.acked || r.missing != 0 {
		t.Fatalf("sent %d, acked %d, errors %d %v, delivered %d, missing %d: want some refused rate_limited and every send answered",
			r.sent, r.acked, r.errors, r.errCodes, r.delivered, r.missing)
	}
	if r.total > 20*time.Second {
		t.Fatalf("the run took %s: the tool waited for refused sends", r.total)
	}
}

func TestSenderPhase(t *testing.T) {
	const period = 200 * time.Millisecond
	for _, tc := range []struct {
		name    string
		i, n    int
		aligned bool
		want    time.Duration
	}{
		{"first sender starts at once", 0, 4, false, 0},
		{"spread evenly over the period", 1, 4, false, 50 * time.Millisecond},
		{"last sender starts within the period", 3, 4, false, 150 * time.Millisecond},
		{"aligned senders start together", 3, 4, true, 0},
		{"no senders", 0, 0, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := senderPhase(tc.i, tc.n, period, tc.aligned); got != tc.want {
				t.Fatalf("senderPhase(%d, %d) = %s, want %s", tc.i, tc.n, got, tc.want)
			}
		})
	}
}
