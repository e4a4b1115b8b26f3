package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	tc "github.com/gochat/gochat/services/testcluster"
)

// probe is one /healthz answer: the status and the body.
func probe(addr string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitProbe waits until addr's /healthz answers status with a body holding
// want (the failing dependency's name).
func waitProbe(t *testing.T, what, addr string, status int, want string) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(45 * time.Second)
	var (
		st   int
		body string
	)
	for time.Now().Before(deadline) {
		if st, body = probe(addr); st == status && strings.Contains(body, want) {
			t.Logf("%s /healthz %d after %s: %s", what, status, time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(body))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s /healthz: %d %q, want %d with %q", what, st, body, status, want)
}

// TestReadiness stops each service's dependencies (a Redis, a MariaDB and a
// Kafka broker of the test's own, and im-repo) and watches the readiness the
// operator probes (/healthz on the metrics port) go 503, naming the
// dependency, and come back once it is back.
func TestReadiness(t *testing.T) {
	redisProc, redisAddr := tc.OwnRedis(t)
	mysqlProc, mysqlDSN := tc.OwnMariaDB(t)
	c := tc.StartCluster(t, tc.Options{RedisAddr: redisAddr, MySQLServerDSN: mysqlDSN})
	repo, logic, task := c.RepoMetrics, c.LogicMetrics, c.TaskMetrics
	allReady := func(t *testing.T) {
		t.Helper()
		waitProbe(t, "im-repo", repo, 200, "ok")
		waitProbe(t, "im-logic", logic, 200, "ok")
		waitProbe(t, "im-task", task, 200, "ok")
	}
	allReady(t)

	tests := []struct {
		name string
		down *tc.Process
		// want is, per service, the dependency its probe names while down
		// ("" : it stays ready).
		repo, logic, task string
	}{
		{"Redis stopped", redisProc, "redis", "im-repo", "im-repo"},
		{"MariaDB stopped", mysqlProc, "mysql", "im-repo", "im-repo"},
		{"Kafka stopped", c.Kafka, "", "", "kafka"},
		{"im-repo killed", c.Repo, "", "im-repo", "im-repo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.down == c.Repo {
				tt.down.Kill()
			} else {
				tt.down.Stop()
			}
			for _, s := range []struct{ name, addr, want string }{{"im-repo", repo, tt.repo}, {"im-logic", logic, tt.logic}, {"im-task", task, tt.task}} {
				if s.want != "" {
					waitProbe(t, s.name, s.addr, 503, s.want)
				}
			}
			// The ones that depend on nothing that is down stay ready
			// (checked once the others have seen the outage).
			for _, s := range []struct{ name, addr, want string }{{"im-repo", repo, tt.repo}, {"im-logic", logic, tt.logic}, {"im-task", task, tt.task}} {
				if s.want == "" && tt.down != c.Repo {
					if st, body := probe(s.addr); st != 200 {
						t.Fatalf("%s not ready while only %s is down: %d %q", s.name, tt.name, st, body)
					}
				}
			}
			tt.down.Restart()
			allReady(t)
		})
	}
}
