package task

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
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
