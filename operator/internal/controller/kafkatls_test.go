package controller_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// kafkaPodConfig is the Kafka part of a component's pod as built: its
// plain variables, whether the secret ones are there, and the CA volume.
func kafkaPodConfig(t *testing.T, ns, name string) (map[string]string, bool, *corev1.Volume, error) {
	var d appsv1.Deployment
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, &d); err != nil {
		return nil, false, nil, err
	}
	c := container(t, d.Spec.Template.Spec)
	env := map[string]string{}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "GOCHAT_KAFKA_") && e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	sasl := secretEnv(c, "GOCHAT_KAFKA_SASL_USER") != nil && secretEnv(c, "GOCHAT_KAFKA_SASL_PASSWORD") != nil
	for i := range d.Spec.Template.Spec.Volumes {
		if v := &d.Spec.Template.Spec.Volumes[i]; v.Name == "kafka-ca" {
			return env, sasl, v, nil
		}
	}
	return env, sasl, nil, nil
}

// TestKafkaSASLWithoutCA: a credentials Secret without ca.crt gives TLS with
// the system roots, and no CA file to crash on; adding ca.crt mounts it. The
// operator's own Kafka client uses the same TLS, so a plaintext broker is
// not reported as ready.
func TestKafkaSASLWithoutCA(t *testing.T) {
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
		c.Spec.Kafka.CredentialsSecretRef = &corev1.LocalObjectReference{Name: "kafka-creds"}
	})
	createSecret(t, ns, "kafka-creds", map[string]string{"username": "u", "password": "p"})
	passMigration(t, ns)
	for _, comp := range []string{"demo-logic", "demo-task"} {
		eventually(t, 30*time.Second, comp+" configured for SASL over TLS with the system roots", func() error {
			env, sasl, vol, err := kafkaPodConfig(t, ns, comp)
			switch {
			case err != nil:
				return err
			case !sasl:
				return fmt.Errorf("no SASL variables")
			case env["GOCHAT_KAFKA_TLS"] != "true":
				return fmt.Errorf("env %v: TLS not on", env)
			case env["GOCHAT_KAFKA_TLS_CA"] != "" || vol != nil:
				return fmt.Errorf("env %v, volume %v: a CA file the Secret does not have", env, vol)
			}
			return nil
		})
	}
	eventually(t, 30*time.Second, "the plaintext test broker is not reported ready over TLS", func() error {
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionKafkaTopicsReady)
		if c.Status != metav1.ConditionFalse {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})

	edit(t, ns, "kafka-creds", &corev1.Secret{}, func(s *corev1.Secret) { s.StringData = map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----"} })
	eventually(t, 30*time.Second, "ca.crt mounted once the Secret has it", func() error {
		env, _, vol, err := kafkaPodConfig(t, ns, "demo-logic")
		switch {
		case err != nil:
			return err
		case env["GOCHAT_KAFKA_TLS_CA"] != "/etc/gochat/kafka/ca.crt" || vol == nil || vol.Secret == nil:
			return fmt.Errorf("env %v, volume %v", env, vol)
		case vol.Secret.SecretName != "kafka-creds" || len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != "ca.crt":
			return fmt.Errorf("volume %+v", vol.Secret)
		}
		return nil
	})
}

// TestKafkaTLSSpec: an explicit CA Secret key is mounted, and the API server
// refuses SASL over plaintext unless allowPlaintextSASL says so.
func TestKafkaTLSSpec(t *testing.T) {
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
		c.Spec.Kafka.TLS.CASecretRef = secretKey("kafka-ca", "bundle.pem")
	})
	createSecret(t, ns, "kafka-ca", map[string]string{"bundle.pem": "-----BEGIN CERTIFICATE-----"})
	passMigration(t, ns)
	eventually(t, 30*time.Second, "CA mounted from tls.caSecretRef", func() error {
		env, sasl, vol, err := kafkaPodConfig(t, ns, "demo-task")
		switch {
		case err != nil:
			return err
		case sasl || env["GOCHAT_KAFKA_TLS"] != "true" || env["GOCHAT_KAFKA_TLS_CA"] != "/etc/gochat/kafka/ca.crt":
			return fmt.Errorf("env %v, SASL %v", env, sasl)
		case vol == nil || vol.Secret.SecretName != "kafka-ca" || vol.Secret.Items[0].Key != "bundle.pem":
			return fmt.Errorf("volume %v", vol)
		}
		return nil
	})

	f, tr := false, true
	refused := newCluster(ns, "plain-sasl")
	refused.Spec.Kafka.CredentialsSecretRef = &corev1.LocalObjectReference{Name: "kafka-creds"}
	refused.Spec.Kafka.TLS.Enabled = &f
	if err := k8s.Create(bg, refused); err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "allowPlaintextSASL") {
		t.Fatalf("SASL over plaintext: error %v", err)
	}
	caWithoutTLS := newCluster(ns, "ca-no-tls")
	caWithoutTLS.Spec.Kafka.TLS = chatv1.KafkaTLSSpec{Enabled: &f, CASecretRef: secretKey("kafka-ca", "bundle.pem")}
	if err := k8s.Create(bg, caWithoutTLS); err == nil || !strings.Contains(err.Error(), "caSecretRef needs TLS") {
		t.Fatalf("CA without TLS: error %v", err)
	}
	optIn := newCluster(ns, "plain-sasl-opt-in")
	optIn.Spec.Kafka.CredentialsSecretRef = &corev1.LocalObjectReference{Name: "kafka-creds"}
	optIn.Spec.Kafka.TLS.Enabled = &f
	optIn.Spec.Kafka.AllowPlaintextSASL = tr
	if err := k8s.Create(bg, optIn); err != nil {
		t.Fatalf("opted-in SASL over plaintext refused: %v", err)
	}
}
