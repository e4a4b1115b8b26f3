package readiness

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMonitor(t *testing.T) {
	var redisDown, mysqlHangs atomic.Bool
	checks := []Check{
		{Name: "redis", Probe: func(context.Context) error {
			if redisDown.Load() {
				return errors.New("connection refused")
			}
			return nil
		}},
		{Name: "mysql", Probe: func(ctx context.Context) error {
			if mysqlHangs.Load() {
				<-ctx.Done() // a hung dependency is cut by the timeout
				return ctx.Err()
			}
			return nil
		}},
	}
	gh := health.NewServer()
	m := New(slog.New(slog.NewTextHandler(io.Discard, nil)), time.Hour, 50*time.Millisecond, gh, checks...)

	tests := []struct {
		name             string
		redis, mysqlHung bool
		wantCode         int
		wantBody         []string
		wantGRPC         healthpb.HealthCheckResponse_ServingStatus
	}{
		{"all up", false, false, 200, []string{"ok"}, healthpb.HealthCheckResponse_SERVING},
		{"redis down", true, false, 503, []string{"redis: connection refused"}, healthpb.HealthCheckResponse_NOT_SERVING},
		{"both failing", true, true, 503, []string{"mysql: context deadline exceeded", "redis: connection refused"}, healthpb.HealthCheckResponse_NOT_SERVING},
		{"back", false, false, 200, []string{"ok"}, healthpb.HealthCheckResponse_SERVING},
	}
	// Before a first round nothing is known: not ready.
	if ok, why := m.Ready(); ok || !strings.Contains(why, "not checked") {
		t.Fatalf("before any round: ready=%v %q", ok, why)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			redisDown.Store(tt.redis)
			mysqlHangs.Store(tt.mysqlHung)
			m.round(context.Background())
			rec := httptest.NewRecorder()
			m.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("status %d, want %d (%q)", rec.Code, tt.wantCode, rec.Body.String())
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(rec.Body.String(), w) {
					t.Fatalf("body %q lacks %q", rec.Body.String(), w)
				}
			}
			r, err := gh.Check(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil || r.Status != tt.wantGRPC {
				t.Fatalf("gRPC health = %v %v, want %v", r, err, tt.wantGRPC)
			}
		})
	}
}
