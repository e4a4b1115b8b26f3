// Package resources builds every object a ChatCluster owns. Each builder is a
// pure function of the ChatCluster (and what the operator resolved for it):
// no API calls, so each is tested by comparing what it returns.
package resources

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// Components.
const (
	Gateway = "gateway"
	Logic   = "logic"
	Repo    = "repo"
	Task    = "task"
	Migrate = "migrate"
)

// Ports the services listen on inside their pods.
const (
	GatewayHTTPPort = 8080
	GatewayGRPCPort = 9000
	LogicGRPCPort   = 9001
	RepoGRPCPort    = 9002
	GatewayMetrics  = 9100
	LogicMetrics    = 9101
	RepoMetrics     = 9102
	TaskMetrics     = 9103
)

// Annotations on pod templates; a change rolls the pods.
const (
	AnnotationConfigHash = "chat.gochat.io/config-hash"
	AnnotationSecretHash = "chat.gochat.io/secret-hash"
	// AnnotationImage on the repo Deployment is the image it runs: it only
	// moves to a new image once that image's migration has succeeded.
	AnnotationImage = "chat.gochat.io/image"
	// AnnotationRestartedAt on a ChatCluster (kubectl chat restart sets it)
	// is copied onto every component's pod template, so a new value rolls
	// every Deployment and the gateways, which go through their drain roll
	// like any other template change.
	AnnotationRestartedAt = "chat.gochat.io/restartedAt"
	FieldManager          = "gochat-operator"
)

// Name of the object of a component: "<cluster>-<component>".
func Name(cc *chatv1.ChatCluster, component string) string { return cc.Name + "-" + component }

// ConfigMapName is the settings ConfigMap.
func ConfigMapName(cc *chatv1.ChatCluster) string { return cc.Name + "-config" }

// ServiceAccountName is the pods' ServiceAccount.
func ServiceAccountName(cc *chatv1.ChatCluster) string { return cc.Name + "-gochat" }

// JWTSecretName is the Secret the operator generates when spec.auth.jwtSecretRef is absent.
func JWTSecretName(cc *chatv1.ChatCluster) string { return cc.Name + "-jwt" }

// GatewayPodsServiceName is the gateways' headless Service (StatefulSet DNS).
func GatewayPodsServiceName(cc *chatv1.ChatCluster) string { return cc.Name + "-gateway-pods" }

// MigrationJobName is unique per image: a new image gets its own Job.
func MigrationJobName(cc *chatv1.ChatCluster) string {
	return cc.Name + "-migrate-" + ShortHash(Image(cc, Repo))
}

// Every object the operator makes carries LabelManagedBy=ManagedBy: the
// operator's cache holds only those (controller.CacheOptions).
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "gochat-operator"
)

// Labels of a component's objects.
func Labels(cc *chatv1.ChatCluster, component string) map[string]string {
	l := SelectorLabels(cc, component)
	l[LabelManagedBy] = ManagedBy
	l["app.kubernetes.io/part-of"] = "gochat"
	return l
}

// SelectorLabels select a component's pods; they never change.
func SelectorLabels(cc *chatv1.ChatCluster, component string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "gochat",
		"app.kubernetes.io/instance":  cc.Name,
		"app.kubernetes.io/component": component,
	}
}

// GatewaySelector is the gateways' selector as a string, for the scale subresource.
func GatewaySelector(cc *chatv1.ChatCluster) string {
	return metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: SelectorLabels(cc, Gateway)})
}

// AnnotationDefaultImage on a ChatCluster without spec.image records the
// image of the operator's release that it runs (set by the operator).
const AnnotationDefaultImage = "chat.gochat.io/default-image"

// Image of a component: its override, else spec.image, else the operator's
// default recorded in AnnotationDefaultImage.
func Image(cc *chatv1.ChatCluster, component string) string {
	var img string
	switch component {
	case Gateway:
		img = cc.Spec.Gateway.Image
	case Logic:
		img = cc.Spec.Logic.Image
	case Repo, Migrate:
		img = cc.Spec.Repo.Image
	case Task:
		img = cc.Spec.Task.Image
	}
	if img == "" {
		img = cc.Spec.Image
	}
	if img == "" {
		img = cc.Annotations[AnnotationDefaultImage]
	}
	return img
}

// TopicPrefix is spec.kafka.topicPrefix or "<namespace>.<name>".
func TopicPrefix(cc *chatv1.ChatCluster) string {
	if cc.Spec.Kafka.TopicPrefix != "" {
		return cc.Spec.Kafka.TopicPrefix
	}
	return cc.Namespace + "." + cc.Name
}

// Topics are the Kafka topics of a cluster.
func Topics(cc *chatv1.ChatCluster) []string {
	p := TopicPrefix(cc)
	return []string{p + ".events", p + ".messages"}
}

// ShortHash is 10 hex digits of SHA-256.
func ShortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:10]
}

// HashData hashes a map in key order (ConfigMap or Secret data).
func HashData[V string | []byte](data map[string]V) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%x;", k, sha256.Sum256([]byte(data[k])))
	}
	return ShortHash(b.String())
}

func ownerRef(cc *chatv1.ChatCluster) []metav1.OwnerReference {
	t, f := true, true
	return []metav1.OwnerReference{{
		APIVersion: chatv1.GroupVersion.String(), Kind: "ChatCluster", Name: cc.Name, UID: cc.UID,
		Controller: &t, BlockOwnerDeletion: &f,
	}}
}

func meta(cc *chatv1.ChatCluster, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: cc.Namespace, Labels: Labels(cc, component), OwnerReferences: ownerRef(cc)}
}

func replicas(p *int32, def int32) *int32 {
	if p == nil {
		return &def
	}
	v := *p
	return &v
}
