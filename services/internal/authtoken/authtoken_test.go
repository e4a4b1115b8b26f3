package authtoken

import (
	"strings"
	"testing"
	"time"
)

const secret = "0123456789abcdef0123456789abcdef"

func TestIssueVerify(t *testing.T) {
	k, err := New(secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		guest   bool
		profile *Profile
	}{
		{"guest with a profile", true, &Profile{Username: "guest-7f3a", Nickname: "Visitor \"é\" <b>", CreatedAtMs: 1764400000123}},
		{"user with a profile", false, &Profile{Username: "ann", Nickname: "Ann", CreatedAtMs: 1}},
		{"old-style token without a profile", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			tok, exp, err := k.Issue("u1", tt.guest, tt.profile, now)
			if err != nil {
				t.Fatal(err)
			}
			if exp.Before(now.Add(59 * time.Minute)) {
				t.Fatalf("expiry %s too early", exp)
			}
			c, err := k.Verify(tok)
			if err != nil {
				t.Fatal(err)
			}
			if c.UserID != "u1" || c.Guest != tt.guest || !c.Expiry.Equal(exp) {
				t.Fatalf("claims = %+v", c)
			}
			if (c.Profile == nil) != (tt.profile == nil) || (c.Profile != nil && *c.Profile != *tt.profile) {
				t.Fatalf("profile = %+v, want %+v", c.Profile, tt.profile)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	k, _ := New(secret, time.Hour)
	other, _ := New(strings.Repeat("x", 32), time.Hour)
	good, _, _ := k.Issue("u1", false, nil, time.Now())
	expired, _, _ := k.Issue("u1", false, nil, time.Now().Add(-2*time.Hour))
	foreign, _, _ := other.Issue("u1", false, nil, time.Now())
	tests := map[string]string{
		"empty":        "",
		"garbage":      "not.a.token",
		"expired":      expired,
		"other secret": foreign,
		"tampered":     good[:len(good)-2] + "xx",
		"alg none":     "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImlzcyI6ImdvY2hhdCJ9.",
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := k.Verify(tok); err == nil {
				t.Fatal("Verify accepted a bad token")
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New("short", time.Hour); err == nil {
		t.Fatal("short secret accepted")
	}
	if _, err := New(secret, 0); err == nil {
		t.Fatal("zero ttl accepted")
	}
}

// BenchmarkVerify is what a WebSocket connect pays to check its token, on
// the direct path Verify takes for issued tokens and on the general parser.
func BenchmarkVerify(b *testing.B) {
	k, _ := New(secret, time.Hour)
	tok, _, _ := k.Issue("0196c0de-7f3a-7000-8000-00000000abcd", true, &Profile{Username: "guest-7f3a", Nickname: "Visitor", CreatedAtMs: 1764400000123}, time.Now())
	for _, bm := range []struct {
		name   string
		verify func(string) (Claims, error)
	}{{"direct", k.Verify}, {"general", k.verifyAny}} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bm.verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
