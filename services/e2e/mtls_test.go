package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	tc "github.com/gochat/gochat/services/testcluster"
)

// testInternalAuth calls the running processes' gRPC ports the way an
// intruder on the pod network would, and the way their real callers do.
func testInternalAuth(t *testing.T, c *tc.Cluster) {
	// A live session, so that Stats has something to count.
	a := register(t, c, "mtls")
	ws := tc.DialWS(t, c.WSURL(), a.Token)
	defer ws.Close()

	raw := func(addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	// TLS that accepts any server and presents no certificate.
	noCert := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the client under test is the intruder
	foreignCA := tc.NewCA(t)
	foreignFiles := tc.IssueFiles(t, foreignCA, pki.Task)
	foreignPair, err := tls.LoadX509KeyPair(foreignFiles.Cert, foreignFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	foreign := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{foreignPair}}) //nolint:gosec // as above

	// A message frame to a session nobody holds: only im-task may push it.
	push := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewPushServiceClient(conn).Push(ctx5(t), &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{
			{SessionIds: []string{"nobody"}, Frame: []byte(`{"type":"message","data":{}}`)}}})
		return err
	}
	var sessions int64
	stats := func(conn *grpc.ClientConn) error {
		st, err := gochatv1.NewGatewayAdminServiceClient(conn).Stats(ctx5(t), &gochatv1.StatsRequest{})
		if err == nil {
			sessions = st.Sessions
		}
		return err
	}
	getCreds := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewRepoServiceClient(conn).GetCredentials(ctx5(t), &gochatv1.GetCredentialsRequest{Username: a.User.Username})
		return err
	}
	actAs := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewLogicServiceClient(conn).ListConversations(ctx5(t), &gochatv1.ListConversationsRequest{UserId: a.User.ID})
		return err
	}
	tests := []struct {
		name string
		conn *grpc.ClientConn
		call func(*grpc.ClientConn) error
		want codes.Code
	}{
		{"Push without a certificate", raw(c.GatewayGRPC, noCert), push, codes.Unauthenticated},
		{"Push with another CA's task certificate", raw(c.GatewayGRPC, foreign), push, codes.Unauthenticated},
		{"Push a message as the gateway", c.Dial(t, c.GatewayGRPC, pki.Gateway, pki.Gateway), push, codes.PermissionDenied},
		{"Push as im-task", c.Dial(t, c.GatewayGRPC, pki.Task, pki.Gateway), push, codes.OK},
		{"Stats without a certificate", raw(c.GatewayGRPC, noCert), stats, codes.Unauthenticated},
		{"Stats as im-task", c.Dial(t, c.GatewayGRPC, pki.Task, pki.Gateway), stats, codes.PermissionDenied},
		{"Stats as the admin", c.Dial(t, c.GatewayGRPC, pki.Admin, pki.Gateway), stats, codes.OK},
		{"Stats as the operator", c.Dial(t, c.GatewayGRPC, pki.Operator, pki.Gateway), stats, codes.OK},
		{"GetCredentials without a certificate", raw(c.RepoGRPC, noCert), getCreds, codes.Unauthenticated},
		{"GetCredentials with another CA's certificate", raw(c.RepoGRPC, foreign), getCreds, codes.Unauthenticated},
		{"GetCredentials as im-task", c.Dial(t, c.RepoGRPC, pki.Task, pki.Repo), getCreds, codes.PermissionDenied},
		{"GetCredentials as the gateway", c.Dial(t, c.RepoGRPC, pki.Gateway, pki.Repo), getCreds, codes.PermissionDenied},
		{"GetCredentials as im-logic", c.Dial(t, c.RepoGRPC, pki.Logic, pki.Repo), getCreds, codes.OK},
		{"caller_id without a certificate", raw(c.LogicGRPC, noCert), actAs, codes.Unauthenticated},
		{"caller_id as im-task", c.Dial(t, c.LogicGRPC, pki.Task, pki.Logic), actAs, codes.PermissionDenied},
		{"caller_id as the gateway", c.Dial(t, c.LogicGRPC, pki.Gateway, pki.Logic), actAs, codes.OK},
		{"plaintext", raw(c.RepoGRPC, insecure.NewCredentials()), getCreds, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call(tt.conn)); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
	if sessions < 1 {
		t.Fatalf("Stats counted %d sessions with one connected", sessions)
	}

	// /metrics is on the metrics address, not the public client port.
	for _, tt := range []struct {
		url  string
		want int
	}{{c.URL() + "/metrics", http.StatusNotFound}, {"http://" + c.GatewayMetrics + "/metrics", http.StatusOK}} {
		resp, err := http.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s: %d, want %d", tt.url, resp.StatusCode, tt.want)
		}
	}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestInternalTLSRequired: a service without TLS files does not start in
// plaintext by accident; it says what is missing.
func TestInternalTLSRequired(t *testing.T) {
	ca := tc.NewCA(t)
	wrong := tc.IssueFiles(t, ca, pki.Task)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no TLS flags", nil, "--tls-ca, --tls-cert and --tls-key"},
		{"another component's certificate", wrong.Args(), "is for component"},
		{"insecure and TLS together", append(wrong.Args(), "--insecure-internal"), "exclude each other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"repo", "--grpc-addr", tc.FreePort(t), "--metrics-addr", ""}, tt.args...)
			cmd := exec.Command(tc.Binary(t), args...)
			cmd.Env = []string{"GOCHAT_SQLITE_PATH=" + t.TempDir() + "/db"}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("im-repo started: %s", out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Fatalf("output %q does not say %q", out, tt.want)
			}
		})
	}
}
