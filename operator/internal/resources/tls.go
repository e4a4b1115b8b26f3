package resources

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// Internal mutual TLS (docs/operator.md, "Certificates"): the CA Secret
// holds the cluster's CA (and, during a CA rotation, the previous one); each
// component's Secret holds its certificate, key and the CA bundle.
const (
	// Keys of the CA Secret.
	CACertKey         = "ca.crt"
	CAKeyKey          = "ca.key"
	CAPreviousCertKey = "previous.crt"
	CAPreviousKeyKey  = "previous.key"
	// AnnotationCARotatedAt on the CA Secret is when the current CA replaced
	// the previous one (RFC 3339); absent when there is no previous CA.
	AnnotationCARotatedAt = "chat.gochat.io/ca-rotated-at"
	// Keys of a component's Secret (a kubernetes.io/tls Secret plus the bundle).
	TLSBundleKey = "ca.crt"
	TLSCertKey   = corev1.TLSCertKey
	TLSKeyKey    = corev1.TLSPrivateKeyKey
	// TLSMountPath is where a pod finds its component's Secret.
	TLSMountPath = "/etc/gochat/tls"
)

// TLSComponents have a certificate of their own. The migration Job calls no
// gRPC service and gets none.
var TLSComponents = []string{Gateway, Logic, Repo, Task}

// CASecretName is the cluster's CA Secret.
func CASecretName(cc *chatv1.ChatCluster) string { return cc.Name + "-ca" }

// TLSSecretName is a component's certificate Secret.
func TLSSecretName(cc *chatv1.ChatCluster, component string) string {
	return fmt.Sprintf("%s-%s-tls", cc.Name, component)
}

// CASecret is the CA Secret with data; rotatedAt is empty outside a rotation.
func CASecret(cc *chatv1.ChatCluster, data map[string][]byte, rotatedAt string) *corev1.Secret {
	s := &corev1.Secret{
		TypeMeta:   typeMetaSecret,
		ObjectMeta: meta(cc, CASecretName(cc), "ca"),
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
	if rotatedAt != "" {
		s.Annotations = map[string]string{AnnotationCARotatedAt: rotatedAt}
	}
	return s
}

// TLSSecret is a component's certificate Secret.
func TLSSecret(cc *chatv1.ChatCluster, component string, bundle, cert, key []byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   typeMetaSecret,
		ObjectMeta: meta(cc, TLSSecretName(cc, component), component),
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{TLSBundleKey: bundle, TLSCertKey: cert, TLSKeyKey: key},
	}
}

var typeMetaSecret = metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}

// TLSFileMode is the mode of the mounted certificate files: owner root,
// group the pod's fsGroup.
const TLSFileMode = 0o440

func int32Ptr(i int32) *int32 { return &i }

// tlsMount is a component's certificate Secret as a read-only volume and the
// variables that point the service at it. The Secret is not part of the
// pod template's Secret hash: a renewal updates the files in place (the
// services re-read them), so it rolls no pod.
func tlsMount(cc *chatv1.ChatCluster, component string) ([]corev1.Volume, []corev1.VolumeMount, []corev1.EnvVar) {
	known := false
	for _, c := range TLSComponents {
		known = known || c == component
	}
	if !known {
		return nil, nil, nil
	}
	// Readable by the pod's group only (fsGroup, see podTemplate): the
	// private key is not world-readable even inside the container.
	return []corev1.Volume{{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: TLSSecretName(cc, component), DefaultMode: int32Ptr(TLSFileMode),
		}}}},
		[]corev1.VolumeMount{{Name: "tls", MountPath: TLSMountPath, ReadOnly: true}},
		[]corev1.EnvVar{
			{Name: "GOCHAT_TLS_CA", Value: TLSMountPath + "/" + TLSBundleKey},
			{Name: "GOCHAT_TLS_CERT", Value: TLSMountPath + "/" + TLSCertKey},
			{Name: "GOCHAT_TLS_KEY", Value: TLSMountPath + "/" + TLSKeyKey},
		}
}
