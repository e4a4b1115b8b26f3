package v1alpha1

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ChatClusterSpec is what a platform team asks for: docs/operator.md explains every field.
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || !has(self.gateway.drain) || self.gateway.drain.maxUnavailable >= 1",message="spec.gateway.drain.maxUnavailable must be at least 1: with 0 no gateway could ever be replaced"
type ChatClusterSpec struct {
	// Image is the GoChat image; its four entrypoints run the four services.
	// When empty, the image of the operator's own release runs (recorded in
	// the annotation chat.gochat.io/default-image), and an operator upgrade
	// upgrades the cluster.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of every GoChat container.
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +kubebuilder:default=IfNotPresent
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Pods are pod settings shared by every component; a component's own
	// pods block replaces them field by field (labels and annotations merge).
	// +optional
	Pods PodSettings `json:"pods,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Gateway GatewaySpec `json:"gateway,omitempty"`
	// +kubebuilder:default={}
	// +optional
	Logic ComponentSpec `json:"logic,omitempty"`
	// +kubebuilder:default={}
	// +optional
	Repo ComponentSpec `json:"repo,omitempty"`
	// +kubebuilder:default={}
	// +optional
	Task ComponentSpec `json:"task,omitempty"`

	Kafka KafkaSpec `json:"kafka"`
	Redis RedisSpec `json:"redis"`
	MySQL MySQLSpec `json:"mysql"`

	// +optional
	Auth AuthSpec `json:"auth,omitempty"`
	// +optional
	Notifications NotificationsSpec `json:"notifications,omitempty"`
}

// ComponentSpec sizes one of the Deployment-run services.
type ComponentSpec struct {
	// Image overrides spec.image for this component.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=2
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`
	// Resources of the container; requests default to 100m CPU and 128Mi
	// memory when none are given, so that pods are never BestEffort.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Pods override spec.pods for this component.
	// +optional
	Pods PodSettings `json:"pods,omitempty"`
}

// PodSettings are what platform teams set on pods: placement, priority,
// pull secrets, and metadata for their tooling.
type PodSettings struct {
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// TopologySpreadConstraints; gateways default to spreading across nodes.
	// +optional
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// +kubebuilder:validation:MaxLength=253
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// Annotations added to the pods (the operator's own win on a clash).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
	// Labels added to the pods (the operator's own win on a clash).
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// GatewaySpec sizes and exposes the WebSocket gateways.
type GatewaySpec struct {
	// Image overrides spec.image for the gateways.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`
	// Replicas is also the scale subresource (kubectl scale, HPA).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=2
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`
	// +kubebuilder:default={}
	// +optional
	Service GatewayServiceSpec `json:"service,omitempty"`
	// Resources of the container; requests default as for the other components.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Pods override spec.pods for the gateways.
	// +optional
	Pods PodSettings `json:"pods,omitempty"`
	// +kubebuilder:default={}
	// +optional
	Drain DrainSpec `json:"drain,omitempty"`
}

// GatewayServiceSpec is the client-facing Service.
type GatewayServiceSpec struct {
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	Type corev1.ServiceType `json:"type,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=80
	// +optional
	Port int32 `json:"port,omitempty"`
	// Annotations of the Service, such as a load balancer's idle timeout
	// (WebSocket connections are long-lived).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
	// ExternalTrafficPolicy of a NodePort or LoadBalancer Service.
	// +kubebuilder:validation:Enum=Cluster;Local
	// +optional
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy,omitempty"`
	// LoadBalancerClass picks the load balancer implementation.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	LoadBalancerClass *string `json:"loadBalancerClass,omitempty"`
}

// DrainSpec bounds how gateways are emptied before they are removed.
type DrainSpec struct {
	// Timeout is how long one gateway may take to empty, such as 5m.
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$') && duration(self) >= duration('1s')",message="spec.gateway.drain.timeout must be a duration of at least 1s, such as 90s or 5m"
	// +kubebuilder:default="5m"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// MaxUnavailable is how many gateways drain at once.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	// +optional
	MaxUnavailable int32 `json:"maxUnavailable,omitempty"`
}

// KafkaSpec is the Kafka the cluster uses and the topics it wants there.
// The transition rules refuse what Kafka cannot do to existing topics, as Strimzi does.
// +kubebuilder:validation:XValidation:rule="has(self.topicPrefix) == has(oldSelf.topicPrefix) && (!has(self.topicPrefix) || self.topicPrefix == oldSelf.topicPrefix)",message="spec.kafka.topicPrefix cannot be changed: it names the cluster's existing topics (create a new ChatCluster for new topics)"
// +kubebuilder:validation:XValidation:rule="!has(self.partitions) || !has(oldSelf.partitions) || self.partitions >= oldSelf.partitions",message="spec.kafka.partitions cannot be lowered: Kafka cannot remove partitions from a topic"
// +kubebuilder:validation:XValidation:rule="!has(self.replicationFactor) || !has(oldSelf.replicationFactor) || self.replicationFactor == oldSelf.replicationFactor",message="spec.kafka.replicationFactor cannot be changed: the operator does not reassign partitions of existing topics"
// +kubebuilder:validation:XValidation:rule="!has(self.credentialsSecretRef) || !has(self.tls) || !has(self.tls.enabled) || self.tls.enabled || (has(self.allowPlaintextSASL) && self.allowPlaintextSASL)",message="spec.kafka.credentialsSecretRef with tls.enabled false would send the SASL/PLAIN password in the clear: enable TLS, or set allowPlaintextSASL: true to accept that"
// +kubebuilder:validation:XValidation:rule="!has(self.tls) || !has(self.tls.caSecretRef) || !has(self.tls.enabled) || self.tls.enabled",message="spec.kafka.tls.caSecretRef needs TLS: remove tls.enabled: false"
// +kubebuilder:validation:XValidation:rule="!has(self.retention) || (self.retention.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$') && duration(self.retention) >= duration('1m'))",message="spec.kafka.retention must be a duration of at least 1m, such as 168h"
type KafkaSpec struct {
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=3
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[^\s:]+:[0-9]{1,5}$`
	BootstrapServers []string `json:"bootstrapServers"`
	// TopicPrefix names the topics <prefix>.messages and <prefix>.events; it
	// defaults to <namespace>.<name>.
	// +kubebuilder:validation:MaxLength=200
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9._-]*$`
	// +optional
	TopicPrefix string `json:"topicPrefix,omitempty"`
	// Partitions may be raised, never lowered.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +kubebuilder:default=12
	// +optional
	Partitions int32 `json:"partitions,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +kubebuilder:default=3
	// +optional
	ReplicationFactor int32 `json:"replicationFactor,omitempty"`
	// Retention of both topics, a duration such as 168h.
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:default="168h"
	// +optional
	Retention string `json:"retention,omitempty"`
	// CredentialsSecretRef names a Secret with keys username and password
	// (SASL/PLAIN), and optionally ca.crt (the brokers' CA when
	// tls.caSecretRef is not set). With it, TLS is on unless tls.enabled
	// says otherwise.
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0",message="spec.kafka.credentialsSecretRef needs a non-empty name"
	CredentialsSecretRef *corev1.LocalObjectReference `json:"credentialsSecretRef,omitempty"`
	// TLS to the brokers.
	// +optional
	TLS KafkaTLSSpec `json:"tls,omitempty"`
	// AllowPlaintextSASL accepts sending the SASL/PLAIN password without TLS.
	// +optional
	AllowPlaintextSASL bool `json:"allowPlaintextSASL,omitempty"`
	// DeleteTopicsOnDelete deletes the topics when the ChatCluster is deleted.
	// +optional
	DeleteTopicsOnDelete bool `json:"deleteTopicsOnDelete,omitempty"`
}

// KafkaTLSSpec is how the brokers are reached over TLS.
type KafkaTLSSpec struct {
	// Enabled turns TLS on; unset, it is on exactly when credentialsSecretRef
	// is set, so that a password never crosses the network in the clear.
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// CASecretRef is a Secret key with the PEM CA bundle that signs the
	// brokers' certificates. Absent: ca.crt of credentialsSecretRef when that
	// key exists, else the system roots.
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0 && size(self.key) > 0",message="a Secret key reference needs a non-empty name and key"
	CASecretRef *corev1.SecretKeySelector `json:"caSecretRef,omitempty"`
}

// KafkaTLSEnabled is whether the brokers are reached over TLS.
func (k KafkaSpec) KafkaTLSEnabled() bool {
	if k.TLS.Enabled != nil {
		return *k.TLS.Enabled
	}
	return k.CredentialsSecretRef != nil || k.TLS.CASecretRef != nil
}

// RedisSpec is the Redis the cluster uses.
type RedisSpec struct {
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[^\s:]+:[0-9]{1,5}$`
	Address string `json:"address"`
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0 && size(self.key) > 0",message="a Secret key reference needs a non-empty name and key"
	PasswordSecretRef *corev1.SecretKeySelector `json:"passwordSecretRef,omitempty"`
}

// MySQLSpec is the MySQL the cluster uses.
type MySQLSpec struct {
	// DSNSecretRef is a key of a Secret holding the DSN, such as
	// gochat:pw@tcp(mysql.data:3306)/gochat.
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0 && size(self.key) > 0",message="a Secret key reference needs a non-empty name and key"
	DSNSecretRef corev1.SecretKeySelector `json:"dsnSecretRef"`
}

// AuthSpec holds the client tokens' signing secret.
type AuthSpec struct {
	// JWTSecretRef is the HS256 secret (at least 32 bytes). When absent the
	// operator generates one in the Secret <name>-jwt and keeps it.
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0 && size(self.key) > 0",message="a Secret key reference needs a non-empty name and key"
	JWTSecretRef *corev1.SecretKeySelector `json:"jwtSecretRef,omitempty"`
}

// NotificationsSpec sends offline users' notifications to a push relay.
// +kubebuilder:validation:XValidation:rule="!has(self.webhookURL) || has(self.webhookSecretRef)",message="spec.notifications.webhookSecretRef is required with webhookURL: the relay must be able to check the signature"
type NotificationsSpec struct {
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https?://`
	// +optional
	WebhookURL string `json:"webhookURL,omitempty"`
	// WebhookSecretRef signs the webhook's bodies; required with webhookURL.
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && size(self.name) > 0 && size(self.key) > 0",message="a Secret key reference needs a non-empty name and key"
	WebhookSecretRef *corev1.SecretKeySelector `json:"webhookSecretRef,omitempty"`
}

// Phase is the one-word state of a ChatCluster.
// +kubebuilder:validation:Enum=Pending;Provisioning;Running;Upgrading;Degraded
type Phase string

// The phases.
const (
	PhasePending      Phase = "Pending"
	PhaseProvisioning Phase = "Provisioning"
	PhaseRunning      Phase = "Running"
	PhaseUpgrading    Phase = "Upgrading"
	PhaseDegraded     Phase = "Degraded"
)

// ComponentStatus counts a component's pods.
type ComponentStatus struct {
	// Replicas is the desired count (the spec's).
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// ReadyReplicas are the Ready pods, on any revision.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// UpdatedReplicas are the pods on the current revision.
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas,omitempty"`
	// Image is what the component's pods run: the image of its last
	// complete rollout (a rollout in progress does not change it).
	// +optional
	Image string `json:"image,omitempty"`
}

// GatewayStatus counts the gateways.
type GatewayStatus struct {
	// Replicas is the desired count (spec.gateway.replicas).
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// ReadyReplicas are the Ready gateway pods, on any revision; the scale
	// subresource reports them as its status.replicas.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas,omitempty"`
	// Image is what the gateway pods run: the image of the last complete roll.
	// +optional
	Image string `json:"image,omitempty"`
	// Draining lists the gateway pods being emptied, with when their drain
	// began and the sessions they still hold.
	// +listType=map
	// +listMapKey=pod
	// +optional
	Draining []DrainingGateway `json:"draining,omitempty"`
	// Selector is the gateways' label selector, for the scale subresource.
	// +optional
	Selector string `json:"selector,omitempty"`
}

// DrainingGateway is one gateway pod being emptied before it is removed.
type DrainingGateway struct {
	// Pod is the gateway pod's name.
	Pod string `json:"pod"`
	// StartedAt is when the operator began draining it.
	StartedAt metav1.Time `json:"startedAt"`
	// Deadline is when it is removed whatever sessions it still holds.
	Deadline metav1.Time `json:"deadline"`
	// Sessions is how many sessions it held when last asked; -1 when it did not answer.
	Sessions int64 `json:"sessions"`
}

// KafkaStatus reports the topics.
type KafkaStatus struct {
	// +optional
	Topics []string `json:"topics,omitempty"`
	// +optional
	Partitions int32 `json:"partitions,omitempty"`
}

// ChatClusterStatus is what the operator observed, set in one place.
type ChatClusterStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Endpoint is the clients' WebSocket URL, once the Service has an address.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Sessions is the live WebSocket sessions over all gateways.
	// +optional
	Sessions int64 `json:"sessions"`
	// GatewaysReady is "ready/desired", for kubectl get.
	// +optional
	GatewaysReady string `json:"gatewaysReady,omitempty"`
	// +optional
	Gateway GatewayStatus `json:"gateway,omitempty"`
	// +optional
	Logic ComponentStatus `json:"logic,omitempty"`
	// +optional
	Repo ComponentStatus `json:"repo,omitempty"`
	// +optional
	Task ComponentStatus `json:"task,omitempty"`
	// +optional
	Kafka KafkaStatus `json:"kafka,omitempty"`
	// Image is what the cluster runs: the components' images (each the image
	// of its last complete rollout), one when they agree, else the distinct
	// ones sorted and comma-separated (mid-upgrade, or per-component overrides).
	// +optional
	Image string `json:"image,omitempty"`
	// MigratedImage is the image whose schema migration last succeeded.
	// +optional
	MigratedImage string `json:"migratedImage,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ChatCluster is one GoChat installation: four services, their topics and settings.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.gateway.replicas,statuspath=.status.gateway.readyReplicas,selectorpath=.status.gateway.selector
// +kubebuilder:resource:shortName=chat,categories=gochat
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Gateways",type=string,JSONPath=`.status.gatewaysReady`
// +kubebuilder:printcolumn:name="Sessions",type=integer,JSONPath=`.status.sessions`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.status.image`
// +kubebuilder:printcolumn:name="Updated",type=integer,JSONPath=`.status.gateway.updatedReplicas`,priority=1,description="gateways on the current revision"
// +kubebuilder:printcolumn:name="Draining",type=string,JSONPath=`.status.gateway.draining[*].pod`,priority=1,description="gateways being emptied"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ChatCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ChatClusterSpec   `json:"spec,omitempty"`
	Status ChatClusterStatus `json:"status,omitempty"`
}

// ChatClusterList is a list of ChatClusters.
// +kubebuilder:object:root=true
type ChatClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ChatCluster `json:"items"`
}

// Condition types.
const (
	ConditionReady                  = "Ready"
	ConditionKafkaTopicsReady       = "KafkaTopicsReady"
	ConditionDatabaseMigrated       = "DatabaseMigrated"
	ConditionDatabaseReachable      = "DatabaseReachable"
	ConditionRedisReachable         = "RedisReachable"
	ConditionGatewayRolloutComplete = "GatewayRolloutComplete"
	// ConditionReconciled is False when the API server refused a step of
	// the reconcile (forbidden, over quota, an immutable field, an object
	// owned by someone else): the reason and message say which and why.
	ConditionReconciled = "Reconciled"
)

// DefaultDrainTimeout applies when spec.gateway.drain.timeout is unset.
const DefaultDrainTimeout = 5 * time.Minute

// DrainTimeout is spec.gateway.drain.timeout or its default.
func (d DrainSpec) DrainTimeout() time.Duration {
	if d.Timeout == nil {
		return DefaultDrainTimeout
	}
	return d.Timeout.Duration
}
