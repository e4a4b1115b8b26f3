package task

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/rpc"
)

func TestPushChunks(t *testing.T) {
	mk := func(n, frameBytes, sessions int) []delivery {
		var out []delivery
		for i := 0; i < n; i++ {
			ids := make([]string, sessions)
			for j := range ids {
				ids[j] = strings.Repeat("s", 26)
			}
			out = append(out, delivery{convID: "c", d: &gochatv1.Delivery{SessionIds: ids, Frame: make([]byte, frameBytes)}})
		}
		return out
	}
	tests := []struct {
		name       string
		in         []delivery
		wantChunks int
	}{
		{"none", nil, 0},
		{"small ones fit in one push", mk(100, 100, 3), 1},
		{"by count", mk(12000, 10, 1), 3},
		{"by bytes: 20 MiB of frames, over the gateway's 16 MiB message limit", mk(20, 1<<20, 1), 7}, // 3 of 1 MiB + ids per 4 MiB
		{"one delivery over the byte bound goes alone", mk(3, 5<<20, 1), 3},
		{"a delivery to more than partSessions goes alone", append(append(mk(2, 10, 1), mk(1, 10, partSessions+1)...), mk(2, 10, 1)...), 3},
		{"a delivery to partSessions goes with others", append(mk(2, 10, 1), mk(1, 10, partSessions)...), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chunks := pushChunks(tt.in)
			if len(chunks) != tt.wantChunks {
				t.Fatalf("%d chunks, want %d", len(chunks), tt.wantChunks)
			}
			n := 0
			for _, c := range chunks {
				bytes := 0
				for _, d := range c {
					bytes += len(d.d.Frame)
				}
				if len(c) > maxDeliveriesPerPush || (len(c) > 1 && bytes > maxPushBytes) {
					t.Fatalf("a chunk of %d deliveries and %d bytes", len(c), bytes)
				}
				for _, d := range c {
					if d != tt.in[n] {
						t.Fatal("chunks changed the order of deliveries")
					}
					n++
				}
			}
			if n != len(tt.in) {
				t.Fatalf("chunks hold %d deliveries of %d", n, len(tt.in))
			}
		})
	}
}

// TestPushParts: a delivery to more sessions than a part holds reaches the
// gateway as parts pushed at once, each to at most partSessions sessions,
// together covering every session once; what follows it is pushed only
// after every part was answered, so a session's frames keep their order.
func TestPushParts(t *testing.T) {
	gw := &recordingGateway{delay: 200 * time.Millisecond}
	srv := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	gochatv1.RegisterPushServiceServer(srv, gw)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	tk := New(Config{PushTimeout: 10 * time.Second}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer tk.gateways.closeAll()

	wide := make([]string, 3*partSessions-100)
	for i := range wide {
		wide[i] = fmt.Sprintf("s%05d", i)
	}
	after := []string{wide[0], wide[len(wide)-1]}
	unknown, err := tk.pushAll(context.Background(), map[string][]delivery{ln.Addr().String(): {
		{convID: "big", d: &gochatv1.Delivery{SessionIds: wide, Frame: []byte("m1")}},
		{convID: "big", d: &gochatv1.Delivery{SessionIds: after, Frame: []byte("m2")}},
	}})
	if err != nil || len(unknown) != 0 {
		t.Fatalf("push: unknown %v, err %v", unknown, err)
	}
	gw.mu.Lock()
	defer gw.mu.Unlock()
	if len(gw.calls) != 4 {
		t.Fatalf("%d push calls, want 3 parts and the next delivery", len(gw.calls))
	}
	seen := map[string]int{}
	var lastPartDone time.Time
	for _, c := range gw.calls[:3] {
		if len(c.sessions) > partSessions || c.frame != "m1" {
			t.Fatalf("a part of %d sessions with frame %q", len(c.sessions), c.frame)
		}
		for _, id := range c.sessions {
			seen[id]++
		}
		if c.done.After(lastPartDone) {
			lastPartDone = c.done
		}
	}
	if len(seen) != len(wide) {
		t.Fatalf("the parts reach %d sessions, want %d", len(seen), len(wide))
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("session %s in %d parts", id, n)
		}
	}
	if next := gw.calls[3]; next.frame != "m2" || next.start.Before(lastPartDone) {
		t.Fatalf("the next delivery (%q) started before the last part was answered", next.frame)
	}
	if first, second := gw.calls[0].start, gw.calls[1].start; second.Sub(first) >= gw.delay {
		t.Fatalf("the parts went one after the other (%s apart), not at once", second.Sub(first))
	}
}

// recordingGateway is a gateway's push service that records each call and
// answers after a delay.
type recordingGateway struct {
	gochatv1.UnimplementedPushServiceServer
	delay time.Duration
	mu    sync.Mutex
	calls []pushCallSeen
}

type pushCallSeen struct {
	frame       string
	sessions    []string
	start, done time.Time
}

func (g *recordingGateway) Push(_ context.Context, in *gochatv1.PushRequest) (*gochatv1.PushResponse, error) {
	start := time.Now()
	time.Sleep(g.delay)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range in.Deliveries {
		g.calls = append(g.calls, pushCallSeen{frame: string(d.Frame), sessions: d.SessionIds, start: start, done: time.Now()})
	}
	return &gochatv1.PushResponse{Queued: int64(len(in.Deliveries))}, nil
}

func TestGatewayBreaker(t *testing.T) {
	g := &gatewayConns{conns: map[string]*grpc.ClientConn{}, downTill: map[string]time.Time{}, cooldown: map[string]time.Duration{}}
	if g.isDown("a") {
		t.Fatal("a gateway never seen is down")
	}
	g.down("a")
	if !g.isDown("a") || g.isDown("b") {
		t.Fatal("down marks only the failed gateway")
	}
	first := g.cooldown["a"]
	g.down("a")
	if g.cooldown["a"] != 2*first {
		t.Fatalf("cooldown %s after a second failure, want %s", g.cooldown["a"], 2*first)
	}
	for i := 0; i < 20; i++ {
		g.down("a")
	}
	if g.cooldown["a"] != maxCooldown {
		t.Fatalf("cooldown %s, want the cap %s", g.cooldown["a"], maxCooldown)
	}
	g.up("a")
	if g.isDown("a") {
		t.Fatal("a gateway that took a push is still down")
	}
}
