package testcluster

import (
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/rpc"
)

// NewCA makes a CA for one test's processes.
func NewCA(t testing.TB) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(t.Name(), time.Now(), 24*time.Hour)
	mustf(t, err, "create CA")
	return ca
}

// TLSFiles are the paths of one identity's CA bundle, certificate and key.
type TLSFiles struct{ CA, Cert, Key string }

// Env is the GOCHAT_TLS_* variables that point a gochat process at the files.
func (f TLSFiles) Env() []string {
	return []string{"GOCHAT_TLS_CA=" + f.CA, "GOCHAT_TLS_CERT=" + f.Cert, "GOCHAT_TLS_KEY=" + f.Key}
}

// Args is the same as flags.
func (f TLSFiles) Args() []string {
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
}

// IssueFiles issues component a certificate from ca and writes it, its key
// and the CA into a directory of its own.
func IssueFiles(t testing.TB, ca *pki.CA, component pki.Component) TLSFiles {
	t.Helper()
	return WriteFiles(t, ca.CertPEM(), ca, component)
}

// WriteFiles is IssueFiles with a CA bundle of the test's choosing (old and
// new CA during a rotation, say).
func WriteFiles(t testing.TB, bundle []byte, ca *pki.CA, component pki.Component) TLSFiles {
	t.Helper()
	f, err := pki.WriteIdentity(t.TempDir(), ca, bundle, component, time.Now(), 24*time.Hour)
	mustf(t, err, "write %s identity", component)
	return TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
}

// Dial connects to the gRPC service at addr as component as (a credential
// from the cluster's CA) and expects the server to be component server.
// Tests use it to call Stats as the operator or admin, or Push as im-task.
func (c *Cluster) Dial(t testing.TB, addr string, as, server pki.Component) *grpc.ClientConn {
	t.Helper()
	return DialAs(t, c.CA, addr, as, server)
}

// DialAs is Dial with a CA of the test's choosing.
func DialAs(t testing.TB, ca *pki.CA, addr string, as, server pki.Component) *grpc.ClientConn {
	t.Helper()
	f := IssueFiles(t, ca, as)
	id, err := rpc.LoadIdentity(f.CA, f.Cert, f.Key, as, quietLog)
	mustf(t, err, "load %s identity", as)
	conn, err := rpc.Dial(addr, id, server)
	mustf(t, err, "dial %s", addr)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// ReadCA reads a CA from its certificate and key files, such as the one
// gochat dev keeps in <data-dir>/tls.
func ReadCA(t testing.TB, certFile, keyFile string) *pki.CA {
	t.Helper()
	certPEM, err := os.ReadFile(certFile)
	mustf(t, err, "read CA certificate")
	keyPEM, err := os.ReadFile(keyFile)
	mustf(t, err, "read CA key")
	ca, err := pki.ParseCA(certPEM, keyPEM)
	mustf(t, err, "parse CA")
	return ca
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
