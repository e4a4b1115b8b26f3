// Package authtoken issues and checks the clients' bearer tokens (JWT, HS256).
// im-logic issues them; im-gateway checks them locally on every request, so
// authentication costs no backend round trip. A token also carries the
// holder's public profile, so that a WebSocket connect can greet the user
// without looking them up either.
package authtoken

import (
	"errors"
	"fmt"
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
}

// New returns Keys for a secret of at least MinSecretLen bytes.
func New(secret string, ttl time.Duration) (*Keys, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("jwt secret is %d bytes, it must be at least %d", len(secret), MinSecretLen)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("token ttl must be positive, got %s", ttl)
	}
	return &Keys{secret: []byte(secret), ttl: ttl}, nil
}

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
func (k *Keys) Verify(token string) (Claims, error) {
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
