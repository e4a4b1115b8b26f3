package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/kafka"
	"github.com/gochat/gochat/operator/internal/resources"
	"github.com/gochat/gochat/operator/internal/status"
)

// kafkaCredentialsCA says whether the Kafka credentials Secret holds ca.crt,
// so that pods are pointed at a CA file only when one will be there.
func (r *Reconciler) kafkaCredentialsCA(ctx context.Context, cc *chatv1.ChatCluster) bool {
	ref := cc.Spec.Kafka.CredentialsSecretRef
	if ref == nil {
		return false
	}
	var s corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: ref.Name}, &s); err != nil {
		return false // a missing Secret is reported by secretHashes
	}
	return len(s.Data["ca.crt"]) > 0
}

// kafkaConnection reads the brokers, credentials and CA of the spec: the
// operator reaches Kafka exactly as the pods it configures do.
func (r *Reconciler) kafkaConnection(ctx context.Context, cc *chatv1.ChatCluster) (kafka.Connection, error) {
	k := cc.Spec.Kafka
	c := kafka.Connection{Brokers: k.BootstrapServers, TLS: k.KafkaTLSEnabled()}
	read := func(name, what string) (*corev1.Secret, error) {
		var s corev1.Secret
		if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: name}, &s); err != nil {
			return nil, &kafka.Error{Reason: status.ReasonSecretMissing, Err: fmt.Errorf("kafka %s secret %s: %w", what, name, err)}
		}
		return &s, nil
	}
	if ref := k.CredentialsSecretRef; ref != nil {
		s, err := read(ref.Name, "credentials")
		if err != nil {
			return c, err
		}
		c.Username, c.Password = string(s.Data["username"]), string(s.Data["password"])
	}
	in := resources.Inputs{KafkaCredentialsCA: r.kafkaCredentialsCA(ctx, cc)}
	if ref := resources.KafkaCA(cc, in); ref != nil {
		s, err := read(ref.Name, "CA")
		if err != nil {
			return c, err
		}
		if c.CA = s.Data[ref.Key]; len(c.CA) == 0 {
			return c, &kafka.Error{Reason: status.ReasonSecretMissing, Err: fmt.Errorf("kafka CA secret %s has no key %q", ref.Name, ref.Key)}
		}
	}
	return c, nil
}
