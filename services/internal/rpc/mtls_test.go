package rpc

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// writeIdentity issues component a certificate from ca and writes the three
// files into dir, replacing them the way a Secret volume does (new files).
func writeIdentity(t *testing.T, dir string, bundle []byte, ca *pki.CA, c pki.Component) {
	t.Helper()
	kp, err := ca.Issue(c, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"ca.crt": bundle, "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM} {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func identity(t *testing.T, ca *pki.CA, c pki.Component) *Identity {
	t.Helper()
	dir := t.TempDir()
	writeIdentity(t, dir, ca.CertPEM(), ca, c)
	id, err := LoadIdentity(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), c, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(t.Name(), time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

type fakePush struct {
	gochatv1.UnimplementedPushServiceServer
	gochatv1.UnimplementedGatewayAdminServiceServer
}

func (fakePush) Push(context.Context, *gochatv1.PushRequest) (*gochatv1.PushResponse, error) {
	return &gochatv1.PushResponse{}, nil
}

func (fakePush) Stats(context.Context, *gochatv1.StatsRequest) (*gochatv1.StatsResponse, error) {
	return &gochatv1.StatsResponse{Sessions: 7}, nil
}

type fakeRepo struct {
	gochatv1.UnimplementedRepoServiceServer
}

func (fakeRepo) GetCredentials(context.Context, *gochatv1.GetCredentialsRequest) (*gochatv1.GetCredentialsResponse, error) {
	return &gochatv1.GetCredentialsResponse{}, nil
}

// serve runs a server with id on loopback and returns its address.
func serve(t *testing.T, id *Identity, register func(*grpc.Server)) string {
	t.Helper()
	srv := NewServer(quiet, id)
	register(srv)
	h := health.NewServer()
	healthpb.RegisterHealthServer(srv, h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func dialCreds(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func dialAs(t *testing.T, addr string, id *Identity, server pki.Component) *grpc.ClientConn {
	t.Helper()
	conn, err := Dial(addr, id, server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestMutualTLSAuthorization(t *testing.T) {
	ca, foreign := newCA(t), newCA(t)
	gwAddr := serve(t, identity(t, ca, pki.Gateway), func(s *grpc.Server) {
		gochatv1.RegisterPushServiceServer(s, fakePush{})
		gochatv1.RegisterGatewayAdminServiceServer(s, fakePush{})
	})
	repoAddr := serve(t, identity(t, ca, pki.Repo), func(s *grpc.Server) { gochatv1.RegisterRepoServiceServer(s, fakeRepo{}) })

	// TLS without a client certificate: the server still answers, with a status.
	noCert := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test checks the server, not the client
	foreignID := identity(t, foreign, pki.Task)
	foreignCreds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, //nolint:gosec // as above
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return foreignID.certificate() }})

	push := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewPushServiceClient(conn).Push(callCtx(t), &gochatv1.PushRequest{})
		return err
	}
	stats := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewGatewayAdminServiceClient(conn).Stats(callCtx(t), &gochatv1.StatsRequest{})
		return err
	}
	creds := func(conn *grpc.ClientConn) error {
		_, err := gochatv1.NewRepoServiceClient(conn).GetCredentials(callCtx(t), &gochatv1.GetCredentialsRequest{})
		return err
	}
	healthCheck := func(conn *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{})
		return err
	}
	as := func(c pki.Component, addr string, server pki.Component) *grpc.ClientConn {
		return dialAs(t, addr, identity(t, ca, c), server)
	}
	tests := []struct {
		name string
		conn *grpc.ClientConn
		call func(*grpc.ClientConn) error
		want codes.Code
	}{
		{"task pushes", as(pki.Task, gwAddr, pki.Gateway), push, codes.OK},
		{"logic may not push", as(pki.Logic, gwAddr, pki.Gateway), push, codes.PermissionDenied},
		{"logic may not push", as(pki.Logic, gwAddr, pki.Gateway), push, codes.PermissionDenied},
		{"no certificate may not push", dialCreds(t, gwAddr, noCert), push, codes.Unauthenticated},
		{"another CA's task may not push", dialCreds(t, gwAddr, foreignCreds), push, codes.Unauthenticated},
		{"operator reads stats", as(pki.Operator, gwAddr, pki.Gateway), stats, codes.OK},
		{"admin reads stats", as(pki.Admin, gwAddr, pki.Gateway), stats, codes.OK},
		{"task may not read stats", as(pki.Task, gwAddr, pki.Gateway), stats, codes.PermissionDenied},
		{"no certificate may not read stats", dialCreds(t, gwAddr, noCert), stats, codes.Unauthenticated},
		{"logic reads credentials", as(pki.Logic, repoAddr, pki.Repo), creds, codes.OK},
		{"task may not read credentials", as(pki.Task, repoAddr, pki.Repo), creds, codes.PermissionDenied},
		{"gateway may not read credentials", as(pki.Gateway, repoAddr, pki.Repo), creds, codes.PermissionDenied},
		{"another CA's logic may not read credentials", dialCreds(t, repoAddr, foreignCreds), creds, codes.Unauthenticated},
		{"health needs a certificate", dialCreds(t, repoAddr, noCert), healthCheck, codes.Unauthenticated},
		{"health answers any component", as(pki.Task, repoAddr, pki.Repo), healthCheck, codes.OK},
		{"plaintext is refused", dialCreds(t, repoAddr, insecure.NewCredentials()), healthCheck, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call(tt.conn)); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDialChecksServerComponent(t *testing.T) {
	ca, foreign := newCA(t), newCA(t)
	// A gateway impersonating im-repo is refused by a client expecting im-repo.
	addr := serve(t, identity(t, ca, pki.Gateway), func(s *grpc.Server) { gochatv1.RegisterRepoServiceServer(s, fakeRepo{}) })
	conn := dialAs(t, addr, identity(t, ca, pki.Logic), pki.Repo)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := gochatv1.NewRepoServiceClient(conn).GetCredentials(ctx, &gochatv1.GetCredentialsRequest{}); status.Code(err) == codes.OK {
		t.Fatal("a gateway certificate passed for im-repo")
	}
	// A server of another CA is refused too.
	addr2 := serve(t, identity(t, foreign, pki.Repo), func(s *grpc.Server) { gochatv1.RegisterRepoServiceServer(s, fakeRepo{}) })
	conn2 := dialAs(t, addr2, identity(t, ca, pki.Logic), pki.Repo)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, err := gochatv1.NewRepoServiceClient(conn2).GetCredentials(ctx2, &gochatv1.GetCredentialsRequest{}); status.Code(err) == codes.OK {
		t.Fatal("a server of another CA was trusted")
	}
}

// TestRotationOnDisk rotates the CA: first the bundle holds old and new, then
// only the new CA. New connections follow the files without a restart.
func TestRotationOnDisk(t *testing.T) {
	oldCA, newCA := newCA(t), newCA(t)
	srvDir := t.TempDir()
	writeIdentity(t, srvDir, oldCA.CertPEM(), oldCA, pki.Repo)
	srvID, err := LoadIdentity(filepath.Join(srvDir, "ca.crt"), filepath.Join(srvDir, "tls.crt"), filepath.Join(srvDir, "tls.key"), pki.Repo, quiet)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srvID, func(s *grpc.Server) { gochatv1.RegisterRepoServiceServer(s, fakeRepo{}) })

	call := func(id *Identity) (string, error) {
		conn, err := Dial(addr, id, pki.Repo)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var p peer.Peer
		_, err = gochatv1.NewRepoServiceClient(conn).GetCredentials(ctx, &gochatv1.GetCredentialsRequest{}, grpc.Peer(&p))
		if err != nil {
			return "", err
		}
		return pki.Fingerprint(p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]), nil
	}
	oldLogic := identity(t, oldCA, pki.Logic)
	first, err := call(oldLogic)
	if err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	// Step 1: the server trusts both CAs and serves a leaf of the new one.
	writeIdentity(t, srvDir, pki.Bundle(newCA.Cert, oldCA.Cert), newCA, pki.Repo)
	newLogicDir := t.TempDir()
	writeIdentity(t, newLogicDir, pki.Bundle(newCA.Cert, oldCA.Cert), newCA, pki.Logic)
	newLogic, err := LoadIdentity(filepath.Join(newLogicDir, "ca.crt"), filepath.Join(newLogicDir, "tls.crt"), filepath.Join(newLogicDir, "tls.key"), pki.Logic, quiet)
	if err != nil {
		t.Fatal(err)
	}
	second, err := call(newLogic)
	if err != nil {
		t.Fatalf("new CA client during rotation: %v", err)
	}
	if second == first {
		t.Fatal("the server still serves its old certificate after the files changed")
	}
	// A client that still holds only the old CA no longer trusts the
	// server's new leaf: that is why every bundle carries both CAs first.
	if _, err := call(oldLogic); err == nil {
		t.Fatal("a client trusting only the old CA accepted a leaf of the new one")
	}

	// Step 2: the old CA leaves the server's bundle; old-CA clients are refused.
	writeIdentity(t, srvDir, newCA.CertPEM(), newCA, pki.Repo)
	if _, err := call(newLogic); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	oldOnlyServer := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, //nolint:gosec // checks the server's side
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return oldLogic.certificate() }})
	conn := dialCreds(t, addr, oldOnlyServer)
	if _, err := gochatv1.NewRepoServiceClient(conn).GetCredentials(callCtx(t), &gochatv1.GetCredentialsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("old CA's client after rotation: got %v, want Unauthenticated", err)
	}

	// Files of another component are not taken up on reload either.
	writeIdentity(t, srvDir, newCA.CertPEM(), newCA, pki.Gateway)
	if _, err := call(newLogic); err != nil {
		t.Fatalf("after a gateway certificate landed in im-repo's files: %v", err)
	}
	if srvID.Component() != pki.Repo {
		t.Fatalf("im-repo became %q", srvID.Component())
	}

	// A broken write keeps the last good files.
	if err := os.WriteFile(filepath.Join(srvDir, "tls.key"), []byte("half a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := call(newLogic); err != nil {
		t.Fatalf("a broken key file took the server down: %v", err)
	}
}

func TestLoadIdentityRefusesWrongComponent(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	writeIdentity(t, dir, ca.CertPEM(), ca, pki.Task)
	if _, err := LoadIdentity(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), pki.Gateway, quiet); err == nil {
		t.Fatal("a task certificate loaded as the gateway's")
	}
	other := newCA(t)
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), other.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), pki.Task, quiet); err == nil {
		t.Fatal("a certificate that does not chain to the bundle loaded")
	}
}

// TestAuthorizationCoversEveryMethod keeps the table complete: a new RPC
// is refused to everyone until it is added, and this test says so.
func TestAuthorizationCoversEveryMethod(t *testing.T) {
	for _, sd := range []grpc.ServiceDesc{gochatv1.PushService_ServiceDesc, gochatv1.GatewayAdminService_ServiceDesc, gochatv1.LogicService_ServiceDesc, gochatv1.RepoService_ServiceDesc} {
		var names []string
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, m := range sd.Streams {
			names = append(names, m.StreamName)
		}
		for _, name := range names {
			full := "/" + sd.ServiceName + "/" + name
			if cs, ok := allowed(Authorization, full); !ok || len(cs) == 0 {
				t.Errorf("%s is in no entry of Authorization", full)
			}
		}
	}
	if cs, _ := allowed(Authorization, "/gochat.v1.RepoService/GetCredentials"); len(cs) != 1 || cs[0] != pki.Logic {
		t.Errorf("GetCredentials: %v", cs)
	}
	// Gateways relay typing and presence; the gateway's Push handler keeps
	// everything else to im-task (tested in the gateway package).
	if cs, _ := allowed(Authorization, "/gochat.v1.PushService/Push"); len(cs) != 2 || cs[0] != pki.Task || cs[1] != pki.Gateway {
		t.Errorf("Push: %v", cs)
	}
	if _, ok := allowed(Authorization, "/gochat.v1.Unknown/Call"); ok {
		t.Error("an unknown service matched")
	}
}

// BenchmarkUnary compares one small call on an established connection in
// plaintext and over mutual TLS (the per-connection handshake is not counted).
func BenchmarkUnary(b *testing.B) {
	ca, err := pki.NewCA("bench", time.Now(), 24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"plaintext", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			var srvID, cliID *Identity
			if mode == "mtls" {
				srvID, cliID = benchIdentity(b, ca, pki.Repo), benchIdentity(b, ca, pki.Logic)
			}
			srv := NewServer(quiet, srvID)
			gochatv1.RegisterRepoServiceServer(srv, fakeRepo{})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(ln) }()
			defer srv.Stop()
			conn, err := Dial(ln.Addr().String(), cliID, pki.Repo)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			c := gochatv1.NewRepoServiceClient(conn)
			ctx := context.Background()
			if _, err := c.GetCredentials(ctx, &gochatv1.GetCredentialsRequest{Username: "warm"}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.GetCredentials(ctx, &gochatv1.GetCredentialsRequest{Username: "u"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchIdentity(b *testing.B, ca *pki.CA, c pki.Component) *Identity {
	b.Helper()
	dir := b.TempDir()
	kp, err := ca.Issue(c, time.Now(), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	for name, data := range map[string][]byte{"ca.crt": ca.CertPEM(), "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	id, err := LoadIdentity(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), c, quiet)
	if err != nil {
		b.Fatal(err)
	}
	return id
}
