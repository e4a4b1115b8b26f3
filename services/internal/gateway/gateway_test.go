package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/authtoken"
)

// logicStub answers as im-logic would for a known user; everything the
// gateway forwards is recorded.
type logicStub struct {
	gochatv1.LogicServiceClient
	mu    sync.Mutex
	sends []*gochatv1.SendRequest
	hang  bool          // Send waits for its context: a hung im-logic
	delay time.Duration // Send takes this long: a slow im-logic
	// noBatch answers SendBatch Unimplemented, as an im-logic older than
	// SendBatch does.
	noBatch bool
	batches []int // the size of each SendBatch call
}

func (l *logicStub) SendBatch(ctx context.Context, in *gochatv1.SendBatchRequest, _ ...grpc.CallOption) (*gochatv1.SendBatchResponse, error) {
	if l.noBatch {
		return nil, status.Error(codes.Unimplemented, "unknown method SendBatch")
	}
	if err := l.answerLater(ctx); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.batches = append(l.batches, len(in.Sends))
	out := &gochatv1.SendBatchResponse{}
	for _, send := range in.Sends {
		r, err := l.record(send)
		if err != nil {
			out.Results = append(out.Results, &gochatv1.SendResult{Error: apierror.Item(err)})
			continue
		}
		out.Results = append(out.Results, &gochatv1.SendResult{Sent: r})
	}
	return out, nil
}

func (l *logicStub) GetUser(_ context.Context, in *gochatv1.GetUserRequest, _ ...grpc.CallOption) (*gochatv1.GetUserResponse, error) {
	if in.GetId() != "u1" {
		return nil, apierror.New(apierror.NotFound, "user not found")
	}
	return &gochatv1.GetUserResponse{User: &gochatv1.User{Id: "u1", Username: "ann"}}, nil
}

func (l *logicStub) Send(ctx context.Context, in *gochatv1.SendRequest, _ ...grpc.CallOption) (*gochatv1.SendResponse, error) {
	if err := l.answerLater(ctx); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.record(in)
}

// answerLater waits as a hung (until ctx ends, then fails) or slow im-logic.
func (l *logicStub) answerLater(ctx context.Context) error {
	if l.hang {
		<-ctx.Done()
		return apierror.New(apierror.Unavailable, "im-logic hung")
	}
	time.Sleep(l.delay)
	return nil
}

// record answers one send, under l.mu: conversation "refused" is refused,
// anything else stored.
func (l *logicStub) record(in *gochatv1.SendRequest) (*gochatv1.SendResponse, error) {
	if in.ConversationId == "refused" {
		return nil, apierror.New(apierror.PermissionDenied, "not a member")
	}
	l.sends = append(l.sends, in)
	return &gochatv1.SendResponse{Message: &gochatv1.Message{Id: "m", ConversationId: in.ConversationId, Seq: int64(len(l.sends)), Content: in.Content}}, nil
}

// sent returns the sends that reached the stub. It is read under its lock:
// the gateway's writers write to sockets directly, which the race detector
// does not see as an edge between the stub's goroutine and the test's.
func (l *logicStub) sent() []*gochatv1.SendRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sends)
}

// ListMessages answers up to 200 messages of 4 KiB of characters that JSON
// may escape, from after_seq on, in a conversation of 1000.
func (l *logicStub) ListMessages(_ context.Context, in *gochatv1.ListMessagesRequest, _ ...grpc.CallOption) (*gochatv1.ListMessagesResponse, error) {
	content := strings.Repeat(`<&"`, 4096/3)
	out := &gochatv1.ListMessagesResponse{}
	for seq := in.AfterSeq + 1; seq <= 1000 && len(out.Messages) < int(in.Limit); seq++ {
		out.Messages = append(out.Messages, &gochatv1.Message{Id: "m" + strconv.FormatInt(seq, 10), ConversationId: in.ConversationId, Seq: seq, Content: content})
	}
	out.HasMore = len(out.Messages) > 0 && out.Messages[len(out.Messages)-1].Seq < 1000
	return out, nil
}

func (l *logicStub) Login(context.Context, *gochatv1.LoginRequest, ...grpc.CallOption) (*gochatv1.AuthResponse, error) {
	return nil, apierror.New(apierror.Unauthenticated, "wrong username or password")
}

func (l *logicStub) Guest(context.Context, *gochatv1.GuestRequest, ...grpc.CallOption) (*gochatv1.AuthResponse, error) {
	return &gochatv1.AuthResponse{User: &gochatv1.User{Id: "g", Guest: true}, Token: "t"}, nil
}

// presenceStub is im-repo's presence, in memory.
type presenceStub struct {
	gochatv1.RepoServiceClient
	mu       sync.Mutex
	sessions map[string]bool
	// registered, when set, is called with the sessions a call registered
	// before the call returns: what im-task may do as soon as they are in
	// presence.
	registered func(ids []string)
}

func (p *presenceStub) RegisterSessions(ctx context.Context, in *gochatv1.RegisterSessionsRequest, _ ...grpc.CallOption) (*gochatv1.RegisterSessionsResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	out := &gochatv1.RegisterSessionsResponse{}
	var ids []string
	for _, s := range in.Sessions {
		if in.CheckUsers && s.UserId != "u1" { // as logicStub, u1 is the only user
			out.UnknownUsers = append(out.UnknownUsers, s.UserId)
			continue
		}
		p.sessions[s.SessionId] = true
		ids = append(ids, s.SessionId)
	}
	hook := p.registered
	p.mu.Unlock()
	if hook != nil && len(ids) > 0 {
		hook(ids)
	}
	return out, nil
}

func (p *presenceStub) UnregisterSessions(ctx context.Context, in *gochatv1.UnregisterSessionsRequest, _ ...grpc.CallOption) (*gochatv1.UnregisterSessionsResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // as gRPC does with a cancelled call
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range in.Sessions {
		delete(p.sessions, s.SessionId)
	}
	return &gochatv1.UnregisterSessionsResponse{}, nil
}

func (p *presenceStub) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sessions)
}

const secret = "0123456789abcdef0123456789abcdef"

type fixture struct {
	g        *Gateway
	addr     string
	token    string
	logic    *logicStub
	presence *presenceStub
	stop     func() error // ends Serve's context and waits for it to return
}

func testConfig() Config {
	return Config{
		Advertise: "127.0.0.1:1", Heartbeat: time.Hour, PresenceTTL: time.Hour, HandshakeTimeout: 5 * time.Second,
		FrameReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, CallTimeout: 5 * time.Second,
		MaxFrameBytes: 1024, MaxContentBytes: 256, MaxQueueBytes: 64 << 10, MaxAnswerBytes: 16 << 10, MaxPage: 200,
		SendRate: 1000, SendBurst: 1000, FrameRate: 1000, FrameBurst: 1000, MaxBadFrames: 5, MaxReaders: 8,
		DrainWindow: 2 * time.Second, DrainTimeout: 5 * time.Second,
		MaxUserSessions: 100, MaxPendingPerIP: 100, MaxPending: 1000, AuthRate: 1000, AuthBurst: 1000, GuestsPerHour: 1000,
	}
}

func start(t *testing.T, mutate func(*Config)) *fixture {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	keys, err := authtoken.New(secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{logic: &logicStub{}, presence: &presenceStub{sessions: map[string]bool{}}}
	g, err := New(cfg, keys, f.logic, f.presence, prometheus.NewRegistry(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() { cancel(); serveErr = <-done })
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	f.g, f.addr, f.stop = g, ln.Addr().String(), stop
	f.token, _, _ = keys.Issue("u1", false, &authtoken.Profile{Username: "ann"}, time.Now())
	return f
}

type client struct {
	t    *testing.T
	conn net.Conn
	r    io.Reader // what ws.Dial may have buffered past the handshake, then conn
}

func (f *fixture) dial(t *testing.T) *client {
	t.Helper()
	conn, br, _, err := ws.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, conn: conn, r: conn}
	if br != nil {
		c.r = br // the hello may already be in it
	}
	if typ := c.next()["type"]; typ != "hello" {
		t.Fatalf("first frame %v", typ)
	}
	return c
}

// next reads the next frame (answering nothing itself).
func (c *client) next() map[string]any {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := ws.ReadHeader(c.r)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.r, p); err != nil {
		c.t.Fatal(err)
	}
	if h.OpCode == ws.OpClose {
		code, reason := ws.ParseCloseFrameData(p)
		return map[string]any{"type": "close", "code": float64(code), "reason": reason}
	}
	if h.OpCode == ws.OpPong {
		return map[string]any{"type": "ws-pong", "payload": string(p)}
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		c.t.Fatalf("frame %q: %v", p, err)
	}
	return m
}

func (c *client) write(h ws.Header, payload []byte) {
	c.t.Helper()
	if err := c.tryWrite(h, payload); err != nil {
		c.t.Fatal(err)
	}
}

// tryWrite is write for a client the gateway may close part way through.
func (c *client) tryWrite(h ws.Header, payload []byte) error {
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
	}
	h.Length = int64(len(payload))
	if err := ws.WriteHeader(c.conn, h); err != nil {
		return err
	}
	_, err := c.conn.Write(payload)
	return err
}

func masked(op ws.OpCode, fin bool) ws.Header {
	return ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: [4]byte{1, 2, 3, 4}}
}

func TestProtocol(t *testing.T) {
	tests := []struct {
		name   string
		frames func(c *client)
		want   map[string]any // type, and code for error or close frames
	}{
		{"fragmented message is reassembled", func(c *client) {
			c.write(masked(ws.OpText, false), []byte(`{"type":"pi`))
			c.write(masked(ws.OpContinuation, false), []byte(`ng","da`))
			c.write(masked(ws.OpContinuation, true), []byte(`ta":{}}`))
		}, map[string]any{"type": "pong"}},
		{"control frame between fragments", func(c *client) {
			c.write(masked(ws.OpText, false), []byte(`{"type":"ping",`))
			c.write(masked(ws.OpPing, true), []byte("hb"))
			c.write(masked(ws.OpContinuation, true), []byte(`"data":{}}`))
		}, map[string]any{"type": "ws-pong"}},
		{"unmasked frame closes with 1002", func(c *client) {
			c.write(ws.Header{Fin: true, OpCode: ws.OpText}, []byte(`{"type":"ping","data":{}}`))
		}, map[string]any{"type": "close", "code": float64(1002)}},
		{"continuation without a start closes with 1002", func(c *client) {
			c.write(masked(ws.OpContinuation, true), []byte(`x`))
		}, map[string]any{"type": "close", "code": float64(1002)}},
		{"a frame over the limit is an error, the connection stays", func(c *client) {
			c.write(masked(ws.OpText, true), []byte(`{"type":"ping","data":{"p":"`+strings.Repeat("x", 2000)+`"}}`))
		}, map[string]any{"type": "error", "code": "payload_too_large"}},
		{"far over the limit closes with 1009", func(c *client) {
			c.write(masked(ws.OpText, true), make([]byte, 17*1024))
		}, map[string]any{"type": "close", "code": float64(1009)}},
		{"fragments over the limit together are an error", func(c *client) {
			c.write(masked(ws.OpText, false), []byte(`{"type":"ping","data":{"p":"`+strings.Repeat("x", 600)))
			c.write(masked(ws.OpContinuation, true), []byte(strings.Repeat("x", 600)+`"}}`))
		}, map[string]any{"type": "error", "code": "payload_too_large"}},
		{"fragments far over the limit together close with 1009", func(c *client) {
			// The gateway closes as soon as the fragments pass the cap, so
			// the writes after that may fail: what counts is the close code.
			c.write(masked(ws.OpText, false), make([]byte, 1000))
			for i := 0; i < 30; i++ {
				if c.tryWrite(masked(ws.OpContinuation, false), make([]byte, 1000)) != nil {
					return
				}
			}
			_ = c.tryWrite(masked(ws.OpContinuation, true), make([]byte, 10))
		}, map[string]any{"type": "close", "code": float64(1009)}},
		{"reserved opcode closes with 1002", func(c *client) {
			c.write(masked(ws.OpCode(3), true), []byte(`x`))
		}, map[string]any{"type": "close", "code": float64(1002)}},
		{"close is answered with close", func(c *client) {
			c.write(masked(ws.OpClose, true), ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))
		}, map[string]any{"type": "close", "code": float64(1000)}},
		{"content over the limit never reaches im-logic", func(c *client) {
			c.write(masked(ws.OpText, true), []byte(`{"type":"send","data":{"client_msg_id":"a","conversation_id":"c","content":"`+strings.Repeat("x", 300)+`"}}`))
		}, map[string]any{"type": "error", "code": "payload_too_large"}},
	}
	f := start(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.dial(t)
			tt.frames(c)
			got := c.next()
			for k, v := range tt.want {
				if k == "code" && got["type"] == "error" {
					if code := got["data"].(map[string]any)["code"]; code != v {
						t.Fatalf("error code %v, want %v (%v)", code, v, got)
					}
					continue
				}
				if got[k] != v {
					t.Fatalf("%s = %v, want %v (frame %v)", k, got[k], v, got)
				}
			}
		})
	}
	if n := len(f.logic.sent()); n != 0 {
		t.Fatalf("%d sends reached im-logic", n)
	}
}

func TestSendForwardsCallerAndSession(t *testing.T) {
	f := start(t, nil)
	c := f.dial(t)
	c.write(masked(ws.OpText, true), []byte(`{"type":"send","data":{"client_msg_id":"a","conversation_id":"c1","content":"hi"}}`))
	ack := c.next()
	if ack["type"] != "ack" {
		t.Fatalf("got %v", ack)
	}
	in := f.logic.sent()[0]
	if in.CallerId != "u1" || in.SessionId == "" || in.ConversationId != "c1" || in.Content != "hi" {
		t.Fatalf("forwarded %+v", in)
	}
}

// TestSendBatches: sends of many sessions that come while a batch is in
// flight reach im-logic together, each answered on its own session with its
// own result; one refused send fails alone. An im-logic without SendBatch
// (an older version, mid-roll) gets the same sends one call each.
func TestSendBatches(t *testing.T) {
	for _, tt := range []struct {
		name    string
		noBatch bool
	}{{"batched", false}, {"im-logic without SendBatch", true}} {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, nil)
			// Slow enough that the sends pile up behind the calls in flight.
			f.logic.delay, f.logic.noBatch = 50*time.Millisecond, tt.noBatch
			// Two 2-byte contents fill a batch: it stops growing past this.
			f.g.sends.maxBytes = 3
			const sessions = 40
			var cs []*client
			for range sessions {
				cs = append(cs, f.dial(t))
			}
			for i, c := range cs {
				conv := "c" + strconv.Itoa(i)
				if i == 7 {
					conv = "refused"
				}
				c.write(masked(ws.OpText, true), []byte(fmt.Sprintf(`{"type":"send","data":{"client_msg_id":"m%d","conversation_id":%q,"content":"hi"}}`, i, conv)))
			}
			for i, c := range cs {
				got := c.next()
				data, _ := got["data"].(map[string]any)
				if data["client_msg_id"] != "m"+strconv.Itoa(i) {
					t.Fatalf("session %d: answer %v is not for its send", i, got)
				}
				if i == 7 {
					if got["type"] != "error" || data["code"] != "permission_denied" {
						t.Fatalf("the refused send: %v", got)
					}
					continue
				}
				msg, _ := data["message"].(map[string]any)
				if got["type"] != "ack" || msg["conversation_id"] != "c"+strconv.Itoa(i) {
					t.Fatalf("session %d: %v, want the ack of its message", i, got)
				}
			}
			f.logic.mu.Lock()
			batches := slices.Clone(f.logic.batches)
			f.logic.mu.Unlock()
			if tt.noBatch {
				if len(batches) != 0 || len(f.logic.sent()) != sessions-1 {
					t.Fatalf("batches %v and %d sends one by one, want the %d accepted one by one", batches, len(f.logic.sent()), sessions-1)
				}
				return
			}
			total := 0
			for _, n := range batches {
				total += n
			}
			if total != sessions || len(f.logic.sent()) != sessions-1 || slices.Max(batches) != 2 {
				t.Fatalf("batches %v: want all %d sends, some two together and never more (the bytes' bound)", batches, sessions)
			}
		})
	}
}

// HTTP sends go through the same batcher: concurrent requests share calls,
// and each is answered with its own message or its own error.
func TestHTTPSendBatches(t *testing.T) {
	f := start(t, nil)
	f.logic.delay = 50 * time.Millisecond
	const sends = 30
	type answer struct {
		status int
		body   map[string]any
	}
	answers := make([]answer, sends)
	var wg sync.WaitGroup
	for i := range sends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := "c" + strconv.Itoa(i)
			if i == 3 {
				conv = "refused"
			}
			req, _ := http.NewRequest(http.MethodPost, "http://"+f.addr+"/v1/conversations/"+conv+"/messages",
				strings.NewReader(fmt.Sprintf(`{"client_msg_id":"m%d","content":"hi"}`, i)))
			req.Header.Set("Authorization", "Bearer "+f.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			answers[i].status = resp.StatusCode
			_ = json.NewDecoder(resp.Body).Decode(&answers[i].body)
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if i == 3 {
			if a.status != http.StatusForbidden {
				t.Fatalf("the refused send: %d %v, want 403", a.status, a.body)
			}
			continue
		}
		if a.status != http.StatusCreated || a.body["conversation_id"] != "c"+strconv.Itoa(i) {
			t.Fatalf("send %d: %d %v, want 201 with its own message", i, a.status, a.body)
		}
	}
	f.logic.mu.Lock()
	batches := slices.Clone(f.logic.batches)
	f.logic.mu.Unlock()
	total := 0
	for _, n := range batches {
		total += n
	}
	if total != sends || len(batches) == sends {
		t.Fatalf("batches %v: want all %d sends, some of them together", batches, sends)
	}
}

func TestPushAndPresence(t *testing.T) {
	f := start(t, nil)
	c1, c2 := f.dial(t), f.dial(t)
	if f.presence.count() != 2 || f.g.Sessions() != 2 {
		t.Fatalf("presence %d sessions %d", f.presence.count(), f.g.Sessions())
	}
	var ids []string
	f.g.hub.each(func(s *session) { ids = append(ids, s.id) })
	frame := []byte(`{"type":"message","data":{"seq":1}}`)
	resp, err := f.g.PushServer().Push(context.Background(), &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{
		{SessionIds: append(ids, "gone"), Frame: frame},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Queued != 2 || len(resp.UnknownSessionIds) != 1 || resp.UnknownSessionIds[0] != "gone" {
		t.Fatalf("push answer %+v", resp)
	}
	for _, c := range []*client{c1, c2} {
		if m := c.next(); m["type"] != "message" {
			t.Fatalf("got %v", m)
		}
	}
	c1.conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for (f.presence.count() != 1 || f.g.Sessions() != 1) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if f.presence.count() != 1 || f.g.Sessions() != 1 {
		t.Fatalf("after a close: presence %d sessions %d", f.presence.count(), f.g.Sessions())
	}
}

func TestSlowConsumerIsDropped(t *testing.T) {
	f := start(t, func(c *Config) {
		c.MaxQueueBytes = 4096
		c.MaxAnswerBytes = 2048
		c.WriteTimeout = 500 * time.Millisecond
	})
	f.dial(t) // a client that will read nothing
	var id string
	f.g.hub.each(func(s *session) { id = s.id })
	big := []byte(`{"type":"message","data":{"content":"` + strings.Repeat("x", 1000) + `"}}`)
	// The client reads nothing: its socket buffers fill, then its queue.
	for i := 0; i < 20000 && f.g.hub.get(id) != nil; i++ {
		_, _ = f.g.PushServer().Push(context.Background(), &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{{SessionIds: []string{id}, Frame: big}}})
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.g.hub.get(id) != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if f.g.hub.get(id) != nil {
		t.Fatal("a client that reads nothing is still held")
	}
}

func TestHeartbeatTimeout(t *testing.T) {
	f := start(t, func(c *Config) { c.Heartbeat = 100 * time.Millisecond })
	c := f.dial(t)
	got := c.next() // silent for 3 heartbeats
	if got["type"] != "close" || got["code"] != float64(1001) {
		t.Fatalf("got %v", got)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	f := start(t, nil)
	tests := []struct {
		name   string
		url    string
		status int
	}{
		{"no token", "ws://" + f.addr + "/v1/ws", 401},
		{"bad token", "ws://" + f.addr + "/v1/ws?token=abc", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := ws.Dial(context.Background(), tt.url)
			var se ws.StatusError
			if err == nil || !asStatus(err, &se) || int(se) != tt.status {
				t.Fatalf("dial: %v, want status %d", err, tt.status)
			}
		})
	}
	f.g.draining.Store(true)
	if _, _, _, err := ws.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token); err == nil {
		t.Fatal("a draining gateway took a client")
	}
	resp, err := http.Get("http://" + f.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining: %d", resp.StatusCode)
	}
	// A known path with another method: a JSON error too.
	resp, err = http.Get("http://" + f.addr + "/v1/auth/register")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || body.Error.Code != "invalid_argument" || resp.Header.Get("Allow") == "" {
		t.Fatalf("GET on a POST endpoint: %d %+v allow=%q", resp.StatusCode, body, resp.Header.Get("Allow"))
	}
	resp, err = http.Get("http://" + f.addr + "/v1/nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || body.Error.Code != "not_found" {
		t.Fatalf("unknown path: %d %+v", resp.StatusCode, body)
	}
	// The HTTP API shares the port.
	resp, err = http.Get("http://" + f.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestPushDuringRegistration pushes to a session the moment it is in
// presence, before its handshake has finished, as im-task may: the gateway
// holds the session (were it unknown, im-task would drop it from presence
// and its next messages would not be pushed), and the client gets its hello
// first, then the message.
func TestPushDuringRegistration(t *testing.T) {
	f := start(t, nil)
	type pushed struct {
		resp *gochatv1.PushResponse
		err  error
	}
	results := make(chan pushed, 1)
	f.presence.mu.Lock()
	f.presence.registered = func(ids []string) {
		resp, err := f.g.PushServer().Push(context.Background(), &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{
			{SessionIds: ids, Frame: []byte(`{"type":"message","data":{"conversation_id":"c1","seq":7}}`)},
		}})
		select {
		case results <- pushed{resp, err}:
		default:
		}
	}
	f.presence.mu.Unlock()
	c := f.dial(t) // fails unless the hello comes first
	r := <-results
	if r.err != nil || r.resp.Queued != 1 || len(r.resp.UnknownSessionIds) != 0 {
		t.Fatalf("push during registration: %+v, %v; want it queued to the session", r.resp, r.err)
	}
	m := c.next()
	data, _ := m["data"].(map[string]any)
	if m["type"] != "message" || data["seq"] != float64(7) {
		t.Fatalf("after the hello: %v", m)
	}
	if f.presence.count() != 1 || f.g.Sessions() != 1 {
		t.Fatalf("presence %d, sessions %d", f.presence.count(), f.g.Sessions())
	}
}

func TestHelloUser(t *testing.T) {
	f := start(t, nil)
	keys, err := authtoken.New(secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		user    string
		profile *authtoken.Profile
		want    map[string]any // the hello's user, or the error frame and close
	}{
		{"profile in the token", "u1", &authtoken.Profile{Username: "ann", Nickname: "Ann", CreatedAtMs: 1764400000123},
			map[string]any{"type": "hello", "id": "u1", "username": "ann", "nickname": "Ann", "created_at": "2025-11-29T07:06:40.123Z"}},
		{"no profile: looked up", "u1", nil,
			map[string]any{"type": "hello", "id": "u1", "username": "ann", "nickname": "", "created_at": "1970-01-01T00:00:00.000Z"}},
		{"profile of a user presence does not know", "gone", &authtoken.Profile{Username: "gone"},
			map[string]any{"type": "error", "code": "not_found", "close": float64(1008)}},
		{"no profile, user not found", "gone", nil,
			map[string]any{"type": "error", "code": "not_found", "close": float64(1008)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, _, err := keys.Issue(tt.user, false, tt.profile, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			conn, br, _, err := ws.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+tok)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := &client{t: t, conn: conn, r: conn}
			if br != nil {
				c.r = br
			}
			first := c.next()
			got := map[string]any{"type": first["type"]}
			data, _ := first["data"].(map[string]any)
			switch first["type"] {
			case "hello":
				u, _ := data["user"].(map[string]any)
				for _, k := range []string{"id", "username", "nickname", "created_at"} {
					got[k] = u[k]
				}
			case "error":
				got["code"] = data["code"]
				got["close"] = c.next()["code"]
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func asStatus(err error, se *ws.StatusError) bool {
	s, ok := err.(ws.StatusError)
	if ok {
		*se = s
	}
	return ok
}

func testLogger() *slog.Logger {
	if os.Getenv("GOCHAT_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"defaults of the test", func(*Config) {}, ""},
		{"zero heartbeat", func(c *Config) { c.Heartbeat = 0 }, "--heartbeat"},
		{"content over the frame", func(c *Config) { c.MaxContentBytes = 4096 }, "--max-content-bytes"},
		{"no readers", func(c *Config) { c.MaxReaders = 0 }, "--max-readers"},
		{"negative rate", func(c *Config) { c.SendRate = -1 }, "--send-rate"},
		{"answer over half the queue", func(c *Config) { c.MaxAnswerBytes = c.MaxQueueBytes }, "--max-answer-bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig()
			tt.mutate(&c)
			err := c.Validate()
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

func TestUserLimits(t *testing.T) {
	u := newUserLimits(1, 3)
	now := time.Now()
	for i := 0; i < 3; i++ {
		if !u.allow("a", now) {
			t.Fatalf("send %d refused within the burst", i)
		}
	}
	if u.allow("a", now) {
		t.Fatal("send over the burst allowed")
	}
	if !u.allow("b", now) {
		t.Fatal("one user's flood limited another")
	}
	if !u.allow("a", now.Add(1100*time.Millisecond)) {
		t.Fatal("the bucket did not refill")
	}
	u.forget(now.Add(time.Second))
	if len(u.users) != 1 {
		t.Fatalf("%d users kept, want the one active since the cutoff", len(u.users))
	}
}

// BenchmarkHubLookup is the per-recipient cost of a push: finding the session.
func BenchmarkHubLookup(b *testing.B) {
	h := newHub()
	ids := make([]string, 19000)
	for i := range ids {
		ids[i] = strings.Repeat("x", 10) + strconv.Itoa(i)
		h.add(&session{id: ids[i]})
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if h.get(ids[i%len(ids)]) == nil {
			b.Fatal("missing session")
		}
		i++
	}
}

// A clean stop leaves none of the gateway's sessions in presence: the final
// removal must not run under the context the stop has just cancelled.
func TestStopUnregistersPresence(t *testing.T) {
	for round := 0; round < 5; round++ {
		f := start(t, nil)
		for i := 0; i < 20; i++ {
			f.dial(t)
		}
		if n := f.presence.count(); n != 20 {
			t.Fatalf("round %d: %d sessions in presence before the stop, want 20", round, n)
		}
		f.stop()
		if n := f.presence.count(); n != 0 {
			t.Fatalf("round %d: %d sessions left in presence right after a clean stop", round, n)
		}
	}
}

// A sync of 200 messages of 4 KiB of escapable characters used to encode to
// ~5 MiB, over the session queue: the client was closed as too slow, synced
// again on reconnect, and was closed again. Now the answer is cut by bytes,
// has_more says to continue, and the client pages through everything.
func TestSyncOfBigEscapedMessagesIsPaged(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxQueueBytes = 1 << 20; c.MaxAnswerBytes = 256 << 10 })
	c := f.dial(t)
	seen := map[float64]bool{}
	after := 0
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("no end to the pages")
		}
		c.write(masked(ws.OpText, true), []byte(`{"type":"sync","data":{"conversation_id":"c1","after_seq":`+strconv.Itoa(after)+`,"limit":200}}`))
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		if h.Length > 300<<10 {
			t.Fatalf("page %d is %d bytes, over the 256 KiB answer limit", pages, h.Length)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, p); err != nil {
			t.Fatal(err)
		}
		if h.OpCode != ws.OpText {
			t.Fatalf("page %d: opcode %v (%q)", pages, h.OpCode, p)
		}
		if strings.Contains(string(p), `\u003c`) {
			t.Fatal("frame is HTML-escaped")
		}
		var fr struct {
			Type string
			Data struct {
				Messages []struct {
					Seq     float64
					Content string
				}
				HasMore bool `json:"has_more"`
			}
		}
		if err := json.Unmarshal(p, &fr); err != nil || fr.Type != "sync" || len(fr.Data.Messages) == 0 {
			t.Fatalf("page %d: %v %.200s", pages, err, p)
		}
		for _, m := range fr.Data.Messages {
			if m.Content != strings.Repeat(`<&"`, 4096/3) {
				t.Fatalf("seq %v content changed", m.Seq)
			}
			seen[m.Seq] = true
			after = int(m.Seq)
		}
		if !fr.Data.HasMore {
			break
		}
	}
	if len(seen) != 1000 {
		t.Fatalf("paged through %d unique seqs, want 1000", len(seen))
	}
}

// No client may hold the gateway's shared readers while it waits: not by
// sending half a frame header, not by a backend call that hangs. With four
// readers and more stuck clients than that, a healthy client's ping is
// still answered at once.
func TestStuckClientsDoNotStarveReaders(t *testing.T) {
	tests := []struct {
		name  string
		hang  bool
		stuck func(c *client)
	}{
		{"half a frame header", false, func(c *client) {
			if _, err := c.conn.Write([]byte{0x81}); err != nil {
				c.t.Fatal(err)
			}
		}},
		{"half a frame payload", false, func(c *client) {
			if _, err := c.conn.Write([]byte{0x81, 0x80 | 100, 1, 2, 3, 4, 'x'}); err != nil {
				c.t.Fatal(err)
			}
		}},
		{"a send to a hung im-logic", true, func(c *client) {
			c.write(masked(ws.OpText, true), []byte(`{"type":"send","data":{"client_msg_id":"a","conversation_id":"c1","content":"hi"}}`))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, func(c *Config) {
				c.MaxReaders = 4
				c.FrameReadTimeout = 30 * time.Second
				c.CallTimeout = 30 * time.Second
			})
			f.logic.hang = tt.hang
			healthy := f.dial(t)
			for i := 0; i < 40; i++ {
				tt.stuck(f.dial(t))
			}
			time.Sleep(100 * time.Millisecond) // let the stuck ones take the readers
			for i := 0; i < 3; i++ {
				begin := time.Now()
				healthy.write(masked(ws.OpText, true), []byte(`{"type":"ping"}`))
				_ = healthy.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				h, err := ws.ReadHeader(healthy.r)
				if err != nil {
					t.Fatalf("ping %d: no answer within 3s while stuck clients wait (%v)", i, err)
				}
				p := make([]byte, h.Length)
				if _, err := io.ReadFull(healthy.r, p); err != nil || !strings.Contains(string(p), "pong") {
					t.Fatalf("ping %d: got %q, %v", i, p, err)
				}
				t.Logf("pong after %s", time.Since(begin))
			}
		})
	}
}

// Clients that stop reading fill their sockets; the writers hand them to
// goroutines that wait on them and go on writing to everyone else, so a
// reading client gets every frame, in order, while they are stuck.
func TestStuckReadersDoNotHoldWriters(t *testing.T) {
	f := start(t, func(c *Config) {
		c.MaxQueueBytes = 8 << 20
		c.MaxAnswerBytes = 1 << 20
		c.WriteTimeout = 30 * time.Second
	})
	healthy := f.dial(t)
	// Small receive buffers, so that the gateway's writes to them fill up soon.
	small := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return errors.Join(err, serr)
		}}
		return d.DialContext(ctx, network, addr)
	}}
	for i := 0; i < 20; i++ {
		conn, _, _, err := small.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.g.Sessions() < 21 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // a session is added just after its upgrade answer
	}
	var ids []string
	f.g.hub.each(func(s *session) { ids = append(ids, s.id) })
	if len(ids) != 21 {
		t.Fatalf("%d sessions, want 21", len(ids))
	}
	content := strings.Repeat("x", 16<<10)
	for i := 0; i < 400; i++ {
		frame := []byte(`{"type":"message","data":{"seq":` + strconv.Itoa(i) + `,"content":"` + content + `"}}`)
		if _, err := f.g.PushServer().Push(context.Background(), &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{{SessionIds: ids, Frame: frame}}}); err != nil {
			t.Fatal(err)
		}
		m := healthy.next()
		data, _ := m["data"].(map[string]any)
		if m["type"] != "message" || data["seq"] != float64(i) {
			t.Fatalf("frame %d: got type %v seq %v", i, m["type"], data["seq"])
		}
	}
	if n := testutil.ToFloat64(f.g.metrics.blockedWrites); n < 20 {
		t.Fatalf("%v writes found a full socket, want one at least for each of the 20 stuck clients", n)
	}
	if f.g.Sessions() != 21 {
		t.Fatalf("%d sessions left: a stuck client within its write timeout and queue bound must be kept", f.g.Sessions())
	}
}

// The send rate is the user's, not the connection's: a second connection
// does not bring a second budget.
func TestSendLimitIsPerUser(t *testing.T) {
	f := start(t, func(c *Config) { c.SendRate = 0.001; c.SendBurst = 3 })
	a, b := f.dial(t), f.dial(t)
	send := func(c *client, id string) map[string]any {
		c.write(masked(ws.OpText, true), []byte(`{"type":"send","data":{"client_msg_id":"`+id+`","conversation_id":"c1","content":"hi"}}`))
		return c.next()
	}
	for i := 0; i < 3; i++ {
		if got := send(a, "a"+strconv.Itoa(i)); got["type"] != "ack" {
			t.Fatalf("send %d within the burst: %v", i, got)
		}
	}
	got := send(b, "b0")
	if got["type"] != "error" || got["data"].(map[string]any)["code"] != "rate_limited" {
		t.Fatalf("a second connection of the same user sent past the user's burst: %v", got)
	}
}

func TestSessionsPerUserAreCapped(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxUserSessions = 3 })
	var cs []*client
	for i := 0; i < 3; i++ {
		cs = append(cs, f.dial(t))
	}
	_, _, _, err := ws.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token)
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != http.StatusTooManyRequests {
		t.Fatalf("a fourth session: %v, want HTTP 429", err)
	}
	cs[0].conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for f.g.Sessions() != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	f.dial(t) // the closed one's slot is free again
}

// Connections that open and say nothing are bounded per address: past the
// bound a new one is closed at once, and a slot frees when one goes.
func TestPendingConnectionsPerAddress(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxPendingPerIP = 5; c.HandshakeTimeout = 30 * time.Second })
	var idle []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(100 * time.Millisecond) // accepted and counted
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if conn, _, _, err := ws.Dial(ctx, "ws://"+f.addr+"/v1/ws?token="+f.token); err == nil {
		conn.Close()
		t.Fatal("a sixth connection from the address got through while five sat idle")
	}
	idle[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, _, _, err := ws.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after one idle connection closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Logins are throttled per username and per source address, guest accounts
// per address: past the budget the answer is 429 with Retry-After, and
// nothing reaches im-logic's password hashing.
func TestAuthThrottles(t *testing.T) {
	f := start(t, func(c *Config) { c.AuthRate = 0.0001; c.AuthBurst = 20; c.GuestsPerHour = 2 })
	post := func(path, body string) (int, string) {
		resp, err := http.Post("http://"+f.addr+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	login := func(user string) (int, string) {
		return post("/v1/auth/login", `{"username":"`+user+`","password":"wrong-password"}`)
	}
	for i := 0; i < 10; i++ { // a username's burst: half the address's
		if st, _ := login("Ann"); st != http.StatusUnauthorized {
			t.Fatalf("login %d: %d, want 401", i, st)
		}
	}
	if st, ra := login("ann"); st != http.StatusTooManyRequests || ra == "" {
		t.Fatalf("11th login for one username: %d Retry-After %q, want 429 with Retry-After", st, ra)
	}
	if st, _ := login("bob"); st != http.StatusUnauthorized {
		t.Fatalf("another username from the same address: %d, want 401", st)
	}
	for i := 0; i < 2; i++ {
		if st, _ := post("/v1/auth/guest", `{}`); st != http.StatusOK {
			t.Fatalf("guest %d: %d", i, st)
		}
	}
	if st, ra := post("/v1/auth/guest", `{}`); st != http.StatusTooManyRequests || ra == "" {
		t.Fatalf("3rd guest in an hour: %d Retry-After %q, want 429", st, ra)
	}
	// The address's budget: 20 attempts, 14 spent.
	for i := 0; i < 6; i++ {
		login("carol" + strconv.Itoa(i))
	}
	if st, _ := login("dave"); st != http.StatusTooManyRequests {
		t.Fatalf("past the address's budget: %d, want 429", st)
	}
}

// A client that sends faster than im-logic answers: up to the window of
// calls in flight every send is answered, in order; past it the excess is
// refused with rate_limited at once, and the accepted ones still complete.
func TestCallWindow(t *testing.T) {
	f := start(t, nil)
	f.logic.delay = 20 * time.Millisecond
	c := f.dial(t)
	const n = 60 // under the 10 x --max-bad-frames rate errors that close a connection
	var frames []byte
	for i := 0; i < n; i++ {
		p := []byte(`{"type":"send","data":{"client_msg_id":"m` + strconv.Itoa(i) + `","conversation_id":"c1","content":"hi"}}`)
		h := masked(ws.OpText, true)
		h.Length = int64(len(p))
		ws.Cipher(p, h.Mask, 0)
		var b strings.Builder
		_ = ws.WriteHeader(&b, h)
		frames = append(append(frames, b.String()...), p...)
	}
	if _, err := c.conn.Write(frames); err != nil {
		t.Fatal(err)
	}
	acked, limited, last := 0, 0, -1
	for i := 0; i < n; i++ {
		got := c.next()
		data, _ := got["data"].(map[string]any)
		switch got["type"] {
		case "ack":
			idx, _ := strconv.Atoi(strings.TrimPrefix(data["client_msg_id"].(string), "m"))
			if idx <= last {
				t.Fatalf("ack for m%d after m%d: out of order", idx, last)
			}
			last = idx
			acked++
		case "error":
			if data["code"] != "rate_limited" {
				t.Fatalf("error %v", data)
			}
			limited++
		default:
			t.Fatalf("got %v", got)
		}
	}
	if acked < maxInFlight || limited == 0 || acked+limited != n {
		t.Fatalf("%d acked, %d rate_limited of %d sent at once; want at least the window (%d) acked and the rest limited", acked, limited, n, maxInFlight)
	}
}

// TestFrameRate: past --frame-burst frames at once a session's frames are
// refused with rate_limited until its bucket refills at --frame-rate, and
// past ten times --max-bad-frames refusals the connection is closed 1008.
func TestFrameRate(t *testing.T) {
	f := start(t, func(c *Config) { c.FrameRate, c.FrameBurst, c.MaxBadFrames = 5, 3, 1 })
	c := f.dial(t)
	ping := func() {
		c.write(masked(ws.OpText, true), []byte(`{"type":"ping","data":{}}`))
	}
	for i := 0; i < 4; i++ {
		ping()
	}
	for i, want := range []string{"pong", "pong", "pong", "rate_limited"} {
		got := c.next()
		code, _ := got["data"].(map[string]any)["code"].(string)
		if got["type"] != want && code != want {
			t.Fatalf("answer %d: %v, want %s", i, got, want)
		}
	}
	time.Sleep(300 * time.Millisecond) // more than a frame's worth at 5/s
	ping()
	if got := c.next(); got["type"] != "pong" {
		t.Fatalf("after the refill: %v, want a pong", got)
	}
	for i := 0; i < 15; i++ { // 10 x --max-bad-frames refusals and more
		if c.tryWrite(masked(ws.OpText, true), []byte(`{"type":"ping","data":{}}`)) != nil {
			break
		}
	}
	for {
		got := c.next()
		if got["type"] == "close" {
			if got["code"] != float64(ws.StatusPolicyViolation) {
				t.Fatalf("closed %v, want 1008", got)
			}
			return
		}
	}
}

// TestRenewalsSpread: every session is renewed in presence within a third of
// its TTL, one hub shard at a time: never all of them in one call, which
// was a burst of presence writes every renewal period.
func TestRenewalsSpread(t *testing.T) {
	f := start(t, func(c *Config) { c.PresenceTTL = 3 * time.Second })
	const n = 30
	for range n {
		f.dial(t)
	}
	var (
		mu      sync.Mutex
		renewed = map[string]bool{}
		largest int
	)
	f.presence.mu.Lock()
	f.presence.registered = func(ids []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			renewed[id] = true
		}
		largest = max(largest, len(ids))
	}
	f.presence.mu.Unlock()
	time.Sleep(2 * time.Second) // two thirds of the TTL: every shard's turn came at least once
	mu.Lock()
	defer mu.Unlock()
	if len(renewed) != n {
		t.Fatalf("%d of %d sessions renewed within two thirds of the TTL", len(renewed), n)
	}
	if largest >= n/2 {
		t.Fatalf("a renewal call of %d sessions of %d: the renewals are not spread", largest, n)
	}
}
