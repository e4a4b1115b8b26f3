package task

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestSign(t *testing.T) {
	// printf '1700000000.{}' | openssl dgst -sha256 -hmac k
	const want = "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
	got := Sign([]byte("k"), "1700000000", []byte("{}"))
	if got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
	if Sign([]byte("k"), "1700000001", []byte("{}")) == got {
		t.Fatal("the timestamp must be signed")
	}
}

func TestNotifierRetries(t *testing.T) {
	tests := []struct {
		name      string
		statuses  []int
		wantCalls int32
		wantErr   bool
	}{
		{"ok at once", []int{200}, 1, false},
		{"server error then ok", []int{503, 200}, 2, false},
		{"client error is final", []int{400}, 1, true},
		{"gives up after three", []int{500, 500, 500}, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				n := calls.Add(1)
				w.WriteHeader(tt.statuses[min(int(n)-1, len(tt.statuses)-1)])
			}))
			defer srv.Close()
			n := newNotifier(srv.URL, "s", slog.New(slog.NewTextHandler(io.Discard, nil)))
			err := n.post(context.Background(), []Notification{{UserID: "u"}})
			if (err != nil) != tt.wantErr || calls.Load() != tt.wantCalls {
				t.Fatalf("err %v after %d calls; want err=%v after %d", err, calls.Load(), tt.wantErr, tt.wantCalls)
			}
		})
	}
}
