// Package pki is the identity contract between the operator and GoChat's
// services: a per-cluster CA (ECDSA P-256) issues each component a leaf
// certificate good for both TLS server and client auth, and the component
// is carried in the certificate as the URI SAN spiffe://gochat/<component>.
// The services authorize gRPC calls by that component; the common name
// mirrors it for people reading certificates, but it is never trusted.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// Component is who holds a certificate.
type Component string

// The components. Admin is a person (or script) holding a credential to call
// the gateways' admin service; it is never a workload.
const (
	Gateway  Component = "gateway"
	Logic    Component = "logic"
	Repo     Component = "repo"
	Task     Component = "task"
	Operator Component = "operator"
	Admin    Component = "admin"
)

// Components lists every component, workloads first.
var Components = []Component{Gateway, Logic, Repo, Task, Operator, Admin}

// Valid reports whether c is one of the components.
func (c Component) Valid() bool {
	for _, k := range Components {
		if c == k {
			return true
		}
	}
	return false
}

// URIScheme and TrustDomain make up the identity URI spiffe://gochat/<component>.
const (
	URIScheme   = "spiffe"
	TrustDomain = "gochat"
)

// Default lifetimes: the operator and the dev mode use these.
const (
	CAValidity   = 5 * 365 * 24 * time.Hour
	LeafValidity = 90 * 24 * time.Hour
)

// clockSkew backdates NotBefore so a peer whose clock runs a little behind
// accepts a certificate issued a moment ago.
const clockSkew = 5 * time.Minute

// URI is the identity URI of a component.
func URI(c Component) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: TrustDomain, Path: "/" + string(c)}
}

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// KeyPair is an issued certificate, its key, and both PEM-encoded.
type KeyPair struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// NewCA creates a self-signed CA valid from now for validity. name goes in
// its common name (the cluster's namespace/name, say) so that bundles of
// several CAs stay readable.
func NewCA(name string, now time.Time, validity time.Duration) (*CA, error) {
	if validity <= clockSkew {
		return nil, fmt.Errorf("CA validity %s is too short", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{"GoChat"}, CommonName: "gochat CA " + name},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return EncodeCert(ca.Cert) }

// KeyPEM is the CA key in PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return EncodeKey(ca.Key) }

// Issue creates a leaf certificate for component, valid from now for
// validity but never past the CA's own expiry. It serves both as a server
// and as a client certificate. dnsNames are optional extra SANs for tools
// that check host names; GoChat's services check the component, not them.
func (ca *CA) Issue(c Component, now time.Time, validity time.Duration, dnsNames ...string) (*KeyPair, error) {
	if !c.Valid() {
		return nil, fmt.Errorf("unknown component %q", c)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("CA %q expired at %s", ca.Cert.Subject.CommonName, ca.Cert.NotAfter.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", c, err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{Organization: []string{"GoChat"}, CommonName: string(c)},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{URI(c)},
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", c, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s: %w", c, err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, Key: key, CertPEM: EncodeCert(cert), KeyPEM: keyPEM}, nil
}

// ComponentOf reads the component from a certificate's URI SAN. A
// certificate with no GoChat identity, several, or an unknown component is
// an error: the common name is not a fallback.
func ComponentOf(cert *x509.Certificate) (Component, error) {
	var found []Component
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme || u.Host != TrustDomain {
			continue
		}
		found = append(found, Component(trimSlash(u.Path)))
	}
	switch {
	case len(found) == 0:
		return "", errors.New("certificate carries no spiffe://gochat/ identity")
	case len(found) > 1:
		return "", fmt.Errorf("certificate carries %d gochat identities", len(found))
	case !found[0].Valid():
		return "", fmt.Errorf("certificate names unknown component %q", found[0])
	}
	return found[0], nil
}

func trimSlash(p string) string {
	if len(p) > 0 && p[0] == '/' {
		return p[1:]
	}
	return p
}

// NeedsRenewal reports whether cert has used up two thirds of its lifetime
// at now (or is not yet or no longer valid).
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	return !now.Before(RenewAt(cert)) || now.Before(cert.NotBefore)
}

// IssuedAt is when cert was issued: its NotBefore is backdated by the
// allowance for clock skew.
func IssuedAt(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(clockSkew)
}

// RenewAt is when two thirds of cert's lifetime have passed.
func RenewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(life / 3 * 2)
}

// VerifyServer is a tls.Config VerifyConnection for clients: it accepts a
// server whose certificate chains to roots() and names the component want.
// It replaces Go's host-name check, since certificates name components,
// not addresses (im-task and the operator dial pods by IP).
func VerifyServer(roots func() (*x509.CertPool, error), want Component) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server certificate: none sent")
		}
		pool, err := roots()
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		got, err := Verify(cs.PeerCertificates[0], cs.PeerCertificates[1:], pool, x509.ExtKeyUsageServerAuth, time.Now())
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		if got != want {
			return fmt.Errorf("server is %q, expected %q", got, want)
		}
		return nil
	}
}

// Verify checks that cert chains to one of the CAs in roots for usage, and
// returns its component.
func Verify(cert *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) (Component, error) {
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}
	if len(intermediates) > 0 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range intermediates {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := cert.Verify(opts); err != nil {
		return "", fmt.Errorf("verify certificate: %w", err)
	}
	return ComponentOf(cert)
}

// Fingerprint is the SHA-256 of a certificate, in hex: safe to log.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:8])
}

// EncodeCert is a certificate in PEM.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKey is a private key in PKCS#8 PEM.
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCerts reads every CERTIFICATE block of a PEM bundle, in order. A
// bundle with no certificate, or with another kind of block, is an error.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("PEM: data that is not a PEM block")
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM: %s block where a CERTIFICATE was expected", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM: certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(out) == 0 {
		return nil, errors.New("PEM: no certificate")
	}
	return out, nil
}

// ParseKey reads one ECDSA private key (PKCS#8 or SEC 1 PEM).
func ParseKey(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("PEM: no key block")
	}
	switch b.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM: parse key: %w", err)
		}
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("PEM: key is %T, not ECDSA", k)
		}
		return ec, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM: parse key: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("PEM: %s block where a private key was expected", b.Type)
	}
}

// ParseCA reads a CA from its certificate (the first of the PEM) and key,
// checking that they belong together and that the certificate is a CA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, errors.New("CA certificate is not a CA")
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("CA key does not match its certificate")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ParseKeyPair reads a leaf certificate and its key and checks they match.
func ParseKeyPair(certPEM, keyPEM []byte) (*KeyPair, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("key does not match its certificate")
	}
	return &KeyPair{Cert: certs[0], Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Bundle concatenates CA certificates into one ca.crt, skipping duplicates,
// so that an old and a new CA are trusted together while leaves move over.
func Bundle(cas ...*x509.Certificate) []byte {
	var out []byte
	seen := map[string]bool{}
	for _, c := range cas {
		if c == nil || seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		out = append(out, EncodeCert(c)...)
	}
	return out
}

// Pool parses a CA bundle into a pool of trusted roots. Every certificate
// in it must be a CA.
func Pool(bundle []byte) (*x509.CertPool, error) {
	certs, err := ParseCerts(bundle)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for i, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("CA bundle: certificate %d (%s) is not a CA", i+1, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}
