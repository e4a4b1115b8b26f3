package authtoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

// sign makes a token with the issued header over any payload, as a client
// holding the secret could.
func sign(k *Keys, header, payload string) string {
	in := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkSame fails when the direct path settles a token differently from
// the general parser.
func checkSame(t *testing.T, k *Keys, tok string) {
	t.Helper()
	c, ok, settled := k.verifyIssued(tok, time.Now())
	want, err := k.verifyAny(tok)
	if !settled {
		return
	}
	if ok != (err == nil) {
		t.Fatalf("direct path ok=%v, general parser err=%v, for %q", ok, err, tok)
	}
	if ok && (c.UserID != want.UserID || c.Guest != want.Guest || !c.Expiry.Equal(want.Expiry) ||
		(c.Profile == nil) != (want.Profile == nil) || (c.Profile != nil && *c.Profile != *want.Profile)) {
		t.Fatalf("direct path %+v, general parser %+v", c, want)
	}
}

func TestDirectPathAgreesWithParser(t *testing.T) {
	k, _ := New(secret, time.Hour)
	hdr := `{"alg":"HS256","typ":"JWT"}`
	now := time.Now().Unix()
	exp, past := now+3600, now-10
	tests := []struct {
		name    string
		payload string
		accept  bool
	}{
		{"issued", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"iat":%d}`, exp, now), true},
		{"guest with a profile", fmt.Sprintf(`{"guest":true,"usr":{"username":"g","nickname":"G","created_at_ms":5},"iss":"gochat","sub":"u1","exp":%d}`, exp), true},
		{"fractional expiry", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d.75}`, exp), true},
		{"quoted expiry", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":"%d"}`, exp), true},
		{"audience as a string", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"aud":"x"}`, exp), true},
		{"expired", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d}`, past), false},
		{"no expiry", `{"iss":"gochat","sub":"u1"}`, false},
		{"null expiry", `{"iss":"gochat","sub":"u1","exp":null}`, false},
		{"not yet valid", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"nbf":%d}`, exp, exp-60), false},
		{"valid from the past", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"nbf":%d}`, exp, past), true},
		{"other issuer", fmt.Sprintf(`{"iss":"other","sub":"u1","exp":%d}`, exp), false},
		{"no subject", fmt.Sprintf(`{"iss":"gochat","exp":%d}`, exp), false},
		{"expiry not a number", `{"iss":"gochat","sub":"u1","exp":"soon"}`, false},
		{"issued-at not a number", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"iat":"x"}`, exp), false},
		{"audience not a string", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"aud":5}`, exp), false},
		{"subject not a string", fmt.Sprintf(`{"iss":"gochat","sub":1,"exp":%d}`, exp), false},
		{"trailing data", fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d} {}`, exp), false},
		{"not JSON", `nope`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := sign(k, hdr, tt.payload)
			checkSame(t, k, tok)
			if _, err := k.Verify(tok); (err == nil) != tt.accept {
				t.Fatalf("Verify err = %v, want accepted %v", err, tt.accept)
			}
		})
	}
	// A token Issue signs takes the direct path.
	tok, _, _ := k.Issue("u1", false, nil, time.Now())
	if _, ok, settled := k.verifyIssued(tok, time.Now()); !ok || !settled {
		t.Fatalf("issued token: ok=%v settled=%v", ok, settled)
	}
	// Another header goes to the general parser, which still accepts it.
	other := sign(k, `{"typ":"JWT","alg":"HS256"}`, fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d}`, exp))
	if _, _, settled := k.verifyIssued(other, time.Now()); settled {
		t.Fatal("a reordered header was settled by the direct path")
	}
	if _, err := k.Verify(other); err != nil {
		t.Fatalf("reordered header: %v", err)
	}
}

// FuzzDirectPath signs arbitrary payloads and checks that the direct path
// never settles one differently from the general parser.
func FuzzDirectPath(f *testing.F) {
	k, _ := New(secret, time.Hour)
	exp := time.Now().Add(time.Hour).Unix()
	f.Add(fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d}`, exp))
	f.Add(fmt.Sprintf(`{"iss":"gochat","sub":"u1","exp":%d,"nbf":1,"aud":["a"],"usr":{"username":"x"}}`, exp))
	f.Add(`{"exp":1e400}`)
	f.Fuzz(func(t *testing.T, payload string) {
		checkSame(t, k, sign(k, `{"alg":"HS256","typ":"JWT"}`, payload))
	})
}
