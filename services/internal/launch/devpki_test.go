package launch

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gochat/gochat/api/pki"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func fingerprints(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range []string{"ca", "gateway", "logic", "repo", "task"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		certs, err := pki.ParseCerts(b)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = pki.Fingerprint(certs[0])
	}
	return out
}

// TestDevPKI: made once, reused on restart, leaves reissued near expiry,
// everything reissued under a new CA when the CA is near its end.
func TestDevPKI(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	flags, err := devPKI(dir, now, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []pki.Component{pki.Gateway, pki.Logic, pki.Repo, pki.Task} {
		id, err := flags[c].Identity(c, quiet)
		if err != nil || id == nil || id.Component() != c {
			t.Fatalf("%s: %v", c, err)
		}
	}
	first := fingerprints(t, dir)

	if _, err := devPKI(dir, now.Add(time.Hour), quiet); err != nil {
		t.Fatal(err)
	}
	if again := fingerprints(t, dir); again["ca"] != first["ca"] || again["gateway"] != first["gateway"] {
		t.Fatal("a restart reissued certificates that were still good")
	}

	later := now.Add(pki.LeafValidity * 3 / 4)
	if _, err := devPKI(dir, later, quiet); err != nil {
		t.Fatal(err)
	}
	renewed := fingerprints(t, dir)
	if renewed["ca"] != first["ca"] {
		t.Fatal("the CA was replaced though it is young")
	}
	for _, c := range []string{"gateway", "logic", "repo", "task"} {
		if renewed[c] == first[c] {
			t.Errorf("%s was not reissued at 3/4 of its life", c)
		}
	}

	end := now.Add(pki.CAValidity * 3 / 4)
	if _, err := devPKI(dir, end, quiet); err != nil {
		t.Fatal(err)
	}
	rotated := fingerprints(t, dir)
	if rotated["ca"] == first["ca"] || rotated["task"] == renewed["task"] {
		t.Fatal("an old CA was not replaced with its leaves")
	}

	if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := devPKI(dir, end, quiet); err == nil || !strings.Contains(err.Error(), "delete the directory") {
		t.Fatalf("a broken CA key: %v", err)
	}
}

func TestTLSFlagsIdentity(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("flags", time.Now(), time.Hour*24)
	if err != nil {
		t.Fatal(err)
	}
	good, err := WriteIdentity(dir, ca, ca.CertPEM(), pki.Logic, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		f       TLSFlags
		wantNil bool
		err     string
	}{
		{"files", good, false, ""},
		{"insecure", TLSFlags{Insecure: true}, true, ""},
		{"nothing", TLSFlags{}, false, "are required"},
		{"no key", TLSFlags{CA: good.CA, Cert: good.Cert}, false, "are required"},
		{"both", TLSFlags{CA: good.CA, Cert: good.Cert, Key: good.Key, Insecure: true}, false, "exclude each other"},
		{"missing file", TLSFlags{CA: good.CA, Cert: good.Cert, Key: filepath.Join(dir, "nope")}, false, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.f.Identity(pki.Logic, quiet)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || (id == nil) != tt.wantNil {
				t.Fatalf("got %v, %v", id, err)
			}
		})
	}
}

func TestIssueCert(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("issue", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(caCert, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caKey, key, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	c := IssueCert{CACert: caCert, CAKey: caKey, Component: "admin", OutDir: out, Validity: time.Hour}
	if err := c.Run(context.Background(), quiet); err != nil {
		t.Fatal(err)
	}
	f := TLSFlags{CA: filepath.Join(out, "ca.crt"), Cert: filepath.Join(out, "admin.crt"), Key: filepath.Join(out, "admin.key")}
	if id, err := f.Identity(pki.Admin, quiet); err != nil || id.Component() != pki.Admin {
		t.Fatalf("issued admin identity: %v", err)
	}
	if fi, err := os.Stat(f.Key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	// During a CA rotation the servers still present the previous CA's
	// certificates: --trust adds it to the written bundle.
	prev, err := pki.NewCA("previous", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	prevFile := filepath.Join(dir, "previous.crt")
	if err := os.WriteFile(prevFile, prev.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	rotating := filepath.Join(dir, "rotating")
	c = IssueCert{CACert: caCert, CAKey: caKey, Component: "admin", OutDir: rotating, Validity: time.Hour, Trust: prevFile}
	if err := c.Run(context.Background(), quiet); err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(rotating, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCerts(bundle)
	if err != nil || len(certs) != 2 || !certs[0].Equal(ca.Cert) || !certs[1].Equal(prev.Cert) {
		t.Fatalf("bundle with --trust: %d certificates (%v), want the CA and the previous one", len(certs), err)
	}
	for _, bad := range []IssueCert{
		{CACert: caCert, CAKey: caKey, Component: "admin", OutDir: out, Validity: time.Hour, Trust: caKey},
		{CACert: caCert, CAKey: caKey, Component: "admin", OutDir: out, Validity: time.Hour, Trust: filepath.Join(dir, "missing")},
		{CACert: caCert, CAKey: caKey, Component: "root", OutDir: out, Validity: time.Hour},
		{CACert: caCert, Component: "admin", OutDir: out, Validity: time.Hour},
		{CACert: caKey, CAKey: caKey, Component: "admin", OutDir: out, Validity: time.Hour},
		{CACert: caCert, CAKey: caKey, Component: "admin", OutDir: out},
	} {
		if err := bad.Run(context.Background(), quiet); err == nil {
			t.Fatalf("%+v issued", bad)
		}
	}
}
