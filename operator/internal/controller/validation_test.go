package controller_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// TestTransitionRules: what Kafka cannot do to existing topics is refused by
// the API server, with a message saying why; what it can do is accepted.
func TestTransitionRules(t *testing.T) {
	ns := newNamespace(t)
	cc := newCluster(ns, "rules")
	cc.Spec.Kafka.TopicPrefix = "rules"
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, patch, want string }{
		{"topicPrefix changed", `{"spec":{"kafka":{"topicPrefix":"other"}}}`, "spec.kafka.topicPrefix cannot be changed"},
		{"topicPrefix removed", `{"spec":{"kafka":{"topicPrefix":null}}}`, "spec.kafka.topicPrefix cannot be changed"},
		{"partitions lowered", `{"spec":{"kafka":{"partitions":2}}}`, "spec.kafka.partitions cannot be lowered"},
		{"replicationFactor raised", `{"spec":{"kafka":{"replicationFactor":2}}}`, "spec.kafka.replicationFactor cannot be changed"},
		{"partitions raised", `{"spec":{"kafka":{"partitions":6}}}`, ""},
		{"partitions kept, retention changed", `{"spec":{"kafka":{"partitions":6,"retention":"48h"}}}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := k8s.Patch(bg, &chatv1.ChatCluster{ObjectMeta: cc.ObjectMeta}, client.RawPatch(types.MergePatchType, []byte(tt.patch)))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one about %q", err, tt.want)
			}
		})
	}
}

// TestSecretRefsNeedNames: a Secret reference with an empty name (or key,
// where a key is read) is refused at admission instead of failing later.
func TestSecretRefsNeedNames(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name   string
		mutate func(*chatv1.ChatCluster)
		want   string
	}{
		{"mysql dsn without name", func(c *chatv1.ChatCluster) { c.Spec.MySQL.DSNSecretRef.Name = "" }, "spec.mysql.dsnSecretRef"},
		{"mysql dsn without key", func(c *chatv1.ChatCluster) { c.Spec.MySQL.DSNSecretRef.Key = "" }, "spec.mysql.dsnSecretRef"},
		{"redis password without name", func(c *chatv1.ChatCluster) { c.Spec.Redis.PasswordSecretRef = secretKey("", "password") }, "spec.redis.passwordSecretRef"},
		{"jwt without key", func(c *chatv1.ChatCluster) { c.Spec.Auth.JWTSecretRef = secretKey("jwt", "") }, "spec.auth.jwtSecretRef"},
		{"webhook secret without name", func(c *chatv1.ChatCluster) {
			c.Spec.Notifications.WebhookURL = "https://relay"
			c.Spec.Notifications.WebhookSecretRef = secretKey("", "key")
		}, "spec.notifications.webhookSecretRef"},
		{"kafka credentials without name", func(c *chatv1.ChatCluster) { c.Spec.Kafka.CredentialsSecretRef = &corev1.LocalObjectReference{} }, "spec.kafka.credentialsSecretRef needs a non-empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := newCluster(ns, "bad")
			tt.mutate(cc)
			err := k8s.Create(bg, cc)
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one about %q", err, tt.want)
			}
		})
	}
}

func secretKey(name, key string) *corev1.SecretKeySelector {
	return &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}
}
