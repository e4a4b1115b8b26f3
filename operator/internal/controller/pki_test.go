package controller_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

// clusterCA reads the CA Secret.
func clusterCA(t *testing.T, ns string, cc *chatv1.ChatCluster) (*corev1.Secret, *pki.CA) {
	t.Helper()
	s := get(t, ns, resources.CASecretName(cc), &corev1.Secret{})
	ca, err := pki.ParseCA(s.Data[resources.CACertKey], s.Data[resources.CAKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	return s, ca
}

// waitTLSSecrets waits until every component's Secret exists and check(s) holds.
func waitTLSSecrets(t *testing.T, ns string, cc *chatv1.ChatCluster, what string, check func(component string, s *corev1.Secret) error) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() error {
		for _, c := range resources.TLSComponents {
			var s corev1.Secret
			if err := k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: resources.TLSSecretName(cc, c)}, &s); err != nil {
				return err
			}
			if err := check(c, &s); err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
		}
		return nil
	})
}

// leafOf parses a component Secret and verifies it against its own bundle.
func leafOf(s *corev1.Secret, component string, now time.Time) (*x509.Certificate, int, error) {
	kp, err := pki.ParseKeyPair(s.Data[resources.TLSCertKey], s.Data[resources.TLSKeyKey])
	if err != nil {
		return nil, 0, err
	}
	cas, err := pki.ParseCerts(s.Data[resources.TLSBundleKey])
	if err != nil {
		return nil, 0, err
	}
	pool, err := pki.Pool(s.Data[resources.TLSBundleKey])
	if err != nil {
		return nil, 0, err
	}
	got, err := pki.Verify(kp.Cert, nil, pool, x509.ExtKeyUsageClientAuth, now)
	if err != nil {
		return nil, 0, err
	}
	if string(got) != component {
		return nil, 0, fmt.Errorf("certificate is for %q", got)
	}
	return kp.Cert, len(cas), nil
}

func signedBy(leaf *x509.Certificate, ca *pki.CA) bool {
	return leaf.CheckSignatureFrom(ca.Cert) == nil
}

func TestCertificates(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	passMigration(t, ns)
	eventually(t, 30*time.Second, "CA Secret", func() error {
		return k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: resources.CASecretName(cc)}, &corev1.Secret{})
	})
	cc = getCluster(t, ns, "demo")
	caSecret, ca := clusterCA(t, ns, cc)
	ownedBy(t, caSecret, cc)
	if !ca.Cert.IsCA || ca.Cert.NotAfter.Sub(ca.Cert.NotBefore) < 4*365*24*time.Hour {
		t.Fatalf("CA %v until %s", ca.Cert.IsCA, ca.Cert.NotAfter)
	}
	waitTLSSecrets(t, ns, cc, "component Secrets", func(c string, s *corev1.Secret) error {
		leaf, n, err := leafOf(s, c, time.Now())
		if err != nil {
			return err
		}
		if n != 1 || !signedBy(leaf, ca) || s.Type != corev1.SecretTypeTLS {
			return fmt.Errorf("%d CAs in the bundle, type %s", n, s.Type)
		}
		ownedBy(t, s, cc)
		return nil
	})

	// Each workload mounts its own Secret and is told where; the migration Job gets none.
	eventually(t, 30*time.Second, "workloads", func() error {
		if err := k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: resources.Name(cc, resources.Task)}, &appsv1.Deployment{}); err != nil {
			return err
		}
		return k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: resources.Name(cc, resources.Gateway)}, &appsv1.StatefulSet{})
	})
	for _, c := range []string{resources.Logic, resources.Task} {
		d := get(t, ns, resources.Name(cc, c), &appsv1.Deployment{})
		checkMount(t, d.Spec.Template.Spec, resources.TLSSecretName(cc, c))
	}
	sts := get(t, ns, resources.Name(cc, resources.Gateway), &appsv1.StatefulSet{})
	checkMount(t, sts.Spec.Template.Spec, resources.TLSSecretName(cc, resources.Gateway))

	// Renewal: a certificate past two thirds of its life is reissued, in
	// place, and no pod template changes (the files update in the pods).
	hashBefore := sts.Spec.Template.Annotations[resources.AnnotationSecretHash]
	old, err := ca.Issue(pki.Gateway, time.Now().Add(-70*24*time.Hour), pki.LeafValidity)
	if err != nil {
		t.Fatal(err)
	}
	edit(t, ns, resources.TLSSecretName(cc, resources.Gateway), &corev1.Secret{}, func(s *corev1.Secret) {
		s.Data[resources.TLSCertKey], s.Data[resources.TLSKeyKey] = old.CertPEM, old.KeyPEM
	})
	eventually(t, 30*time.Second, "the gateway certificate renewed", func() error {
		s := get(t, ns, resources.TLSSecretName(cc, resources.Gateway), &corev1.Secret{})
		leaf, _, err := leafOf(s, resources.Gateway, time.Now())
		if err != nil {
			return err
		}
		if pki.NeedsRenewal(leaf, time.Now()) || leaf.Equal(old.Cert) {
			return fmt.Errorf("still the old certificate (issued %s)", leaf.NotBefore)
		}
		return nil
	})
	sts = get(t, ns, resources.Name(cc, resources.Gateway), &appsv1.StatefulSet{})
	if got := sts.Spec.Template.Annotations[resources.AnnotationSecretHash]; got != hashBefore {
		t.Fatalf("a certificate renewal changed the gateway pods' secret hash: %s -> %s", hashBefore, got)
	}

	// The events say what happened without key material.
	eventually(t, 10*time.Second, "certificate events", func() error {
		var evs eventsv1.EventList
		if err := k8s.List(bg, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		reasons := map[string]int{}
		for _, e := range evs.Items {
			if strings.Contains(e.Note, "BEGIN") || strings.Contains(e.Note, "PRIVATE") {
				t.Fatalf("event %s carries PEM: %s", e.Reason, e.Note)
			}
			reasons[e.Reason]++
		}
		// Isomorphic events are folded into series, so count kinds, not occurrences.
		if reasons["CACreated"] != 1 || reasons["CertificateIssued"] < 1 {
			return fmt.Errorf("events %v", reasons)
		}
		return nil
	})
}

func checkMount(t *testing.T, spec corev1.PodSpec, secret string) {
	t.Helper()
	c := container(t, spec)
	found := false
	for _, v := range spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			found = true
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name && (!m.ReadOnly || m.MountPath != resources.TLSMountPath) {
					t.Fatalf("mount %+v", m)
				}
			}
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if !found || env["GOCHAT_TLS_CA"] != resources.TLSMountPath+"/ca.crt" || env["GOCHAT_TLS_CERT"] != resources.TLSMountPath+"/tls.crt" || env["GOCHAT_TLS_KEY"] != resources.TLSMountPath+"/tls.key" {
		t.Fatalf("secret %s mounted %v, env %v", secret, found, env)
	}
}

// TestCARotation moves the operator's clock: the CA at two thirds of its
// life is replaced, both CAs are trusted until every certificate is issued
// by the new one, then the old one leaves every bundle.
func TestCARotation(t *testing.T) {
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	ns, cc, _ := setup(t, nil, func(r *controller.Reconciler) { r.Now = clock })
	eventually(t, 30*time.Second, "CA Secret", func() error {
		return k8s.Get(bg, client.ObjectKey{Namespace: ns, Name: resources.CASecretName(cc)}, &corev1.Secret{})
	})
	_, oldCA := clusterCA(t, ns, cc)
	waitTLSSecrets(t, ns, cc, "first certificates", func(c string, s *corev1.Secret) error {
		_, _, err := leafOf(s, c, clock())
		return err
	})

	offset.Store(int64(pki.CAValidity*2/3 + time.Hour))
	var newCA *pki.CA
	eventually(t, 30*time.Second, "a new CA beside the old one", func() error {
		s, ca := clusterCA(t, ns, cc)
		if ca.Cert.Equal(oldCA.Cert) {
			return fmt.Errorf("still the old CA")
		}
		if s.Annotations[resources.AnnotationCARotatedAt] == "" || len(s.Data[resources.CAPreviousCertKey]) == 0 {
			return fmt.Errorf("the previous CA is not kept")
		}
		newCA = ca
		return nil
	})
	// Every bundle trusts both; certificates still come from the old CA
	// until the pods have had time to trust the new one.
	waitTLSSecrets(t, ns, cc, "bundles of both CAs, leaves of the old", func(c string, s *corev1.Secret) error {
		leaf, n, err := leafOf(s, c, clock())
		if err != nil {
			return err
		}
		if n != 2 || !signedBy(leaf, oldCA) {
			return fmt.Errorf("%d CAs, signed by the old CA: %v", n, signedBy(leaf, oldCA))
		}
		return nil
	})

	offset.Add(int64(6 * time.Minute))
	waitTLSSecrets(t, ns, cc, "leaves of the new CA, both still trusted", func(c string, s *corev1.Secret) error {
		leaf, n, err := leafOf(s, c, clock())
		if err != nil {
			return err
		}
		if n != 2 || !signedBy(leaf, newCA) {
			return fmt.Errorf("%d CAs, signed by the new CA: %v", n, signedBy(leaf, newCA))
		}
		return nil
	})

	offset.Add(int64(11 * time.Minute))
	waitTLSSecrets(t, ns, cc, "only the new CA trusted", func(c string, s *corev1.Secret) error {
		leaf, n, err := leafOf(s, c, clock())
		if err != nil {
			return err
		}
		if n != 1 || !signedBy(leaf, newCA) {
			return fmt.Errorf("%d CAs", n)
		}
		return nil
	})
	s, _ := clusterCA(t, ns, cc)
	if len(s.Data[resources.CAPreviousCertKey]) != 0 || s.Annotations[resources.AnnotationCARotatedAt] != "" {
		t.Fatal("the previous CA is still in the CA Secret")
	}
}

// TestGatewayAdminOverMTLS runs a real gateway process on the Secret the
// operator made for it, and calls its admin service the way the operator
// does (Stats; the roll's Drain goes through the same dial).
func TestGatewayAdminOverMTLS(t *testing.T) {
	grpcAddr := tc.FreePort(t)
	ns, cc, _ := setup(t, nil)
	waitTLSSecrets(t, ns, cc, "component Secrets", func(c string, s *corev1.Secret) error {
		_, _, err := leafOf(s, c, time.Now())
		return err
	})
	cc = getCluster(t, ns, "demo")
	gwSecret := get(t, ns, resources.TLSSecretName(cc, resources.Gateway), &corev1.Secret{})
	dir := t.TempDir()
	files := tc.TLSFiles{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
	for path, key := range map[string]string{files.CA: resources.TLSBundleKey, files.Cert: resources.TLSCertKey, files.Key: resources.TLSKeyKey} {
		if err := os.WriteFile(path, gwSecret.Data[key], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	gw := tc.Start(t, "im-gateway", append(files.Env(), "GOCHAT_JWT_SECRET="+strings.Repeat("operator-test-", 3)),
		"gateway", "--grpc-addr", grpcAddr, "--http-addr", tc.FreePort(t), "--metrics-addr", "",
		"--logic-addr", tc.FreePort(t), "--repo-addr", tc.FreePort(t))
	tc.WaitTCP(t, grpcAddr, gw)

	// The operator's dialer, as main wires it: the pod's IP and the admin
	// port, and the operator's certificate for the pod's cluster (found from
	// the pod's labels).
	r := &controller.Reconciler{Client: k8s}
	host, port, err := net.SplitHostPort(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	portNum, _ := strconv.Atoi(port)
	dialer := gatewayadmin.Dialer{Port: portNum, TLS: r.AdminTLSForPod}
	pod := &corev1.Pod{}
	pod.Name, pod.Namespace, pod.Labels = "demo-gateway-0", ns, resources.SelectorLabels(cc, resources.Gateway)
	pod.Status.PodIP = host
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	st, err := dialer.Stats(ctx, pod)
	if err != nil {
		t.Fatalf("the operator's Stats over mTLS: %v", err)
	}
	if st.Sessions != 0 || st.Draining {
		t.Fatalf("a fresh gateway reports %+v", st)
	}
	if st, err = dialer.Drain(ctx, pod, time.Second, 2*time.Second); err != nil || !st.Draining {
		t.Fatalf("the operator's Drain over mTLS: %+v, %v", st, err)
	}

	// The same call without a certificate is refused.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))) //nolint:gosec // the caller under test has no certificate
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = gochatv1.NewGatewayAdminServiceClient(conn).Stats(ctx, &gochatv1.StatsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Stats without a certificate: %v, want Unauthenticated", err)
	}
}
