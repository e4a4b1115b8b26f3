package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gochat/gochat/api/pki"
)

// WriteIdentity is pki.WriteIdentity, returning the flags that point a
// service at the files.
func WriteIdentity(dir string, ca *pki.CA, bundle []byte, c pki.Component, now time.Time, validity time.Duration) (TLSFlags, error) {
	f, err := pki.WriteIdentity(dir, ca, bundle, c, now, validity)
	return TLSFlags{CA: f.CA, Cert: f.Cert, Key: f.Key}, err
}

// devPKI keeps the dev mode's CA and the four services' certificates in
// dir: made on first start, reused on restart, a certificate reissued when
// two thirds of its life are gone, and everything reissued under a new CA
// when the CA itself is that old (the dev mode restarts all services at
// once, so it needs no overlap of old and new CA).
func devPKI(dir string, now time.Time, log *slog.Logger) (map[pki.Component]TLSFlags, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create TLS dir: %w", err)
	}
	caCert, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	ca, err := readCA(caCert, caKey)
	switch {
	case err == nil && !pki.NeedsRenewal(ca.Cert, now):
	case err == nil || errors.Is(err, fs.ErrNotExist):
		if ca, err = pki.NewCA("dev", now, pki.CAValidity); err != nil {
			return nil, err
		}
		key, err := ca.KeyPEM()
		if err != nil {
			return nil, err
		}
		if err := pki.WriteFileAtomic(caKey, key); err != nil {
			return nil, err
		}
		if err := pki.WriteFileAtomic(caCert, ca.CertPEM()); err != nil {
			return nil, err
		}
		log.Info("dev CA created", "dir", dir, "fingerprint", pki.Fingerprint(ca.Cert))
	default:
		return nil, fmt.Errorf("dev CA in %s (delete the directory to start over): %w", dir, err)
	}
	pool, err := pki.Pool(ca.CertPEM())
	if err != nil {
		return nil, err
	}
	out := map[pki.Component]TLSFlags{}
	for _, c := range []pki.Component{pki.Gateway, pki.Logic, pki.Repo, pki.Task} {
		f := TLSFlags{CA: caCert, Cert: filepath.Join(dir, string(c)+".crt"), Key: filepath.Join(dir, string(c)+".key")}
		if kp, err := readKeyPair(f.Cert, f.Key); err == nil && !pki.NeedsRenewal(kp.Cert, now) {
			if _, verr := pki.Verify(kp.Cert, nil, pool, 0, now); verr == nil {
				out[c] = f
				continue
			}
		}
		if _, err := WriteIdentity(dir, ca, ca.CertPEM(), c, now, pki.LeafValidity); err != nil {
			return nil, err
		}
		log.Info("dev certificate issued", "component", c)
		out[c] = f
	}
	return out, nil
}

func readCA(certPath, keyPath string) (*pki.CA, error) {
	c, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	k, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	return pki.ParseCA(c, k)
}

func readKeyPair(certPath, keyPath string) (*pki.KeyPair, error) {
	c, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	k, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	return pki.ParseKeyPair(c, k)
}
