// Package readiness tells whether a service can do its work: it checks the
// service's dependencies (MySQL, Redis, im-repo, Kafka) in the background and
// answers probes from the last result, so a probe never waits on a dependency
// and a burst of probes never becomes a burst of pings.
package readiness

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Check is one dependency: Probe returns nil while it is usable.
type Check struct {
	Name  string
	Probe func(ctx context.Context) error
}

// Monitor runs its checks every interval, each bounded by timeout, and keeps
// the last outcome. It is not ready until a first round has passed.
type Monitor struct {
	checks   []Check
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	grpc     *health.Server

	mu      sync.Mutex
	checked bool
	failing map[string]string // check name -> what went wrong
}

// New returns a monitor of checks. A non-nil grpcHealth follows the outcome
// (SERVING / NOT_SERVING for the whole server).
func New(log *slog.Logger, interval, timeout time.Duration, grpcHealth *health.Server, checks ...Check) *Monitor {
	m := &Monitor{checks: checks, interval: interval, timeout: timeout, log: log, grpc: grpcHealth, failing: map[string]string{}}
	if grpcHealth != nil {
		grpcHealth.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	return m
}

// Run checks until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		m.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// round runs every check at once, so one slow dependency costs one timeout,
// not one per check.
func (m *Monitor) round(ctx context.Context) {
	errs := make([]error, len(m.checks))
	var wg sync.WaitGroup
	for i, c := range m.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, m.timeout)
			defer cancel()
			errs[i] = c.Probe(cctx)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // stopping: the outcome says nothing about the dependencies
	}
	failing := map[string]string{}
	for i, c := range m.checks {
		if errs[i] != nil {
			failing[c.Name] = errs[i].Error()
		}
	}
	m.mu.Lock()
	wasReady := m.checked && len(m.failing) == 0
	first := !m.checked
	m.checked, m.failing = true, failing
	m.mu.Unlock()
	ready := len(failing) == 0
	if ready != wasReady || first {
		if ready {
			m.log.Info("ready: every dependency answers")
		} else {
			m.log.Warn("not ready", "failing", describe(failing))
		}
		if m.grpc != nil {
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if ready {
				st = healthpb.HealthCheckResponse_SERVING
			}
			m.grpc.SetServingStatus("", st)
		}
	}
}

// Ready reports whether the last round passed, and otherwise why not.
func (m *Monitor) Ready() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.checked {
		return false, "dependencies not checked yet"
	}
	if len(m.failing) > 0 {
		return false, describe(m.failing)
	}
	return true, ""
}

// ServeHTTP answers 200 "ok" when ready, else 503 naming what fails.
func (m *Monitor) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	ok, why := m.Ready()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %s\n", why)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

func describe(failing map[string]string) string {
	parts := make([]string, 0, len(failing))
	for name, err := range failing {
		parts = append(parts, name+": "+err)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}
