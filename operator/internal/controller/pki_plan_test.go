package controller

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/gochat/gochat/api/pki"
)

func TestPlanLeafAndCA(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	oldCA, err := pki.NewCA("old", t0, pki.CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	rotatedAt := t0.Add(pki.CAValidity * 2 / 3)
	newCA, err := pki.NewCA("new", rotatedAt, pki.CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := pki.NewCA("foreign", t0, pki.CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, at time.Time) *x509.Certificate {
		kp, err := ca.Issue(pki.Repo, at, pki.LeafValidity)
		if err != nil {
			t.Fatal(err)
		}
		return kp.Cert
	}
	steady := caState{current: oldCA}
	rotating := caState{current: newCA, previous: oldCA, rotatedAt: rotatedAt}
	inWindow, afterWindow := rotatedAt.Add(time.Minute), rotatedAt.Add(caPropagation+time.Minute)

	leafTests := []struct {
		name string
		st   caState
		leaf *x509.Certificate
		now  time.Time
		want string
	}{
		{"missing", steady, nil, t0, "issued"},
		{"fresh", steady, issue(oldCA, t0), t0.Add(time.Hour), ""},
		{"two thirds gone", steady, issue(oldCA, t0), t0.Add(pki.LeafValidity*2/3 + time.Hour), "renewed at two thirds of its life"},
		{"another CA's", steady, issue(foreign, t0), t0.Add(time.Hour), "reissued: not issued by this cluster's CA"},
		{"old CA's leaf while pods learn the new CA", rotating, issue(oldCA, rotatedAt), inWindow, ""},
		{"old CA's leaf after the window", rotating, issue(oldCA, rotatedAt), afterWindow, "reissued under the new CA"},
		{"new CA's leaf", rotating, issue(newCA, afterWindow), afterWindow.Add(time.Hour), ""},
	}
	for _, tt := range leafTests {
		t.Run(tt.name, func(t *testing.T) {
			if got := planLeaf(tt.st, tt.leaf, tt.now); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	if rotating.signer(inWindow) != oldCA || rotating.signer(afterWindow) != newCA || steady.signer(t0) != oldCA {
		t.Fatal("signer: the old CA issues until the window ends, then the new one")
	}

	newLeaf := issue(newCA, afterWindow)
	caTests := []struct {
		name           string
		st             caState
		leaves         []*x509.Certificate
		now            time.Time
		rotate, finish bool
	}{
		{"young CA", steady, nil, t0.Add(time.Hour), false, false},
		{"CA at two thirds", steady, nil, rotatedAt.Add(time.Hour), true, false},
		{"rotation just begun", rotating, []*x509.Certificate{newLeaf}, inWindow, false, false},
		{"an old leaf remains", rotating, []*x509.Certificate{newLeaf, issue(oldCA, rotatedAt)}, afterWindow.Add(time.Hour), false, false},
		{"a leaf is missing", rotating, []*x509.Certificate{newLeaf, nil}, afterWindow.Add(time.Hour), false, false},
		{"new leaves not yet in the pods", rotating, []*x509.Certificate{newLeaf}, afterWindow.Add(time.Minute), false, false},
		// NotBefore is backdated for clock skew: the wait counts from issuance.
		{"new leaves in the pods for less than twice the propagation", rotating, []*x509.Certificate{newLeaf}, afterWindow.Add(2*caPropagation - time.Minute), false, false},
		{"every leaf new and delivered", rotating, []*x509.Certificate{newLeaf}, afterWindow.Add(2*caPropagation + time.Minute), false, true},
	}
	for _, tt := range caTests {
		t.Run(tt.name, func(t *testing.T) {
			rotate, finish := planCA(tt.st, tt.leaves, tt.now)
			if rotate != tt.rotate || finish != tt.finish {
				t.Fatalf("rotate %v finish %v, want %v %v", rotate, finish, tt.rotate, tt.finish)
			}
		})
	}
	if n := len(mustCerts(t, rotating.bundle())); n != 2 {
		t.Fatalf("bundle during rotation holds %d CAs", n)
	}
}

func mustCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	c, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
