package authtoken

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDecodeCanonical(t *testing.T) {
	tests := []struct {
		name      string
		payload   string
		canonical bool // read by decodeCanonical, not handed to encoding/json
	}{
		{"issued, no profile", `{"iss":"gochat","sub":"u1","exp":1900000000,"iat":1800000000}`, true},
		{"issued guest with a profile", `{"guest":true,"usr":{"username":"guest-1","nickname":"Guest","created_at_ms":1764500000000},"iss":"gochat","sub":"u1","exp":1900000000,"iat":1800000000}`, true},
		{"a nickname outside ASCII", `{"usr":{"username":"li","nickname":"李雷 ☺","created_at_ms":0},"iss":"gochat","sub":"u1","exp":1900000000}`, true},
		{"keys in another order", `{"sub":"u1","exp":1900000000,"iss":"gochat","guest":false,"jti":"j","nbf":1}`, true},
		{"an escaped quote", `{"usr":{"username":"a","nickname":"say \"hi\"","created_at_ms":1},"iss":"gochat","sub":"u1","exp":1900000000}`, false},
		{"a unicode escape", `{"iss":"gochat","sub":"u\u0031","exp":1900000000}`, false},
		{"whitespace", `{"iss": "gochat","sub":"u1","exp":1900000000}`, false},
		{"a fractional date", `{"iss":"gochat","sub":"u1","exp":1900000000.5}`, false},
		{"an exponent", `{"iss":"gochat","sub":"u1","exp":19e8}`, false},
		{"a quoted date", `{"iss":"gochat","sub":"u1","exp":"1900000000"}`, false},
		{"null profile", `{"usr":null,"iss":"gochat","sub":"u1","exp":1900000000}`, false},
		{"an audience", `{"iss":"gochat","sub":"u1","aud":"x","exp":1900000000}`, false},
		{"an unknown key", `{"iss":"gochat","sub":"u1","exp":1900000000,"x":1}`, false},
		{"a key in capitals", `{"ISS":"gochat","sub":"u1","exp":1900000000}`, false},
		{"a repeated key", `{"sub":"u1","sub":"u2","exp":1900000000}`, false},
		{"profile keys reordered", `{"usr":{"nickname":"n","username":"u","created_at_ms":1},"sub":"u1"}`, false},
		{"a negative creation time", `{"usr":{"username":"u","nickname":"n","created_at_ms":-1},"sub":"u1"}`, false},
		{"a creation time past int64", `{"usr":{"username":"u","nickname":"n","created_at_ms":9223372036854775808},"sub":"u1"}`, false},
		{"a leading zero", `{"sub":"u1","exp":01}`, false},
		{"trailing data", `{"sub":"u1"} `, false},
		{"a control character", "{\"sub\":\"u\x01\"}", false},
		{"invalid UTF-8", "{\"sub\":\"u\xff\"}", false},
		{"empty object", `{}`, true},
		{"not an object", `[]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fast issuedClaims
			if got := decodeCanonical([]byte(tt.payload), &fast); got != tt.canonical {
				t.Fatalf("decodeCanonical = %v, want %v", got, tt.canonical)
			}
			// Whichever path reads it, the result is encoding/json's.
			var got, want issuedClaims
			gotErr := decodeClaims([]byte(tt.payload), &got)
			wantErr := json.Unmarshal([]byte(tt.payload), &want)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("decodeClaims err = %v, encoding/json err = %v", gotErr, wantErr)
			}
			if gotErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("decodeClaims = %+v, encoding/json = %+v", got, want)
			}
		})
	}
}

// Every token Issue signs is read by the canonical decoder.
func TestIssuedTokensAreCanonical(t *testing.T) {
	k, _ := New(secret, time.Hour)
	profiles := []*Profile{nil, {Username: "ann", Nickname: "Ann ☺", CreatedAtMs: 1764500000123}, {}}
	for _, p := range profiles {
		for _, guest := range []bool{false, true} {
			tok, _, err := k.Issue("01HZXJ5Q0C8N3W0V2Z8M6R4T1P", guest, p, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			raw := payloadOf(t, tok)
			var c issuedClaims
			if !decodeCanonical(raw, &c) {
				t.Fatalf("Issue wrote %s, which the canonical decoder does not read", raw)
			}
		}
	}
}

// FuzzCanonicalClaims holds decodeCanonical to encoding/json: whatever it
// accepts, encoding/json accepts and decodes to the same claims.
func FuzzCanonicalClaims(f *testing.F) {
	f.Add(`{"guest":true,"usr":{"username":"g","nickname":"G","created_at_ms":5},"iss":"gochat","sub":"u1","exp":1900000000,"iat":1}`)
	f.Add(`{"sub":"u1","exp":0,"nbf":10,"jti":"x"}`)
	f.Add(`{"usr":{"username":"","nickname":"é","created_at_ms":9223372036854775807}}`)
	f.Fuzz(func(t *testing.T, payload string) {
		var fast issuedClaims
		if !decodeCanonical([]byte(payload), &fast) {
			return
		}
		var want issuedClaims
		if err := json.Unmarshal([]byte(payload), &want); err != nil {
			t.Fatalf("decodeCanonical accepted %q, encoding/json refuses it: %v", payload, err)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("decodeCanonical(%q) = %+v, encoding/json = %+v", payload, fast, want)
		}
	})
}

func payloadOf(t *testing.T, token string) []byte {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q has %d parts", token, len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
