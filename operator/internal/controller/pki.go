package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gochat/gochat/api/pki"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/resources"
)

// caPropagation is how long the operator lets kubelets take to put an
// updated Secret into the pods' volumes (their sync period plus the Secret
// cache's), before it relies on every pod having the new files.
const caPropagation = 5 * time.Minute

// operatorCertValidity is the life of the operator's in-memory client
// certificate; it is reissued at two thirds of it.
const operatorCertValidity = 24 * time.Hour

// caState is the CA Secret, parsed.
type caState struct {
	current   *pki.CA
	previous  *pki.CA // during a rotation only
	rotatedAt time.Time
}

// signer is the CA that issues leaves now: the previous one until every
// pod has had time to trust the new one, then the new one.
func (s caState) signer(now time.Time) *pki.CA {
	if s.previous != nil && now.Before(s.rotatedAt.Add(caPropagation)) {
		return s.previous
	}
	return s.current
}

// bundle is what every component trusts: the current CA and, during a
// rotation, the previous one.
func (s caState) bundle() []byte {
	if s.previous != nil {
		return pki.Bundle(s.current.Cert, s.previous.Cert)
	}
	return pki.Bundle(s.current.Cert)
}

func (s caState) issuedBy(cert *x509.Certificate, ca *pki.CA) bool {
	if ca == nil {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: cert.NotBefore.Add(time.Minute)})
	return err == nil
}

// planCA decides what happens to the CA: rotate when it has used two thirds
// of its life (there is then a third of it left for the change), and finish
// a rotation once every leaf is issued by the new CA and has had time to
// reach its pods.
func planCA(s caState, leaves []*x509.Certificate, now time.Time) (rotate, finish bool) {
	if s.previous == nil {
		return pki.NeedsRenewal(s.current.Cert, now), false
	}
	if now.Before(s.rotatedAt.Add(caPropagation)) {
		return false, false
	}
	for _, l := range leaves {
		if l == nil || !s.issuedBy(l, s.current) || now.Before(pki.IssuedAt(l).Add(2*caPropagation)) {
			return false, false
		}
	}
	return false, true
}

// planLeaf decides whether a component's certificate is (re)issued, and
// says why; "" keeps it.
func planLeaf(s caState, leaf *x509.Certificate, now time.Time) string {
	switch {
	case leaf == nil:
		return "issued"
	case pki.NeedsRenewal(leaf, now):
		return "renewed at two thirds of its life"
	case s.issuedBy(leaf, s.current):
		return ""
	case s.issuedBy(leaf, s.previous):
		if s.signer(now) == s.current {
			return "reissued under the new CA"
		}
		return ""
	default:
		return "reissued: not issued by this cluster's CA"
	}
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// ensurePKI creates the cluster's CA and the components' certificate
// Secrets, renews them, and rotates the CA (docs/operator.md,
// "Certificates"). Secrets are created once and owned by the ChatCluster;
// events name Secrets and fingerprints, never key material.
func (r *Reconciler) ensurePKI(ctx context.Context, cc *chatv1.ChatCluster) error {
	now := r.now()
	st, err := r.ensureCA(ctx, cc, now)
	if err != nil {
		return err
	}
	leaves := map[string]*corev1.Secret{}
	var certs []*x509.Certificate
	for _, c := range resources.TLSComponents {
		var s corev1.Secret
		err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.TLSSecretName(cc, c)}, &s)
		switch {
		case apierrors.IsNotFound(err):
			leaves[c] = nil
			certs = append(certs, nil)
		case err != nil:
			return fmt.Errorf("get secret %s: %w", resources.TLSSecretName(cc, c), err)
		default:
			leaves[c] = &s
			certs = append(certs, leafOf(&s))
		}
	}
	if rotate, finish := planCA(st, certs, now); rotate {
		if st, err = r.rotateCA(ctx, cc, st, now); err != nil {
			return err
		}
	} else if finish {
		if st, err = r.finishRotation(ctx, cc, st); err != nil {
			return err
		}
	}
	rebundled := false
	for _, c := range resources.TLSComponents {
		changed, err := r.ensureLeaf(ctx, cc, st, c, leaves[c], now)
		if err != nil {
			return err
		}
		rebundled = rebundled || changed
	}
	// A rotation's propagation clock runs from the last bundle written, not
	// from the CA Secret's update: a bundle that failed to write at first
	// reaches its pods only from its own write on.
	if at := now.UTC().Truncate(time.Second); rebundled && st.previous != nil && st.rotatedAt.Before(at) {
		st.rotatedAt = at
		if err := r.updateCA(ctx, cc, st); err != nil {
			return err
		}
	}
	return nil
}

// leafOf parses a component Secret's certificate, checking its key; nil if
// either is unusable.
func leafOf(s *corev1.Secret) *x509.Certificate {
	kp, err := pki.ParseKeyPair(s.Data[resources.TLSCertKey], s.Data[resources.TLSKeyKey])
	if err != nil {
		return nil
	}
	return kp.Cert
}

func (r *Reconciler) ensureCA(ctx context.Context, cc *chatv1.ChatCluster, now time.Time) (caState, error) {
	var s corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.CASecretName(cc)}, &s)
	if err != nil && !apierrors.IsNotFound(err) {
		return caState{}, fmt.Errorf("get secret %s: %w", resources.CASecretName(cc), err)
	}
	if apierrors.IsNotFound(err) {
		ca, err := pki.NewCA(cc.Namespace+"/"+cc.Name, now, pki.CAValidity)
		if err != nil {
			return caState{}, err
		}
		data, err := caData(ca, nil)
		if err != nil {
			return caState{}, err
		}
		if err := r.Create(ctx, resources.CASecret(cc, data, "")); err != nil {
			return caState{}, fmt.Errorf("create secret %s: %w", resources.CASecretName(cc), err)
		}
		r.event(cc, corev1.EventTypeNormal, "CACreated", "CreateCA", "created the internal CA (fingerprint %s, expires %s) in Secret %s",
			pki.Fingerprint(ca.Cert), ca.Cert.NotAfter.Format(time.RFC3339), resources.CASecretName(cc))
		return caState{current: ca}, nil
	}
	st, err := caStateOf(&s)
	if err != nil {
		// A CA that cannot be read is not replaced behind the user's back:
		// every pod trusts it. Deleting the Secret starts over.
		r.event(cc, corev1.EventTypeWarning, "CAInvalid", "ReadCA", "Secret %s does not hold a usable CA (delete it to have a new one made): %v", s.Name, err)
		return caState{}, err
	}
	return st, nil
}

// caStateOf reads the CA Secret: the current CA, and during a rotation the
// previous one and when the rotation began.
func caStateOf(s *corev1.Secret) (caState, error) {
	ca, err := pki.ParseCA(s.Data[resources.CACertKey], s.Data[resources.CAKeyKey])
	if err != nil {
		return caState{}, fmt.Errorf("secret %s: %w", s.Name, err)
	}
	st := caState{current: ca}
	if len(s.Data[resources.CAPreviousCertKey]) > 0 {
		prev, err := pki.ParseCA(s.Data[resources.CAPreviousCertKey], s.Data[resources.CAPreviousKeyKey])
		if err != nil {
			return caState{}, fmt.Errorf("secret %s, previous CA: %w", s.Name, err)
		}
		at, err := time.Parse(time.RFC3339, s.Annotations[resources.AnnotationCARotatedAt])
		if err != nil {
			return caState{}, fmt.Errorf("secret %s: annotation %s: %w", s.Name, resources.AnnotationCARotatedAt, err)
		}
		st.previous, st.rotatedAt = prev, at
	}
	return st, nil
}

func caData(current, previous *pki.CA) (map[string][]byte, error) {
	key, err := current.KeyPEM()
	if err != nil {
		return nil, err
	}
	d := map[string][]byte{resources.CACertKey: current.CertPEM(), resources.CAKeyKey: key}
	if previous != nil {
		pkey, err := previous.KeyPEM()
		if err != nil {
			return nil, err
		}
		d[resources.CAPreviousCertKey], d[resources.CAPreviousKeyKey] = previous.CertPEM(), pkey
	}
	return d, nil
}

func (r *Reconciler) updateCA(ctx context.Context, cc *chatv1.ChatCluster, st caState) error {
	data, err := caData(st.current, st.previous)
	if err != nil {
		return err
	}
	rotatedAt := ""
	if st.previous != nil {
		rotatedAt = st.rotatedAt.UTC().Format(time.RFC3339)
	}
	var s corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.CASecretName(cc)}, &s); err != nil {
		return fmt.Errorf("get secret %s: %w", resources.CASecretName(cc), err)
	}
	want := resources.CASecret(cc, data, rotatedAt)
	s.Data = want.Data
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	if rotatedAt == "" {
		delete(s.Annotations, resources.AnnotationCARotatedAt)
	} else {
		s.Annotations[resources.AnnotationCARotatedAt] = rotatedAt
	}
	if err := r.Update(ctx, &s); err != nil {
		return fmt.Errorf("update secret %s: %w", s.Name, err)
	}
	return nil
}

// rotateCA makes a new CA and keeps the old one beside it: every bundle
// trusts both until every leaf is issued by the new one.
func (r *Reconciler) rotateCA(ctx context.Context, cc *chatv1.ChatCluster, st caState, now time.Time) (caState, error) {
	ca, err := pki.NewCA(cc.Namespace+"/"+cc.Name, now, pki.CAValidity)
	if err != nil {
		return st, err
	}
	next := caState{current: ca, previous: st.current, rotatedAt: now}
	if err := r.updateCA(ctx, cc, next); err != nil {
		return st, err
	}
	r.event(cc, corev1.EventTypeNormal, "CARotationStarted", "RotateCA",
		"the internal CA %s expires %s: new CA %s is trusted beside it; certificates move to it after %s",
		pki.Fingerprint(st.current.Cert), st.current.Cert.NotAfter.Format(time.RFC3339), pki.Fingerprint(ca.Cert), caPropagation)
	return next, nil
}

func (r *Reconciler) finishRotation(ctx context.Context, cc *chatv1.ChatCluster, st caState) (caState, error) {
	next := caState{current: st.current}
	if err := r.updateCA(ctx, cc, next); err != nil {
		return st, err
	}
	r.event(cc, corev1.EventTypeNormal, "CARotationFinished", "RotateCA",
		"every certificate is issued by CA %s: the previous CA %s is no longer trusted", pki.Fingerprint(st.current.Cert), pki.Fingerprint(st.previous.Cert))
	return next, nil
}

// ensureLeaf issues, renews or re-bundles one component's Secret. Updating
// it rolls no pod: the service re-reads the mounted files.
// rebundled reports whether the Secret's CA bundle was written anew.
func (r *Reconciler) ensureLeaf(ctx context.Context, cc *chatv1.ChatCluster, st caState, component string, existing *corev1.Secret, now time.Time) (rebundled bool, err error) {
	var leaf *x509.Certificate
	if existing != nil {
		leaf = leafOf(existing)
	}
	bundle := st.bundle()
	rebundled = existing == nil || !bytes.Equal(existing.Data[resources.TLSBundleKey], bundle)
	reason := planLeaf(st, leaf, now)
	if reason == "" {
		if !rebundled {
			return false, nil
		}
		existing.Data[resources.TLSBundleKey] = bundle
		if err := r.Update(ctx, existing); err != nil {
			return false, fmt.Errorf("update secret %s: %w", existing.Name, err)
		}
		r.eventAbout(cc, existing, corev1.EventTypeNormal, "CABundleUpdated", "UpdateCertificate", "Secret %s now trusts %d CA(s)", existing.Name, 1+btoi(st.previous != nil))
		return true, nil
	}
	signer := st.signer(now)
	kp, err := signer.Issue(pki.Component(component), now, pki.LeafValidity)
	if err != nil {
		return false, fmt.Errorf("issue %s certificate: %w", component, err)
	}
	want := resources.TLSSecret(cc, component, bundle, kp.CertPEM, kp.KeyPEM)
	if existing == nil {
		if err := r.Create(ctx, want); err != nil {
			return false, fmt.Errorf("create secret %s: %w", want.Name, err)
		}
	} else {
		existing.Data = want.Data
		if err := r.Update(ctx, existing); err != nil {
			return false, fmt.Errorf("update secret %s: %w", existing.Name, err)
		}
	}
	issued := want
	if existing != nil {
		issued = existing
	}
	r.eventAbout(cc, issued, corev1.EventTypeNormal, "CertificateIssued", "IssueCertificate", "%s certificate %s (fingerprint %s, CA %s, expires %s) in Secret %s",
		component, reason, pki.Fingerprint(kp.Cert), pki.Fingerprint(signer.Cert), kp.Cert.NotAfter.Format(time.RFC3339), want.Name)
	return rebundled, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// operatorCerts keeps the operator's in-memory client certificate per
// cluster: it is never written anywhere.
type operatorCerts struct {
	mu    sync.Mutex
	certs map[types.UID]operatorCert
}

type operatorCert struct {
	signer string // fingerprint of the CA that issued it
	cert   tls.Certificate
}

// AdminTLSForPod is AdminTLS for the cluster a gateway pod belongs to (its
// namespace and app.kubernetes.io/instance label): for dialers that are
// handed only the pod.
func (r *Reconciler) AdminTLSForPod(ctx context.Context, pod *corev1.Pod) (*tls.Config, error) {
	name := pod.Labels["app.kubernetes.io/instance"]
	if name == "" {
		return nil, fmt.Errorf("pod %s has no app.kubernetes.io/instance label", pod.Name)
	}
	var cc chatv1.ChatCluster
	if err := r.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: name}, &cc); err != nil {
		return nil, fmt.Errorf("cluster of pod %s: %w", pod.Name, err)
	}
	return r.AdminTLS(ctx, &cc)
}

// AdminTLS is the operator's client TLS for cc's gateways: a certificate
// for component operator minted from the cluster's CA, and the bundle to
// check the gateway with. Every operator call to a gateway uses it.
func (r *Reconciler) AdminTLS(ctx context.Context, cc *chatv1.ChatCluster) (*tls.Config, error) {
	now := r.now()
	st, err := r.readCA(ctx, cc)
	if err != nil {
		return nil, err
	}
	signer := st.signer(now)
	fp := pki.Fingerprint(signer.Cert)
	r.opCerts.mu.Lock()
	defer r.opCerts.mu.Unlock()
	if r.opCerts.certs == nil {
		r.opCerts.certs = map[types.UID]operatorCert{}
	}
	// Certificates of deleted clusters go once expired: the map stays as
	// small as the set of clusters of the last day.
	for uid, c := range r.opCerts.certs {
		if now.After(c.cert.Leaf.NotAfter) {
			delete(r.opCerts.certs, uid)
		}
	}
	c, ok := r.opCerts.certs[cc.UID]
	if !ok || c.signer != fp || pki.NeedsRenewal(c.cert.Leaf, now) {
		kp, err := signer.Issue(pki.Operator, now, operatorCertValidity)
		if err != nil {
			return nil, fmt.Errorf("issue the operator's certificate: %w", err)
		}
		pair, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("the operator's certificate: %w", err)
		}
		c = operatorCert{signer: fp, cert: pair}
		r.opCerts.certs[cc.UID] = c
	}
	pool, err := pki.Pool(st.bundle())
	if err != nil {
		return nil, err
	}
	return clientTLS(c.cert, pool, pki.Gateway), nil
}

// readCA reads the CA Secret without creating it.
func (r *Reconciler) readCA(ctx context.Context, cc *chatv1.ChatCluster) (caState, error) {
	var s corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.CASecretName(cc)}, &s); err != nil {
		return caState{}, fmt.Errorf("get secret %s: %w", resources.CASecretName(cc), err)
	}
	return caStateOf(&s)
}

// clientTLS presents cert and accepts only a server whose certificate
// chains to roots and names component server; the dialled address (a pod
// IP) is not what is checked.
func clientTLS(cert tls.Certificate, roots *x509.CertPool, server pki.Component) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   pki.VerifyServer(func() (*x509.CertPool, error) { return roots, nil }, server),
	}
}
