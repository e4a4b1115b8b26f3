package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/gochat/gochat/api/pki"
)

// Identity is a process's mutual-TLS identity: its certificate and key, and
// the CA bundle it trusts. The files are read again whenever they change on
// disk (a Kubernetes Secret volume is updated in place on rotation), so new
// connections use the new certificate and CAs without a restart;
// established connections keep theirs until they are recycled.
type Identity struct {
	caFile, certFile, keyFile string
	want                      pki.Component
	log                       *slog.Logger

	mu      sync.Mutex
	stamp   [3]fileStamp
	cur     *loaded
	lastErr string
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

type loaded struct {
	cert      tls.Certificate
	leaf      *x509.Certificate
	roots     *x509.CertPool
	component pki.Component
}

// LoadIdentity reads the CA bundle, certificate and key, and checks that
// the certificate chains to the bundle and names the component want.
func LoadIdentity(caFile, certFile, keyFile string, want pki.Component, log *slog.Logger) (*Identity, error) {
	id := &Identity{caFile: caFile, certFile: certFile, keyFile: keyFile, want: want, log: log}
	if _, err := id.current(); err != nil {
		return nil, err
	}
	return id, nil
}

func stat(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size(), ino: inode(fi)}, nil
}

// current returns the loaded files, reading them again if any changed. A
// reload that fails (a half-written rotation, say) keeps the last good set
// and is retried on the next handshake.
func (id *Identity) current() (*loaded, error) {
	var stamps [3]fileStamp
	for i, p := range []string{id.caFile, id.certFile, id.keyFile} {
		s, err := stat(p)
		if err != nil {
			return id.keep(fmt.Errorf("TLS file: %w", err))
		}
		stamps[i] = s
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cur != nil && stamps == id.stamp {
		return id.cur, nil
	}
	l, err := id.read()
	if err != nil {
		if id.cur != nil {
			if msg := err.Error(); msg != id.lastErr {
				id.lastErr = msg
				id.log.Warn("TLS files changed but cannot be used; keeping the previous ones", "err", err)
			}
			return id.cur, nil
		}
		return nil, err
	}
	if id.cur != nil {
		id.log.Info("TLS files reloaded", "component", l.component, "fingerprint", pki.Fingerprint(l.leaf), "not_after", l.leaf.NotAfter)
	}
	id.cur, id.stamp, id.lastErr = l, stamps, ""
	return l, nil
}

func (id *Identity) keep(err error) (*loaded, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cur != nil {
		return id.cur, nil
	}
	return nil, err
}

func (id *Identity) read() (*loaded, error) {
	caPEM, err := os.ReadFile(id.caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	roots, err := pki.Pool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id.caFile, err)
	}
	certPEM, err := os.ReadFile(id.certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(id.keyFile)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", id.certFile, id.keyFile, err)
	}
	// The leaf must chain to the bundle it is served with: a certificate
	// from another CA would only fail later, at every peer.
	var inter []*x509.Certificate
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", id.certFile, err)
		}
		inter = append(inter, c)
	}
	comp, err := pki.Verify(cert.Leaf, inter, roots, x509.ExtKeyUsageClientAuth, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%s against %s: %w", id.certFile, id.caFile, err)
	}
	// A rotation never changes who a process is: a certificate for another
	// component is refused, at start and on reload alike.
	if comp != id.want {
		return nil, fmt.Errorf("certificate %s is for component %q, this is %q", id.certFile, comp, id.want)
	}
	return &loaded{cert: cert, leaf: cert.Leaf, roots: roots, component: comp}, nil
}

// Component is who this identity is.
func (id *Identity) Component() pki.Component {
	l, err := id.current()
	if err != nil {
		return ""
	}
	return l.component
}

func (id *Identity) certificate() (*tls.Certificate, error) {
	l, err := id.current()
	if err != nil {
		return nil, err
	}
	return &l.cert, nil
}

// verifyPeer checks a peer's chain against the current bundle and returns its component.
func (id *Identity) verifyPeer(chain []*x509.Certificate, usage x509.ExtKeyUsage) (pki.Component, error) {
	if len(chain) == 0 {
		return "", errors.New("no client certificate")
	}
	l, err := id.current()
	if err != nil {
		return "", err
	}
	return pki.Verify(chain[0], chain[1:], l.roots, usage, time.Now())
}

// serverCredentials ask every client for a certificate but let the
// handshake finish without one: the interceptor then answers
// Unauthenticated, a status the caller can act on, instead of a TLS alert
// that would look like an unavailable server.
func (id *Identity) serverCredentials() credentials.TransportCredentials {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return id.certificate() },
	}
	return &serverCreds{TransportCredentials: credentials.NewTLS(cfg), id: id}
}

// clientCredentials present this identity and accept only a server whose
// certificate chains to the bundle and names the component server. The
// dialled address is not checked: im-task dials gateways by pod IP.
func (id *Identity) clientCredentials(server pki.Component) credentials.TransportCredentials {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.certificate()
		},
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: pki.VerifyServer(func() (*x509.CertPool, error) {
			l, err := id.current()
			if err != nil {
				return nil, err
			}
			return l.roots, nil
		}, server),
	}
	return credentials.NewTLS(cfg)
}

// serverCreds verify the client's certificate once per connection and keep
// the outcome in the connection's AuthInfo for the interceptors.
type serverCreds struct {
	credentials.TransportCredentials
	id *Identity
}

// peerInfo is the AuthInfo of a connection: TLS details, and who the
// client proved to be (or why it proved nothing).
type peerInfo struct {
	credentials.TLSInfo
	component pki.Component
	err       error
}

func (c *serverCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, ai, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		return out, ai, err
	}
	info, ok := ai.(credentials.TLSInfo)
	if !ok {
		return out, ai, nil
	}
	comp, verr := c.id.verifyPeer(info.State.PeerCertificates, x509.ExtKeyUsageClientAuth)
	return out, peerInfo{TLSInfo: info, component: comp, err: verr}, nil
}

func (c *serverCreds) Clone() credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: c.TransportCredentials.Clone(), id: c.id}
}

// Caller is the verified component that made the call of ctx, for a
// handler whose rule depends on the caller beyond the authorization table;
// "" under --insecure-internal (plaintext, nothing verified).
func Caller(ctx context.Context) pki.Component {
	c, err := callerOf(ctx)
	if err != nil {
		return ""
	}
	return c
}

// callerOf is the verified component of the peer of ctx.
func callerOf(ctx context.Context) (pki.Component, error) {
	p, ok := peerFrom(ctx)
	if !ok {
		return "", errors.New("no peer")
	}
	pi, ok := p.(peerInfo)
	if !ok {
		return "", errors.New("connection is not mutual TLS")
	}
	if pi.err != nil {
		return "", pi.err
	}
	return pi.component, nil
}

// inode tells a replaced file from one rewritten in place with the same
// size and time stamp (a Secret volume swaps a symlink to new files).
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func peerFrom(ctx context.Context) (credentials.AuthInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil, false
	}
	return p.AuthInfo, true
}
