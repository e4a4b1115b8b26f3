package pki

import (
	"bytes"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func mustCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, t0, CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestIssueAndVerify(t *testing.T) {
	ca, other := mustCA(t, "a"), mustCA(t, "b")
	pool, err := Pool(ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range Components {
		t.Run(string(c), func(t *testing.T) {
			kp, err := ca.Issue(c, t0, LeafValidity)
			if err != nil {
				t.Fatal(err)
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				got, err := Verify(kp.Cert, nil, pool, usage, t0.Add(time.Hour))
				if err != nil || got != c {
					t.Fatalf("usage %v: got %q, %v", usage, got, err)
				}
			}
			if kp.Cert.URIs[0].String() != "spiffe://gochat/"+string(c) {
				t.Fatalf("URI %s", kp.Cert.URIs[0])
			}
			// A certificate from another CA does not verify.
			foreign, err := other.Issue(c, t0, LeafValidity)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(foreign.Cert, nil, pool, x509.ExtKeyUsageClientAuth, t0.Add(time.Hour)); err == nil {
				t.Fatal("a certificate from another CA verified")
			}
			// Expired certificates do not verify.
			if _, err := Verify(kp.Cert, nil, pool, x509.ExtKeyUsageClientAuth, t0.Add(LeafValidity+time.Hour)); err == nil {
				t.Fatal("an expired certificate verified")
			}
			back, err := ParseKeyPair(kp.CertPEM, kp.KeyPEM)
			if err != nil || !back.Cert.Equal(kp.Cert) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
	if _, err := ca.Issue("intruder", t0, LeafValidity); err == nil {
		t.Fatal("issued for an unknown component")
	}
}

func TestIssueNeverOutlivesCA(t *testing.T) {
	ca, err := NewCA("short", t0, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.Issue(Gateway, t0, LeafValidity)
	if err != nil {
		t.Fatal(err)
	}
	if !kp.Cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Fatalf("leaf expires %s, CA %s", kp.Cert.NotAfter, ca.Cert.NotAfter)
	}
	if _, err := ca.Issue(Gateway, t0.Add(31*24*time.Hour), LeafValidity); err == nil {
		t.Fatal("an expired CA issued")
	}
}

func TestComponentOf(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		uris []*url.URL
		cn   string
		want Component
		err  string
	}{
		{"one identity", []*url.URL{u("spiffe://gochat/task")}, "", Task, ""},
		{"other trust domains are ignored", []*url.URL{u("spiffe://example.org/logic"), u("spiffe://gochat/repo")}, "", Repo, ""},
		{"no identity, whatever the CN says", nil, "operator", "", "no spiffe://gochat/ identity"},
		{"two identities", []*url.URL{u("spiffe://gochat/task"), u("spiffe://gochat/admin")}, "", "", "2 gochat identities"},
		{"unknown component", []*url.URL{u("spiffe://gochat/root")}, "", "", `unknown component "root"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{URIs: tt.uris}
			c.Subject.CommonName = tt.cn
			got, err := ComponentOf(c)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v; want error %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}

func TestNeedsRenewal(t *testing.T) {
	ca := mustCA(t, "r")
	kp, err := ca.Issue(Logic, t0, 90*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// NotBefore is backdated by clockSkew; the lifetime counts from there.
	life := kp.Cert.NotAfter.Sub(kp.Cert.NotBefore)
	tests := []struct {
		at   time.Time
		want bool
	}{
		{kp.Cert.NotBefore.Add(-time.Minute), true},
		{t0, false},
		{kp.Cert.NotBefore.Add(life*2/3 - time.Minute), false},
		{kp.Cert.NotBefore.Add(life*2/3 + time.Minute), true},
		{kp.Cert.NotAfter.Add(time.Hour), true},
	}
	for _, tt := range tests {
		if got := NeedsRenewal(kp.Cert, tt.at); got != tt.want {
			t.Errorf("at %s: got %v, want %v", tt.at, got, tt.want)
		}
	}
}

func TestBundleTrustsOldAndNew(t *testing.T) {
	oldCA, newCA := mustCA(t, "old"), mustCA(t, "new")
	bundle := Bundle(newCA.Cert, oldCA.Cert, newCA.Cert)
	certs, err := ParseCerts(bundle)
	if err != nil || len(certs) != 2 {
		t.Fatalf("bundle holds %d certificates, %v", len(certs), err)
	}
	pool, err := Pool(bundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*CA{oldCA, newCA} {
		kp, err := ca.Issue(Gateway, t0, LeafValidity)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(kp.Cert, nil, pool, x509.ExtKeyUsageServerAuth, t0.Add(time.Hour)); err != nil {
			t.Fatalf("leaf of %s: %v", ca.Cert.Subject.CommonName, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	ca, other := mustCA(t, "p"), mustCA(t, "q")
	caKey, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(Repo, t0, LeafValidity)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseCA(ca.CertPEM(), caKey)
	if err != nil || !back.Cert.Equal(ca.Cert) || !back.Key.Equal(ca.Key) {
		t.Fatalf("CA round trip: %v", err)
	}
	tests := []struct {
		name string
		fn   func() error
		want string
	}{
		{"empty bundle", func() error { _, err := ParseCerts(nil); return err }, "no certificate"},
		{"garbage", func() error { _, err := ParseCerts([]byte("hello")); return err }, "not a PEM block"},
		{"key in a bundle", func() error { _, err := ParseCerts(append(ca.CertPEM(), caKey...)); return err }, "PRIVATE KEY block"},
		{"leaf in a CA bundle", func() error { _, err := Pool(append(ca.CertPEM(), leaf.CertPEM...)); return err }, "is not a CA"},
		{"CA key of another CA", func() error { _, err := ParseCA(ca.CertPEM(), otherKey); return err }, "does not match"},
		{"leaf as CA", func() error { _, err := ParseCA(leaf.CertPEM, leaf.KeyPEM); return err }, "not a CA"},
		{"leaf with the wrong key", func() error { _, err := ParseKeyPair(leaf.CertPEM, caKey); return err }, "does not match"},
		{"no key", func() error { _, err := ParseKey(ca.CertPEM()); return err }, "CERTIFICATE block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.fn()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
			if bytes.Contains([]byte(err.Error()), []byte("BEGIN")) {
				t.Fatal("error carries PEM")
			}
		})
	}
}
