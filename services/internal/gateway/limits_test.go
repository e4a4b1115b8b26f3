package gateway

import (
	"testing"
	"time"
	"unsafe"
)

func TestFrameBucket(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // when each frame arrives
		want  []bool
	}{
		{"a burst, then refused", 1, 3, []time.Duration{10 * ms, 10 * ms, 10 * ms, 10 * ms}, []bool{true, true, true, false}},
		{"refills at the rate", 10, 1, []time.Duration{10 * ms, 20 * ms, 130 * ms, 150 * ms, 260 * ms}, []bool{true, false, true, false, true}},
		{"never above the burst", 100, 2, []time.Duration{10 * ms, 5000 * ms, 5000 * ms, 5000 * ms}, []bool{true, true, true, false}},
		{"a clock that goes back refills nothing", 1, 1, []time.Duration{1000 * ms, 500 * ms, 900 * ms}, []bool{true, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b frameBucket
			for i, at := range tt.at {
				if got := b.allow(at, tt.rate, tt.burst); got != tt.want[i] {
					t.Fatalf("frame %d at %s: allowed %v, want %v", i, at, got, tt.want[i])
				}
			}
		})
	}
}

// TestSessionSize keeps what an idle session costs in view: every gateway
// holds one per connection, and a field added here is paid a million times.
func TestSessionSize(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 320 {
		t.Fatalf("a session is %d bytes; it was at most 320 (the allocator's size class)", n)
	}
}
