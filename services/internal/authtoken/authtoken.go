// Package authtoken issues and checks the clients' bearer tokens (JWT, HS256).
// im-logic issues them; im-gateway checks them locally on every request, so
// authentication costs no backend round trip. A token also carries the
// holder's public profile, so that a WebSocket connect can greet the user
// without looking them up either.
package authtoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const issuer = "gochat"

// MinSecretLen keeps HS256 keys from being guessable.
const MinSecretLen = 32

// Claims is what a token says about its holder.
type Claims struct {
	UserID string
	Guest  bool
	Expiry time.Time
	// Profile is nil in tokens issued before tokens carried it: their
	// holder must be looked up.
	Profile *Profile
}

// Profile is the holder's public fields as they were when the token was
// issued: a nickname changed since then shows only in tokens issued after.
type Profile struct {
	Username    string `json:"username"`
	Nickname    string `json:"nickname"`
	CreatedAtMs int64  `json:"created_at_ms"`
}

// Keys signs and verifies tokens with one shared secret.
type Keys struct {
	secret []byte
	ttl    time.Duration
	// macs reuses HMAC states: a connect storm verifies thousands of tokens
	// a second, and a fresh HMAC is most of a verification's allocations.
	macs sync.Pool
}

// New returns Keys for a secret of at least MinSecretLen bytes.
func New(secret string, ttl time.Duration) (*Keys, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("jwt secret is %d bytes, it must be at least %d", len(secret), MinSecretLen)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("token ttl must be positive, got %s", ttl)
	}
	k := &Keys{secret: []byte(secret), ttl: ttl}
	k.macs.New = func() any { return hmac.New(sha256.New, k.secret) }
	return k, nil
}

// issuedHeader is the header segment of every token Issue signs.
var issuedHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

type jwtClaims struct {
	Guest   bool     `json:"guest,omitempty"`
	Profile *Profile `json:"usr,omitempty"`
	jwt.RegisteredClaims
}

// Issue returns a signed token for the user and when it expires. A nil
// profile makes a token as they were before profiles were carried.
func (k *Keys) Issue(userID string, guest bool, profile *Profile, now time.Time) (string, time.Time, error) {
	exp := now.Add(k.ttl).Truncate(time.Second)
	c := jwtClaims{
		Guest:   guest,
		Profile: profile,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    issuer,
			Subject:   userID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(k.secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// ErrInvalid is returned for any token that must not be accepted.
var ErrInvalid = errors.New("invalid or expired token")

// Verify checks the signature, algorithm, issuer and expiry of a token.
//
// Tokens with the header Issue writes take a direct path: every WebSocket
// connect verifies one, and the general parser (header decoded into a map,
// a fresh HMAC, claims through a reflecting decoder) was about a fifth of
// the gateway's CPU per connect. The direct path decodes the claims into the
// same types and checks what the general one checks; a token it cannot
// settle goes to the general parser, so the two accept the same tokens.
func (k *Keys) Verify(token string) (Claims, error) {
	if c, ok, settled := k.verifyIssued(token, time.Now()); settled {
		if !ok {
			return Claims{}, ErrInvalid
		}
		return c, nil
	}
	return k.verifyAny(token)
}

// verifyIssued verifies a token whose header is the one Issue writes.
// settled is false when the general parser must decide.
func (k *Keys) verifyIssued(token string, now time.Time) (c Claims, ok, settled bool) {
	header, rest, found := strings.Cut(token, ".")
	if !found || header != issuedHeader {
		return Claims{}, false, false
	}
	payload, sig, found := strings.Cut(rest, ".")
	if !found || strings.IndexByte(sig, '.') >= 0 {
		return Claims{}, false, false
	}
	var want, got [sha256.Size]byte
	if n, err := base64.RawURLEncoding.Decode(got[:], []byte(sig)); err != nil || n != sha256.Size || base64.RawURLEncoding.EncodedLen(n) != len(sig) {
		return Claims{}, false, false
	}
	mac := k.macs.Get().(hash.Hash)
	mac.Reset()
	_, _ = mac.Write([]byte(token[:len(header)+1+len(payload)]))
	mac.Sum(want[:0])
	k.macs.Put(mac)
	if !hmac.Equal(want[:], got[:]) {
		// The general parser checks the same HMAC over the same bytes.
		return Claims{}, false, true
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Claims{}, false, false
	}
	var jc issuedClaims
	if err := decodeClaims(raw, &jc); err != nil {
		return Claims{}, false, false
	}
	exp, okExp := numericDate(jc.ExpiresAt)
	nbf, okNbf := numericDate(jc.NotBefore)
	_, okIat := numericDate(jc.IssuedAt)
	valid := okExp && okNbf && okIat && jc.ExpiresAt != "" && now.Before(exp) &&
		(jc.NotBefore == "" || !now.Before(nbf)) &&
		jc.Issuer == issuer && jc.Subject != ""
	if !valid {
		return Claims{}, false, false
	}
	return Claims{UserID: jc.Subject, Guest: jc.Guest, Expiry: exp, Profile: jc.Profile}, true, true
}

// issuedClaims is jwtClaims with its dates as plain numbers, which decode
// without a nested decoder each. A field of the wrong type fails the decode
// here as it fails it in the general parser.
type issuedClaims struct {
	Guest     bool             `json:"guest"`
	Profile   *Profile         `json:"usr"`
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.ClaimStrings `json:"aud"`
	ExpiresAt json.Number      `json:"exp"`
	NotBefore json.Number      `json:"nbf"`
	IssuedAt  json.Number      `json:"iat"`
	ID        string           `json:"jti"`
}

// numericDate reads a JWT date as jwt.NumericDate does (seconds, their
// fraction kept to jwt.TimePrecision); an absent one is valid and zero.
func numericDate(n json.Number) (time.Time, bool) {
	if n == "" {
		return time.Time{}, true
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).Truncate(jwt.TimePrecision), true
}

// verifyAny is the general parser, for any token.
func (k *Keys) verifyAny(token string) (Claims, error) {
	var c jwtClaims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return k.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(issuer),
		jwt.WithExpirationRequired(),
	)
	if err != nil || c.Subject == "" {
		return Claims{}, ErrInvalid
	}
	return Claims{UserID: c.Subject, Guest: c.Guest, Expiry: c.ExpiresAt.Time, Profile: c.Profile}, nil
}
