package authtoken

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// decodeClaims fills c from a token's payload. Payloads as Issue writes
// them (one object, no whitespace, no escapes, whole numbers) are read by
// decodeCanonical; anything else by encoding/json. Every connect verifies
// a token, and encoding/json's reflecting decoder, with the stack it grows
// on a handshake goroutine's fresh stack, was about a quarter of the
// gateway's CPU per connect.
func decodeClaims(raw []byte, c *issuedClaims) error {
	if decodeCanonical(raw, c) {
		return nil
	}
	*c = issuedClaims{}
	return json.Unmarshal(raw, c)
}

// decodeCanonical reads the subset of JSON that Issue writes and reports
// whether it could. It gives up (false) on everything outside the subset,
// whitespace, escapes, null, fractions, unknown or repeated keys, an
// audience, rather than decide it, so what it accepts it decodes exactly
// as encoding/json does (FuzzCanonicalClaims holds the two to it).
func decodeCanonical(raw []byte, c *issuedClaims) bool {
	d := canonical{b: raw}
	if !d.byte('{') {
		return false
	}
	var seen uint16
	for first := true; ; first = false {
		if d.byte('}') {
			return d.i == len(d.b)
		}
		if !first && !d.byte(',') {
			return false
		}
		key, ok := d.raw()
		if !ok || !d.byte(':') {
			return false
		}
		var bit uint16
		switch string(key) {
		case "guest":
			bit = 1
			c.Guest, ok = d.boolean()
		case "usr":
			bit = 2
			c.Profile = new(Profile)
			ok = d.profile(c.Profile)
		case "iss":
			bit = 4
			c.Issuer, ok = d.str()
		case "sub":
			bit = 8
			c.Subject, ok = d.str()
		case "jti":
			bit = 16
			c.ID, ok = d.str()
		case "exp":
			bit = 32
			c.ExpiresAt, ok = d.digits()
		case "nbf":
			bit = 64
			c.NotBefore, ok = d.digits()
		case "iat":
			bit = 128
			c.IssuedAt, ok = d.digits()
		default:
			return false // encoding/json would ignore it, or match it case-insensitively
		}
		if !ok || seen&bit != 0 {
			return false // a repeated key: encoding/json keeps the last
		}
		seen |= bit
	}
}

// canonical is a cursor over a payload for decodeCanonical.
type canonical struct {
	b []byte
	i int
}

func (d *canonical) byte(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// raw reads a string with no escapes, no control characters and valid
// UTF-8: encoding/json reads those bytes as they are.
func (d *canonical) raw() ([]byte, bool) {
	if !d.byte('"') {
		return nil, false
	}
	end := bytes.IndexByte(d.b[d.i:], '"')
	if end < 0 {
		return nil, false
	}
	s := d.b[d.i : d.i+end]
	for _, c := range s {
		if c < 0x20 || c == '\\' {
			return nil, false
		}
	}
	if !utf8.Valid(s) {
		return nil, false
	}
	d.i += end + 1
	return s, true
}

func (d *canonical) str() (string, bool) {
	s, ok := d.raw()
	return string(s), ok
}

func (d *canonical) boolean() (bool, bool) {
	switch {
	case bytes.HasPrefix(d.b[d.i:], []byte("true")):
		d.i += 4
		return true, true
	case bytes.HasPrefix(d.b[d.i:], []byte("false")):
		d.i += 5
		return false, true
	}
	return false, false
}

// digits reads a whole, unsigned number without leading zeros, as a
// json.Number holds it.
func (d *canonical) digits() (json.Number, bool) {
	start := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	n := d.b[start:d.i]
	if len(n) == 0 || (n[0] == '0' && len(n) > 1) {
		return "", false
	}
	// A fraction or exponent would still be a number: encoding/json decides.
	if d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return "", false
	}
	return json.Number(n), true
}

// profile reads the "usr" object as Issue writes it: its three keys in
// their order.
func (d *canonical) profile(p *Profile) bool {
	var ok bool
	if !d.byte('{') || !d.key("username") {
		return false
	}
	if p.Username, ok = d.str(); !ok || !d.byte(',') || !d.key("nickname") {
		return false
	}
	if p.Nickname, ok = d.str(); !ok || !d.byte(',') || !d.key("created_at_ms") {
		return false
	}
	n, ok := d.digits()
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		return false
	}
	p.CreatedAtMs = v
	return d.byte('}')
}

func (d *canonical) key(k string) bool {
	s, ok := d.raw()
	return ok && string(s) == k && d.byte(':')
}
