package launch

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gochat/gochat/api/pki"
)

// IssueCert mints a certificate for a component from a CA's files: a person's
// admin credential for the gateways' admin service, or a certificate for a
// service run by hand. Whoever holds the CA key can mint any identity.
type IssueCert struct {
	CACert, CAKey, Component, OutDir string
	// Trust is a file of more CA certificates for the written ca.crt: the
	// previous CA during a rotation, which still issues the servers'
	// certificates until the rotation's second step.
	Trust    string
	Validity time.Duration
}

// Register adds the flags.
func (c *IssueCert) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.CACert, "ca-cert", "", "PEM certificate of the CA (the ChatCluster's <name>-ca Secret, key ca.crt)")
	fs.StringVar(&c.CAKey, "ca-key", "", "PEM key of the CA (key ca.key of the same Secret)")
	fs.StringVar(&c.Component, "component", string(pki.Admin), "who the certificate is for: admin, operator, gateway, logic, repo or task")
	fs.DurationVar(&c.Validity, "validity", 24*time.Hour, "how long the certificate is valid (never past the CA's own expiry)")
	fs.StringVar(&c.OutDir, "out-dir", ".", "where ca.crt, <component>.crt and <component>.key are written (mode 0600)")
	fs.StringVar(&c.Trust, "trust", "", "PEM file of more CA certificates for the written ca.crt (during a CA rotation: key previous.crt of the CA Secret)")
}

// Run writes the files.
func (c *IssueCert) Run(_ context.Context, log *slog.Logger) error {
	if c.CACert == "" || c.CAKey == "" {
		return errors.New("--ca-cert and --ca-key are required")
	}
	comp := pki.Component(c.Component)
	if !comp.Valid() {
		return fmt.Errorf("--component %q: not one of %v", c.Component, pki.Components)
	}
	if c.Validity <= 0 {
		return fmt.Errorf("--validity must be positive, got %s", c.Validity)
	}
	certPEM, err := os.ReadFile(c.CACert)
	if err != nil {
		return fmt.Errorf("--ca-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(c.CAKey)
	if err != nil {
		return fmt.Errorf("--ca-key: %w", err)
	}
	ca, err := pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return err
	}
	bundle := ca.CertPEM()
	if c.Trust != "" {
		more, err := os.ReadFile(c.Trust)
		if err != nil {
			return fmt.Errorf("--trust: %w", err)
		}
		certs, err := pki.ParseCerts(more)
		if err != nil {
			return fmt.Errorf("--trust %s: %w", c.Trust, err)
		}
		bundle = pki.Bundle(append([]*x509.Certificate{ca.Cert}, certs...)...)
	}
	if err := os.MkdirAll(c.OutDir, 0o700); err != nil {
		return fmt.Errorf("--out-dir: %w", err)
	}
	f, err := WriteIdentity(c.OutDir, ca, bundle, comp, time.Now(), c.Validity)
	if err != nil {
		return err
	}
	log.Info("certificate issued", "component", comp, "cert", f.Cert, "key", f.Key, "ca", f.CA)
	return nil
}
