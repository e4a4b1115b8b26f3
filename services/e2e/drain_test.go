package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// SIGTERM makes a real gateway process drain: every client is told to
// reconnect and then closed with 1001, the process exits within its drain timeout,
// and presence holds none of its sessions afterwards.
func TestGatewaySIGTERMDrains(t *testing.T) {
	const timeout = 4 * time.Second
	c := tc.StartCluster(t, tc.Options{GatewayFlags: []string{"--drain-window=2s", "--drain-timeout=" + timeout.String()}})
	ann, bob := register(t, c, "ann"), register(t, c, "bob")
	const perUser = 5
	var clients []*tc.WS
	for i := 0; i < perUser; i++ {
		clients = append(clients, tc.DialWS(t, c.WSURL(), ann.Token), tc.DialWS(t, c.WSURL(), bob.Token))
	}
	gwConn := c.Dial(t, c.GatewayGRPC, pki.Operator, pki.Gateway)
	ctx := context.Background()
	st, err := gochatv1.NewGatewayAdminServiceClient(gwConn).Stats(ctx, &gochatv1.StatsRequest{})
	if err != nil || st.Sessions != 2*perUser || st.Draining {
		t.Fatalf("Stats before: %+v %v", st, err)
	}

	start := time.Now()
	if err := c.Gateway.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, cl := range clients {
		var r clientapi.Reconnect
		cl.Next(t, "reconnect", 5*time.Second).Decode(t, &r)
		if r.AfterMs < 0 || r.AfterMs > 2000 {
			t.Fatalf("client %d: after_ms %d outside the 2s window", i, r.AfterMs)
		}
		code, closed := cl.Closed(timeout + 2*time.Second)
		if !closed || code != ws.StatusGoingAway {
			t.Fatalf("client %d: closed %v with %d, want 1001", i, closed, code)
		}
	}
	waitUntil(t, "the gateway process to exit", timeout+3*time.Second, c.Gateway.Exited)
	t.Logf("the gateway exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))

	repoConn := c.Dial(t, c.RepoGRPC, pki.Task, pki.Repo)
	pr, err := gochatv1.NewRepoServiceClient(repoConn).GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{ann.User.ID, bob.User.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pr.Sessions) != 0 {
		t.Fatalf("presence still holds %d sessions of the drained gateway: %v", len(pr.Sessions), pr.Sessions)
	}
}

func waitUntil(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
