package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/rpc"
	tc "github.com/gochat/gochat/services/testcluster"
)

// grpc serves the fixture's gateway over real gRPC with mutual TLS, as in
// production, and returns an admin client holding the operator's credential
// and a push client holding im-task's.
func (f *fixture) grpc(t *testing.T) (gochatv1.GatewayAdminServiceClient, gochatv1.PushServiceClient) {
	t.Helper()
	ca, addr := f.serveGRPC(t)
	return gochatv1.NewGatewayAdminServiceClient(tc.DialAs(t, ca, addr, pki.Operator, pki.Gateway)),
		gochatv1.NewPushServiceClient(tc.DialAs(t, ca, addr, pki.Task, pki.Gateway))
}

// serveGRPC serves the gateway's push and admin services as component
// gateway of a new CA, and returns the CA and the address.
func (f *fixture) serveGRPC(t *testing.T) (*pki.CA, string) {
	t.Helper()
	ca := tc.NewCA(t)
	files := tc.IssueFiles(t, ca, pki.Gateway)
	id, err := rpc.LoadIdentity(files.CA, files.Cert, files.Key, pki.Gateway, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	gs := rpc.NewServer(testLogger(), id)
	ps := f.g.PushServer()
	gochatv1.RegisterPushServiceServer(gs, ps)
	gochatv1.RegisterGatewayAdminServiceServer(gs, ps)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return ca, ln.Addr().String()
}

// Only the operator and a person's admin credential may drain a gateway or
// read its stats, only im-task may push messages, and other gateways may
// relay typing and presence frames only: a caller without a certificate,
// with one from another CA, or of another component is refused, and
// nothing drains.
func TestAdminAndPushNeedTheirCredential(t *testing.T) {
	f := start(t, nil)
	ca, addr := f.serveGRPC(t)
	noCert, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { noCert.Close() })
	var ctx context.Context
	drain := func(conn grpc.ClientConnInterface) error {
		_, err := gochatv1.NewGatewayAdminServiceClient(conn).Drain(ctx, &gochatv1.DrainRequest{WindowMs: 1000, TimeoutMs: 2000})
		return err
	}
	stats := func(conn grpc.ClientConnInterface) error {
		_, err := gochatv1.NewGatewayAdminServiceClient(conn).Stats(ctx, &gochatv1.StatsRequest{})
		return err
	}
	pushFrame := func(frame string) func(grpc.ClientConnInterface) error {
		return func(conn grpc.ClientConnInterface) error {
			_, err := gochatv1.NewPushServiceClient(conn).Push(ctx, &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{{SessionIds: []string{"nobody"}, Frame: []byte(frame)}}})
			return err
		}
	}
	push := pushFrame(`{"type":"message","data":{"conversation_id":"c","seq":1}}`)
	typing := pushFrame(`{"type":"typing","data":{"conversation_id":"c","user_id":"u"}}`)
	for _, tt := range []struct {
		name string
		conn grpc.ClientConnInterface
		call func(grpc.ClientConnInterface) error
		want codes.Code
	}{
		{"drain without a certificate", noCert, drain, codes.Unauthenticated},
		{"stats without a certificate", noCert, stats, codes.Unauthenticated},
		{"push without a certificate", noCert, push, codes.Unauthenticated},
		{"drain with another CA's operator certificate", foreignOperator(t, ca, addr), drain, codes.Unauthenticated},
		{"drain as im-task", tc.DialAs(t, ca, addr, pki.Task, pki.Gateway), drain, codes.PermissionDenied},
		{"stats as im-logic", tc.DialAs(t, ca, addr, pki.Logic, pki.Gateway), stats, codes.PermissionDenied},
		{"push as the operator", tc.DialAs(t, ca, addr, pki.Operator, pki.Gateway), push, codes.PermissionDenied},
		{"push a message as another gateway", tc.DialAs(t, ca, addr, pki.Gateway, pki.Gateway), push, codes.PermissionDenied},
		{"push as im-logic", tc.DialAs(t, ca, addr, pki.Logic, pki.Gateway), typing, codes.PermissionDenied},
		// Positive controls: the same calls with the right credential pass.
		{"stats as the operator", tc.DialAs(t, ca, addr, pki.Operator, pki.Gateway), stats, codes.OK},
		{"stats as admin", tc.DialAs(t, ca, addr, pki.Admin, pki.Gateway), stats, codes.OK},
		{"push as im-task", tc.DialAs(t, ca, addr, pki.Task, pki.Gateway), push, codes.OK},
		{"relay typing as another gateway", tc.DialAs(t, ca, addr, pki.Gateway, pki.Gateway), typing, codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if got := status.Code(tt.call(tt.conn)); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			if f.g.draining.Load() {
				t.Fatal("a refused call started a drain")
			}
		})
	}
}

// foreignOperator dials as an operator whose certificate comes from
// another CA: it trusts the gateway's CA, so only the gateway can refuse it.
func foreignOperator(t *testing.T, ca *pki.CA, addr string) *grpc.ClientConn {
	t.Helper()
	other := tc.NewCA(t)
	files := tc.WriteFiles(t, append(ca.CertPEM(), other.CertPEM()...), other, pki.Operator)
	id, err := rpc.LoadIdentity(files.CA, files.Cert, files.Key, pki.Operator, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := rpc.Dial(addr, id, pki.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// drainWatch is what one client saw of a drain.
type drainWatch struct {
	reconnectAt time.Time
	afterMs     int64
	closeAt     time.Time
	closeCode   ws.StatusCode
	order       []string // frame types, in order
	seqs        map[int64]bool
}

// watch reads a client's frames until the connection ends.
func (c *client) watch(w *drainWatch) {
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			return
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return
		}
		now := time.Now()
		if h.OpCode == ws.OpClose {
			w.closeAt = now
			w.closeCode, _ = ws.ParseCloseFrameData(p)
			w.order = append(w.order, "close")
			return
		}
		var m struct {
			Type string `json:"type"`
			Data struct {
				AfterMs int64 `json:"after_ms"`
				Seq     int64 `json:"seq"`
			} `json:"data"`
		}
		if err := json.Unmarshal(p, &m); err != nil {
			continue
		}
		w.order = append(w.order, m.Type)
		switch m.Type {
		case "reconnect":
			w.reconnectAt, w.afterMs = now, m.Data.AfterMs
		case "message":
			w.seqs[m.Data.Seq] = true
		}
	}
}

func TestDrain(t *testing.T) {
	const (
		n       = 60
		window  = 2 * time.Second
		timeout = 6 * time.Second
	)
	f := start(t, nil)
	admin, push := f.grpc(t)
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = f.dial(t)
	}
	var sessionIDs []string
	f.g.hub.each(func(s *session) { sessionIDs = append(sessionIDs, s.id) })
	if len(sessionIDs) != n {
		t.Fatalf("%d sessions, want %d", len(sessionIDs), n)
	}
	watches := make([]*drainWatch, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		watches[i] = &drainWatch{seqs: map[int64]bool{}}
		wg.Add(1)
		go func() { defer wg.Done(); c.watch(watches[i]) }()
	}

	// Pushes go on through the drain: every session must get every frame
	// that Push reports as queued to it.
	ctx := context.Background()
	queued := map[string]map[int64]bool{}
	for _, id := range sessionIDs {
		queued[id] = map[int64]bool{}
	}
	stopPush := make(chan struct{})
	pushDone := make(chan error, 1)
	go func() {
		for seq := int64(1); ; seq++ {
			select {
			case <-stopPush:
				pushDone <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			frame := []byte(fmt.Sprintf(`{"type":"message","data":{"seq":%d}}`, seq))
			resp, err := push.Push(ctx, &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{{SessionIds: sessionIDs, Frame: frame}}})
			if err != nil {
				pushDone <- err
				return
			}
			unknown := map[string]bool{}
			for _, id := range resp.UnknownSessionIds {
				unknown[id] = true
			}
			if len(unknown) == n {
				pushDone <- nil
				return
			}
			for _, id := range sessionIDs {
				if !unknown[id] {
					queued[id][seq] = true
				}
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)

	before := time.Now()
	resp, err := admin.Drain(ctx, &gochatv1.DrainRequest{WindowMs: window.Milliseconds(), TimeoutMs: timeout.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.Stats
	if !st.Draining || st.DrainStartedUnixMs < before.UnixMilli() || st.DrainDeadlineUnixMs != st.DrainStartedUnixMs+timeout.Milliseconds() {
		t.Fatalf("Drain answered %+v", st)
	}
	// A second Drain changes nothing.
	again, err := admin.Drain(ctx, &gochatv1.DrainRequest{WindowMs: 1, TimeoutMs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if again.Stats.DrainStartedUnixMs != st.DrainStartedUnixMs || again.Stats.DrainDeadlineUnixMs != st.DrainDeadlineUnixMs || !again.Stats.Draining {
		t.Fatalf("second Drain changed the drain: %+v then %+v", st, again.Stats)
	}
	// Not ready, and no new clients: 503 with Retry-After.
	r, err := http.Get("http://" + f.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining: %d", r.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+f.addr+"/v1/ws?token="+f.token, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	r, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("upgrade while draining: %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}

	wg.Wait() // every client saw its connection end
	close(stopPush)
	if err := <-pushDone; err != nil {
		t.Fatalf("push during the drain: %v", err)
	}
	waitFor(t, "the drain to empty the gateway", func() bool { return f.g.Sessions() == 0 && f.presence.count() == 0 })
	if s, err := admin.Stats(ctx, &gochatv1.StatsRequest{}); err != nil || s.Sessions != 0 || !s.Draining || s.DrainStartedUnixMs != st.DrainStartedUnixMs {
		t.Fatalf("Stats after the drain: %+v %v", s, err)
	}

	// Every client got reconnect, then its pushes, then 1001.
	var closes []time.Time
	var maxAfter int64
	for i, w := range watches {
		if w.reconnectAt.IsZero() || w.closeAt.IsZero() || w.closeCode != ws.StatusGoingAway {
			t.Fatalf("client %d: reconnect at %v, close at %v code %d; frames %v", i, w.reconnectAt, w.closeAt, w.closeCode, w.order)
		}
		if w.order[len(w.order)-1] != "close" {
			t.Fatalf("client %d: frames after the close: %v", i, w.order)
		}
		// The close comes no earlier than after_ms after the reconnect frame
		// (less the reconnect frame's own trip to this client).
		if got := w.closeAt.Sub(w.reconnectAt); got < time.Duration(w.afterMs)*time.Millisecond-100*time.Millisecond {
			t.Errorf("client %d closed %s after its reconnect frame, before its after_ms %d", i, got, w.afterMs)
		}
		if w.afterMs < 0 || w.afterMs > window.Milliseconds() {
			t.Errorf("client %d: after_ms %d outside the window", i, w.afterMs)
		}
		maxAfter = max(maxAfter, w.afterMs)
		closes = append(closes, w.closeAt)
	}
	if maxAfter < window.Milliseconds()*8/10 {
		t.Errorf("after_ms reach %d ms: not spread over the %s window", maxAfter, window)
	}
	// Pushes during the drain arrive: each client holds what Push queued to
	// it. Which client is which session is not known here, so compare sets
	// by size and content: every queued set must match some client's seqs.
	got := map[string]int{}
	for _, w := range watches {
		got[seqKey(w.seqs)]++
	}
	for id, q := range queued {
		k := seqKey(q)
		if got[k] == 0 {
			t.Fatalf("session %s was queued %d pushes that no client received in full", id, len(q))
		}
		got[k]--
	}
	// The close rate is bounded: n sessions over the window, so in any
	// interval of length L at most L·rate closes (plus slack for scheduling
	// and the clients' own reading), and the closes span most of the window.
	rate := float64(n) / window.Seconds()
	sort.Slice(closes, func(i, j int) bool { return closes[i].Before(closes[j]) })
	const interval = 500 * time.Millisecond
	bound := int(rate*interval.Seconds()*1.3) + 3
	for i := range closes {
		j := i
		for j < len(closes) && closes[j].Sub(closes[i]) < interval {
			j++
		}
		if j-i > bound {
			t.Fatalf("%d closes within %s from close %d, bound %d (rate %.0f/s)", j-i, interval, i, bound, rate)
		}
	}
	if span := closes[len(closes)-1].Sub(closes[0]); span < window*7/10 {
		t.Fatalf("closes spanned %s, the window is %s", span, window)
	}
}

func seqKey(m map[int64]bool) string {
	var s []int64
	for k := range m {
		s = append(s, k)
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprint(s)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDrainRefusals(t *testing.T) {
	f := start(t, nil)
	admin, _ := f.grpc(t)
	for _, tt := range []struct {
		name string
		in   *gochatv1.DrainRequest
	}{
		{"negative window", &gochatv1.DrainRequest{WindowMs: -1}},
		{"window over timeout", &gochatv1.DrainRequest{WindowMs: 2000, TimeoutMs: 1000}},
		{"over a day", &gochatv1.DrainRequest{TimeoutMs: 1 << 50}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := admin.Drain(context.Background(), tt.in)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if f.g.draining.Load() {
				t.Fatal("a refused Drain started draining")
			}
		})
	}
}

// A client that neither leaves on reconnect nor reads its close frame is cut
// at the drain's deadline, not before, and leaves presence then.
func TestDrainDeadlineCutsStuckClient(t *testing.T) {
	f := start(t, func(c *Config) { c.WriteTimeout = time.Minute; c.MaxQueueBytes = 64 << 20 })
	admin, push := f.grpc(t)
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
	conn, _, _, err := d.Dial(context.Background(), "ws://"+f.addr+"/v1/ws?token="+f.token)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var s *session
	waitFor(t, "the session", func() bool { f.g.hub.each(func(x *session) { s = x }); return s != nil })
	// Fill the socket until the gateway's writer is stuck: frames stay in
	// the session's queue, untaken, for a while with nothing new pushed (a
	// writer that is only busy takes the whole queue on its next round).
	big := []byte(`{"type":"message","data":{"content":"` + fmt.Sprintf("%060000d", 0) + `"}}`)
	queued := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.queuedBytes
	}
	stuck := false
	for i := 0; i < 100 && !stuck; i++ {
		frames := make([]*gochatv1.Delivery, 20)
		for j := range frames {
			frames[j] = &gochatv1.Delivery{SessionIds: []string{s.id}, Frame: big}
		}
		if _, err := push.Push(context.Background(), &gochatv1.PushRequest{Deliveries: frames}); err != nil {
			t.Fatal(err)
		}
		before := queued()
		time.Sleep(300 * time.Millisecond)
		stuck = before > 0 && queued() == before
	}
	if !stuck {
		t.Fatal("could not fill the client's socket")
	}
	const timeout = 2 * time.Second
	resp, err := admin.Drain(context.Background(), &gochatv1.DrainRequest{WindowMs: 200, TimeoutMs: timeout.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.UnixMilli(resp.Stats.DrainDeadlineUnixMs)
	time.Sleep(time.Until(deadline.Add(-400 * time.Millisecond)))
	if f.g.Sessions() != 1 || f.presence.count() != 1 {
		t.Fatalf("before the deadline: sessions %d, presence %d; want the stuck client still held", f.g.Sessions(), f.presence.count())
	}
	waitFor(t, "the stuck client cut at the deadline", func() bool { return f.g.Sessions() == 0 && f.presence.count() == 0 })
	if late := time.Since(deadline); late > time.Second {
		t.Fatalf("the stuck client was cut %s after the deadline", late)
	}
}

// Stopping (SIGTERM in production) drains, and never takes longer than
// --drain-timeout, even when a longer drain asked for by Drain is under way.
func TestStopDrainsWithinTimeout(t *testing.T) {
	for _, tt := range []struct {
		name       string
		adminFirst bool
	}{
		{"stop alone", false},
		{"stop during a longer drain", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const stopTimeout = 1500 * time.Millisecond
			f := start(t, func(c *Config) {
				c.DrainOnStop, c.DrainWindow, c.DrainTimeout = true, time.Second, stopTimeout
				c.MaxUserSessions = 1000 // every session here is the one test user's
			})
			admin, _ := f.grpc(t)
			// Enough sessions that the admin drain's own schedule (at least
			// 20 closes a second) runs well past the stop's timeout: only
			// the stop's cut can end it in time.
			const n = 120
			watches := make([]*drainWatch, n)
			var wg sync.WaitGroup
			for i := range watches {
				c := f.dial(t)
				watches[i] = &drainWatch{seqs: map[int64]bool{}}
				wg.Add(1)
				go func() { defer wg.Done(); c.watch(watches[i]) }()
			}
			if tt.adminFirst {
				if _, err := admin.Drain(context.Background(), &gochatv1.DrainRequest{WindowMs: 20000, TimeoutMs: 40000}); err != nil {
					t.Fatal(err)
				}
			}
			began := time.Now()
			if err := f.stop(); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			took := time.Since(began)
			wg.Wait()
			if took > stopTimeout+time.Second {
				t.Fatalf("stopping took %s, the drain timeout is %s", took, stopTimeout)
			}
			for i, w := range watches {
				if w.reconnectAt.IsZero() || w.closeCode != ws.StatusGoingAway {
					t.Fatalf("client %d: reconnect at %v, close %d; frames %v", i, w.reconnectAt, w.closeCode, w.order)
				}
			}
			if f.presence.count() != 0 {
				t.Fatalf("presence still holds %d sessions", f.presence.count())
			}
		})
	}
}

// TestReconnectToldOnce: a session that raced the drain's start is reached
// by the drain's list and by its own handshake; it gets one reconnect frame.
func TestReconnectToldOnce(t *testing.T) {
	g := &Gateway{cfg: Config{MaxQueueBytes: 1 << 20}}
	s := &session{g: g, writing: true} // a writer is busy: frames stay queued
	if !s.tellReconnect(3 * time.Second) {
		t.Fatal("the first reconnect frame was refused")
	}
	if s.tellReconnect(0) {
		t.Fatal("a second reconnect frame was queued")
	}
	if len(s.queue) != 1 {
		t.Fatalf("%d frames queued, want the one reconnect", len(s.queue))
	}
	var fr struct {
		Type string `json:"type"`
		Data struct {
			AfterMs int64 `json:"after_ms"`
		} `json:"data"`
	}
	if err := json.Unmarshal(s.queue[0].payload, &fr); err != nil || fr.Type != "reconnect" || fr.Data.AfterMs != 3000 {
		t.Fatalf("queued %s (%v), want reconnect after 3000 ms", s.queue[0].payload, err)
	}
	closing := &session{g: g, writing: true, closing: true}
	if closing.tellReconnect(0) || len(closing.queue) != 0 {
		t.Fatal("a closing session was told to reconnect")
	}
}
