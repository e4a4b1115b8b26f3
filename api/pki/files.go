package pki

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Files are the paths of one identity's CA bundle, certificate and key.
type Files struct{ CA, Cert, Key string }

// WriteIdentity issues component c a certificate from ca and writes
// <c>.crt, <c>.key and ca.crt (bundle) into dir, mode 0600, each file
// replaced whole, so a process that re-reads them never sees half of one.
func WriteIdentity(dir string, ca *CA, bundle []byte, c Component, now time.Time, validity time.Duration) (Files, error) {
	kp, err := ca.Issue(c, now, validity)
	if err != nil {
		return Files{}, err
	}
	f := Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, string(c)+".crt"), Key: filepath.Join(dir, string(c)+".key")}
	// The key goes first: a reader that sees the new certificate finds its key.
	for _, w := range []struct {
		path string
		data []byte
	}{{f.Key, kp.KeyPEM}, {f.Cert, kp.CertPEM}, {f.CA, bundle}} {
		if err := WriteFileAtomic(w.path, w.data); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// WriteFileAtomic replaces path with data (mode 0600) by a rename, so a
// reader sees the old file or the new one, never part of one.
func WriteFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
