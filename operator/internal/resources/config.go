package resources

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// ConfigData is every non-secret setting, as GOCHAT_* variables. Secrets
// never go here: they reach containers as secretKeyRef variables.
func ConfigData(cc *chatv1.ChatCluster) map[string]string {
	ns := cc.Namespace
	d := map[string]string{
		"GOCHAT_LOG_LEVEL":           "info",
		"GOCHAT_KAFKA_BROKERS":       strings.Join(cc.Spec.Kafka.BootstrapServers, ","),
		"GOCHAT_KAFKA_TOPIC_PREFIX":  TopicPrefix(cc),
		"GOCHAT_KAFKA_ENSURE_TOPICS": "false", // the operator owns the topics
		"GOCHAT_CONSUMER_GROUP":      TopicPrefix(cc) + ".task",
		"GOCHAT_REDIS_ADDR":          cc.Spec.Redis.Address,
		"GOCHAT_REDIS_PREFIX":        "gochat:" + ns + "." + cc.Name + ":",
		"GOCHAT_REPO_ADDR":           fmt.Sprintf("dns:///%s.%s.svc:%d", Name(cc, Repo), ns, RepoGRPCPort),
		"GOCHAT_LOGIC_ADDR":          fmt.Sprintf("dns:///%s.%s.svc:%d", Name(cc, Logic), ns, LogicGRPCPort),
	}
	if cc.Spec.Notifications.WebhookURL != "" {
		d["GOCHAT_WEBHOOK_URL"] = cc.Spec.Notifications.WebhookURL
	}
	return d
}

// ConfigMap holds ConfigData.
func ConfigMap(cc *chatv1.ChatCluster) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(cc, ConfigMapName(cc), "config"),
		Data:       ConfigData(cc),
	}
}

// ServiceAccount of every GoChat pod. The services never call the Kubernetes
// API, so it has no Role and mounts no token.
func ServiceAccount(cc *chatv1.ChatCluster) *corev1.ServiceAccount {
	f := false
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   meta(cc, ServiceAccountName(cc), "config"),
		AutomountServiceAccountToken: &f,
	}
}

// JWTSecret is the generated token secret (when the spec names none). The
// value is made by the caller once; the Secret is then kept as it is.
func JWTSecret(cc *chatv1.ChatCluster, value string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: meta(cc, JWTSecretName(cc), "config"),
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{"secret": value},
	}
}

// JWTSecretRef is the secret key the gateway and logic read the token secret from.
func JWTSecretRef(cc *chatv1.ChatCluster) corev1.SecretKeySelector {
	if r := cc.Spec.Auth.JWTSecretRef; r != nil {
		return *r
	}
	return corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: JWTSecretName(cc)}, Key: "secret"}
}

// SecretKeys lists the Secret keys each component reads, so the controller
// can hash their values into the pod template (a changed Secret rolls only
// the pods that use it).
func SecretKeys(cc *chatv1.ChatCluster) map[string][]corev1.SecretKeySelector {
	jwt := JWTSecretRef(cc)
	out := map[string][]corev1.SecretKeySelector{
		Gateway: {jwt},
		Logic:   {jwt},
		Repo:    {cc.Spec.MySQL.DSNSecretRef},
		Migrate: {cc.Spec.MySQL.DSNSecretRef},
		Task:    nil,
	}
	if r := cc.Spec.Redis.PasswordSecretRef; r != nil {
		out[Repo] = append(out[Repo], *r)
	}
	if r := cc.Spec.Kafka.CredentialsSecretRef; r != nil {
		for _, k := range []string{"username", "password", "ca.crt"} {
			ref := corev1.SecretKeySelector{LocalObjectReference: *r, Key: k}
			out[Logic] = append(out[Logic], ref)
			out[Task] = append(out[Task], ref)
		}
	}
	if r := cc.Spec.Kafka.TLS.CASecretRef; r != nil {
		out[Logic] = append(out[Logic], *r)
		out[Task] = append(out[Task], *r)
	}
	if r := cc.Spec.Notifications.WebhookSecretRef; r != nil {
		out[Task] = append(out[Task], *r)
	}
	return out
}

// SecretNames are every Secret a cluster reads (to watch them).
func SecretNames(cc *chatv1.ChatCluster) []string {
	seen := map[string]bool{}
	var out []string
	for _, refs := range SecretKeys(cc) {
		for _, r := range refs {
			if !seen[r.Name] {
				seen[r.Name] = true
				out = append(out, r.Name)
			}
		}
	}
	return out
}
